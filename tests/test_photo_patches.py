"""Patches of real photographs: make_photo_patches and photo_names."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.datasets import load_sample_image

import resnetclf.datasets as datasets
from resnetclf.datasets import make_photo_patches, photo_names


def _coordinate_photo(height: int, width: int) -> np.ndarray:
    """A picture whose pixels say where they are: (row, column % 256, column // 256)."""
    rows, columns = np.mgrid[:height, :width]
    image = np.stack([rows, columns % 256, columns // 256], axis=-1).astype(np.uint8)
    image.flags.writeable = False
    return image


@pytest.fixture
def coordinate_photos(monkeypatch):
    """Both sklearn photographs replaced by coordinate pictures of other sizes."""
    shapes = {"china": (200, 300), "flower": (150, 420)}
    monkeypatch.setattr(
        datasets, "_photo", lambda name: _coordinate_photo(*shapes[name])
    )
    return shapes


def _corners(X: np.ndarray) -> np.ndarray:
    """(row, column) of each patch's top-left pixel, from a coordinate picture."""
    first = X[:, 0, 0].astype(np.int64)
    return np.stack([first[:, 0], first[:, 1] + 256 * first[:, 2]], axis=1)


def test_shapes_dtype_and_balanced_labels():
    X, y = make_photo_patches(41, patch_size=24, random_state=0)
    assert X.shape == (41, 24, 24, 3) and X.dtype == np.uint8
    assert y.shape == (41,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [21, 20]
    assert photo_names() == ["china", "flower"]


def test_patches_are_cut_from_the_photographs():
    X, y = make_photo_patches(6, patch_size=16, random_state=0)
    for patch, label in zip(X, y):
        photo = load_sample_image(f"{photo_names()[label]}.jpg")
        windows = np.lib.stride_tricks.sliding_window_view(photo, (16, 16, 3))
        assert (windows == patch).all(axis=(-3, -2, -1)).any()


def test_same_seed_same_patches_and_other_seeds_differ():
    first = make_photo_patches(20, random_state=3)
    again = make_photo_patches(20, random_state=np.random.RandomState(3))
    other = make_photo_patches(20, random_state=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


def test_train_and_test_regions_are_disjoint_whatever_the_seeds(coordinate_photos):
    patch = 16
    for label, name in enumerate(photo_names()):
        boxes = {}
        for region, seed in (("train", 0), ("test", 1)):
            X, y = make_photo_patches(400, patch, region, seed)
            corners = _corners(X[y == label])
            # Each patch is a contiguous crop of its photograph.
            expected = _coordinate_photo(*coordinate_photos[name])
            for (top, left), crop in zip(corners[:5], X[y == label][:5]):
                assert np.array_equal(
                    crop, expected[top : top + patch, left : left + patch]
                )
            boxes[region] = corners
        train, test = boxes["train"], boxes["test"]
        # The gap between the closest train and test patches, along the axis
        # that separates them: at least patch // 4 pixels.
        gap_rows = np.abs(train[:, None, 0] - test[None, :, 0]) - patch
        gap_columns = np.abs(train[:, None, 1] - test[None, :, 1]) - patch
        assert (np.maximum(gap_rows, gap_columns) >= patch // 4).all()
        # Both regions spread over the photograph, not one half each.
        height, width = coordinate_photos[name]
        for corners in (train, test):
            assert corners[:, 0].min() < height / 3 < corners[:, 0].max()
            assert corners[:, 1].min() < width / 3 < corners[:, 1].max()


def test_regions_do_not_share_a_patch_of_the_real_photographs():
    train, _ = make_photo_patches(200, patch_size=16, random_state=0)
    test, _ = make_photo_patches(200, patch_size=16, region="test", random_state=0)
    train_keys = {patch.tobytes() for patch in train}
    assert not any(patch.tobytes() in train_keys for patch in test)


def test_photos_by_name_set_the_label_order():
    assert photo_names(["flower", "china"]) == ["flower", "china"]
    X, y = make_photo_patches(4, patch_size=16, random_state=0, photos=["flower"])
    assert y.tolist() == [0] * 4
    X, y = make_photo_patches(
        6, patch_size=16, random_state=0, photos=["flower", "china"]
    )
    for patch, label in zip(X, y):
        photo = load_sample_image(f"{['flower', 'china'][label]}.jpg")
        windows = np.lib.stride_tricks.sliding_window_view(photo, (16, 16, 3))
        assert (windows == patch).all(axis=(-3, -2, -1)).any()


def test_scikit_image_photographs_when_installed():
    pytest.importorskip("skimage")
    names = photo_names("all")
    assert len(names) == 8 and names[:2] == ["china", "flower"]
    X, y = make_photo_patches(24, random_state=0, photos="all")
    assert X.shape == (24, 32, 32, 3) and np.bincount(y).tolist() == [3] * 8


def test_scikit_image_missing_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(ImportError, match=r"resnetclf\[photos\]"):
        datasets._photo.__wrapped__("astronaut")


def test_pillow_missing_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"needs Pillow.*resnetclf\[photos\]"):
        datasets._photo.__wrapped__("china")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_samples=0), ValueError, "n_samples"),
        (dict(n_samples=2.0), TypeError, "n_samples"),
        (dict(patch_size=7), ValueError, "patch_size"),
        (dict(patch_size=161), ValueError, "largest patch_size it allows is 160"),
        (dict(region="val"), ValueError, "region"),
        (dict(photos="both"), ValueError, "photos"),
        (dict(photos=["china", "china"]), ValueError, "photos"),
        (dict(photos=["lena"]), ValueError, "photos"),
        (dict(photos=[]), ValueError, "photos"),
        (dict(photos=3), ValueError, "photos"),
    ],
)
def test_argument_errors(kwargs, error, match):
    arguments = dict(n_samples=4)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        make_photo_patches(**arguments)
