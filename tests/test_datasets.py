"""Tests for resnetclf.datasets: stand-in data, the .npy loader/writer, and
``resnetclf make-data``, which writes it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from resnetclf.cli import main
from resnetclf.datasets import (
    _compose_digit_sums,
    load_merged,
    make_digit_sums,
    write_merged,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _save_subset(folder, index, images, labels):
    np.save(folder / f"data{index}.npy", images)
    np.save(folder / f"lab{index}.npy", labels)


# --------------------------------------------------------------- make_digit_sums


def test_make_digit_sums_shapes_and_dtypes():
    X, y = make_digit_sums(7, random_state=0)
    assert X.shape == (7, 40, 168)
    assert X.dtype == np.uint8
    assert y.shape == (7,)
    assert y.dtype == np.int64
    assert X.max() == 255  # the 0..16 digit values are scaled to the full range
    assert y.min() >= 0 and y.max() <= 36


def test_make_digit_sums_other_shape():
    X, y = make_digit_sums(3, n_digits=2, image_shape=(20, 50), random_state=1)
    assert X.shape == (3, 20, 50)
    assert y.max() <= 18


def test_labels_are_sums_of_the_drawn_digits(digits):
    # The layout returned by the private helper says which load_digits image
    # went where; check that the pixels there are that image, upscaled, that
    # nothing else is drawn, and that the label is the sum of its targets.
    rng = np.random.RandomState(3)
    comp = _compose_digit_sums(25, 4, (40, 168), rng)
    side = 8 * comp.scale
    assert comp.scale == 4
    expected_pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)
    for i in range(25):
        covered = np.zeros((40, 168), dtype=bool)
        for slot in range(4):
            top, left = comp.top[i, slot], comp.left[i, slot]
            assert 0 <= top and top + side <= 40
            assert 0 <= left and left + side <= 168
            if slot:
                assert left >= comp.left[i, slot - 1] + side  # no overlap
            patch = comp.X[i, top : top + side, left : left + side]
            source = expected_pixels[comp.digit_index[i, slot]]
            np.testing.assert_array_equal(patch, np.kron(source, np.ones((4, 4))))
            covered[top : top + side, left : left + side] = True
        assert not comp.X[i][~covered].any()
    np.testing.assert_array_equal(comp.y, digits.target[comp.digit_index].sum(axis=1))


def test_public_function_matches_checked_helper():
    X, y = make_digit_sums(10, random_state=5)
    comp = _compose_digit_sums(10, 4, (40, 168), np.random.RandomState(5))
    np.testing.assert_array_equal(X, comp.X)
    np.testing.assert_array_equal(y, comp.y)


def test_same_seed_same_arrays_and_different_seeds_differ():
    X1, y1 = make_digit_sums(20, random_state=42)
    X2, y2 = make_digit_sums(20, random_state=42)
    X3, y3 = make_digit_sums(20, random_state=43)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(X1, X3)


def test_random_state_instance_is_used():
    rng = np.random.RandomState(0)
    X1, _ = make_digit_sums(5, random_state=rng)
    X2, _ = make_digit_sums(5, random_state=rng)
    assert not np.array_equal(X1, X2)  # the generator advanced


def test_digits_move_vertically_and_horizontally():
    comp = _compose_digit_sums(200, 4, (40, 168), np.random.RandomState(0))
    assert len(np.unique(comp.top)) > 1
    assert len(np.unique(comp.left[:, 0])) > 1


def test_small_image_uses_unscaled_digits():
    comp = _compose_digit_sums(4, 4, (8, 32), np.random.RandomState(0))
    assert comp.scale == 1
    assert comp.X.shape == (4, 8, 32)


def test_labels_cover_the_full_range():
    _, y = make_digit_sums(3000, n_digits=2, image_shape=(8, 16), random_state=0)
    assert set(y.tolist()) == set(range(19))
    _, y = make_digit_sums(100_000, image_shape=(8, 32), random_state=0)
    assert set(y.tolist()) == set(range(37))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_samples": 0}, ValueError, "n_samples must be an integer >= 1; found 0"),
        ({"n_samples": -3}, ValueError, "n_samples"),
        ({"n_samples": 2.5}, TypeError, "n_samples.*float"),
        ({"n_samples": True}, TypeError, "n_samples.*bool"),
        ({"n_samples": 2, "n_digits": 0}, ValueError, "n_digits .*found 0"),
        (
            {"n_samples": 2, "image_shape": (7, 168)},
            ValueError,
            r"\(8, 32\).*\(7, 168\)",
        ),
        ({"n_samples": 2, "image_shape": (40, 31)}, ValueError, "image_shape"),
        ({"n_samples": 2, "image_shape": (40,)}, ValueError, "image_shape"),
        ({"n_samples": 2, "image_shape": (40, -1)}, ValueError, "image_shape"),
        ({"n_samples": 2, "image_shape": (40.0, 168)}, ValueError, "image_shape"),
        ({"n_samples": 2, "image_shape": 40}, ValueError, "image_shape"),
        ({"n_samples": 2, "n_digits": 5, "image_shape": (40, 39)}, ValueError, "40"),
    ],
)
def test_make_digit_sums_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_digit_sums(**kwargs)


def test_numpy_integers_are_accepted():
    X, _ = make_digit_sums(np.int64(2), np.int32(1), (np.int64(8), 8))
    assert X.shape == (2, 8, 8)


# ------------------------------------------------------ write_merged / load_merged


def test_write_then_load_round_trip(tmp_path):
    X, y = make_digit_sums(10, random_state=0)
    paths = write_merged(tmp_path / "new" / "merged", X, y, n_subsets=3)
    assert [p.name for p in paths] == [
        "data0.npy",
        "lab0.npy",
        "data1.npy",
        "lab1.npy",
        "data2.npy",
        "lab2.npy",
    ]
    assert all(p.is_file() for p in paths)
    assert [len(np.load(p)) for p in paths[::2]] == [4, 3, 3]
    X_loaded, y_loaded = load_merged(tmp_path / "new" / "merged")
    np.testing.assert_array_equal(X_loaded, X)
    np.testing.assert_array_equal(y_loaded, y)
    assert X_loaded.dtype == np.uint8 and y_loaded.dtype == np.int64


def test_load_explicit_subsets_in_given_order(tmp_path):
    for i in range(3):
        _save_subset(tmp_path, i, np.full((2, 4, 5), i, np.uint8), np.full(2, i))
    X, y = load_merged(str(tmp_path), subsets=(2, 0))
    assert y.tolist() == [2, 2, 0, 0]
    assert X[:, 0, 0].tolist() == [2, 2, 0, 0]
    X, y = load_merged(tmp_path, subsets=1)
    assert y.tolist() == [1, 1]


def test_discovery_stops_at_first_missing_index(tmp_path):
    for i in (0, 1, 3):
        _save_subset(tmp_path, i, np.full((2, 4, 5), i, np.uint8), np.full(2, i))
    _, y = load_merged(tmp_path)
    assert y.tolist() == [0, 0, 1, 1]


def test_four_dimensional_images(tmp_path):
    X = np.arange(6 * 3 * 4 * 3, dtype=np.float32).reshape(6, 3, 4, 3)
    write_merged(tmp_path, X, np.arange(6), n_subsets=2)
    X_loaded, _ = load_merged(tmp_path)
    np.testing.assert_array_equal(X_loaded, X)


def test_mmap_single_subset_returns_memmap(tmp_path):
    X, y = make_digit_sums(4, random_state=0)
    write_merged(tmp_path, X, y, n_subsets=1)
    X_map, y_loaded = load_merged(tmp_path, mmap_mode="r")
    assert isinstance(X_map, np.memmap)
    assert str(X_map.filename).endswith("data0.npy")
    np.testing.assert_array_equal(X_map, X)
    # Labels are always an in-memory copy.
    assert not isinstance(y_loaded, np.memmap)
    assert y_loaded.dtype == np.int64


def test_mmap_several_subsets_concatenates_in_memory(tmp_path):
    X, y = make_digit_sums(6, random_state=0)
    write_merged(tmp_path, X, y, n_subsets=2)
    X_loaded, _ = load_merged(tmp_path, mmap_mode="r")
    assert not isinstance(X_loaded, np.memmap)
    np.testing.assert_array_equal(X_loaded, X)


def test_float_whole_labels_accepted(tmp_path):
    _save_subset(tmp_path, 0, np.zeros((3, 4, 5), np.uint8), np.array([0.0, 7, 36]))
    _, y = load_merged(tmp_path)
    assert y.dtype == np.int64 and y.tolist() == [0, 7, 36]


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.array([0.5, 1.0, 2.0]), "not all whole numbers"),
        (np.array([np.nan, 1.0, 2.0]), "not all whole numbers"),
        (np.array([True, False, True]), "dtype bool"),
        (np.array(["1", "2", "3"]), "dtype <U1"),
        (np.zeros((3, 1), dtype=np.int64), r"1-D.*\(3, 1\)"),
    ],
)
def test_bad_labels_raise(tmp_path, labels, match):
    _save_subset(tmp_path, 0, np.zeros((3, 4, 5), np.uint8), labels)
    with pytest.raises(ValueError, match=match) as info:
        load_merged(tmp_path)
    assert "lab0.npy" in str(info.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data0.npy"):
        load_merged(tmp_path)
    with pytest.raises(FileNotFoundError, match="data0.npy"):
        load_merged(tmp_path / "does-not-exist")
    np.save(tmp_path / "data0.npy", np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(FileNotFoundError, match="lab0.npy"):
        load_merged(tmp_path)
    np.save(tmp_path / "lab0.npy", np.zeros(2, np.int64))
    with pytest.raises(FileNotFoundError, match="data1.npy"):
        load_merged(tmp_path, subsets=[0, 1])


def test_length_mismatch_raises(tmp_path):
    _save_subset(tmp_path, 0, np.zeros((3, 4, 5), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"data0.npy holds 3 images.*lab0.npy.* 2"):
        load_merged(tmp_path)


@pytest.mark.parametrize("shape", [(3, 4), (3,), (3, 4, 5, 1, 1)])
def test_images_must_be_3d_or_4d(tmp_path, shape):
    _save_subset(tmp_path, 0, np.zeros(shape, np.uint8), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="data0.npy.*found an array of shape"):
        load_merged(tmp_path)


def test_shape_mismatch_between_subsets_names_file(tmp_path):
    _save_subset(tmp_path, 0, np.zeros((2, 40, 168), np.uint8), np.zeros(2, int))
    _save_subset(tmp_path, 1, np.zeros((2, 40, 160), np.uint8), np.zeros(2, int))
    with pytest.raises(ValueError, match=r"data1.npy.*\(40, 160\).*\(40, 168\)"):
        load_merged(tmp_path)


def test_pickled_file_is_refused_with_its_name(tmp_path):
    np.save(tmp_path / "data0.npy", np.array([{}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "lab0.npy", np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="data0.npy"):
        load_merged(tmp_path)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"mmap_mode": "w+"}, ValueError),
        ({"mmap_mode": "rw"}, ValueError),
        ({"subsets": []}, ValueError),
        ({"subsets": [0, 0]}, ValueError),
        ({"subsets": [-1]}, ValueError),
        ({"subsets": ["0"]}, TypeError),
    ],
)
def test_load_argument_errors(tmp_path, kwargs, error):
    _save_subset(tmp_path, 0, np.ones((2, 4, 5), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(error):
        load_merged(tmp_path, **kwargs)
    # In particular, mmap_mode="w+" must not have truncated the file.
    assert np.load(tmp_path / "data0.npy").sum() == 40


def test_write_merged_refuses_existing_files(tmp_path):
    X, y = make_digit_sums(6, random_state=0)
    write_merged(tmp_path, X, y, n_subsets=3)
    with pytest.raises(FileExistsError, match="data0.npy"):
        write_merged(tmp_path, X[:2], y[:2], n_subsets=2)
    # A data2.npy left behind would be read back as a third subset.
    with pytest.raises(FileExistsError, match="data2.npy"):
        write_merged(tmp_path, X[:2], y[:2], n_subsets=2, overwrite=True)
    # Nothing was written by the refused calls.
    np.testing.assert_array_equal(load_merged(tmp_path)[1], y)
    X2, y2 = make_digit_sums(6, random_state=1)
    write_merged(tmp_path, X2, y2, n_subsets=3, overwrite=True)
    np.testing.assert_array_equal(load_merged(tmp_path)[0], X2)


@pytest.mark.parametrize(
    "X, y, n_subsets, error, match",
    [
        (np.zeros((3, 4)), np.zeros(3), 1, ValueError, "X: expected images"),
        (np.zeros((3, 4, 5)), np.zeros((3, 1)), 1, ValueError, "y: expected 1-D"),
        (np.zeros((3, 4, 5)), np.zeros(2), 1, ValueError, "3 images.*2 labels"),
        (np.zeros((3, 4, 5)), np.zeros(3), 4, ValueError, "at most.*3.*found 4"),
        (np.zeros((3, 4, 5)), np.zeros(3), 0, ValueError, "n_subsets"),
        (np.zeros((3, 4, 5)), np.zeros(3), 1.0, TypeError, "n_subsets"),
    ],
)
def test_write_merged_argument_errors(tmp_path, X, y, n_subsets, error, match):
    with pytest.raises(error, match=match):
        write_merged(tmp_path / "out", X, y, n_subsets)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------- the CLI


def test_cli_writes_loadable_files(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--n-samples", "12", "--seed", "1", "--n-subsets", "3"]
    assert main(["make-data", *argv]) == 0
    printed = capsys.readouterr().out
    for name in ("data0.npy", "lab0.npy", "data2.npy", "lab2.npy"):
        assert name in printed
        assert (out / name).is_file()
    X, y = load_merged(out)
    X_expected, y_expected = make_digit_sums(12, random_state=1)
    np.testing.assert_array_equal(X, X_expected)
    np.testing.assert_array_equal(y, y_expected)


def test_cli_options(tmp_path):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--n-samples", "5", "--n-digits", "2"]
    argv += ["--shape", "16", "40", "--n-subsets", "1"]
    assert main(["make-data", *argv]) == 0
    X, y = load_merged(out)
    assert X.shape == (5, 16, 40)
    assert y.max() <= 18


def test_cli_default_shape_is_make_digit_sums_one(tmp_path):
    argv = ["make-data", "--out", str(tmp_path), "--n-samples", "2", "--n-subsets", "1"]
    assert main(argv) == 0
    X, _ = load_merged(tmp_path)
    assert X.shape[1:] == make_digit_sums(1)[0].shape[1:]


def test_cli_refuses_to_overwrite_without_flag(tmp_path, capsys):
    argv = ["make-data", "--out", str(tmp_path), "--n-samples", "4", "--n-subsets", "2"]
    assert main(argv) == 0
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    "extra",
    [
        ["--n-samples", "0"],
        ["--n-samples", "3", "--shape", "4", "40"],
        ["--n-samples", "x"],
    ],
)
def test_cli_bad_arguments_exit_with_usage_error(tmp_path, capsys, extra):
    with pytest.raises(SystemExit) as info:
        main(["make-data", "--out", str(tmp_path / "never"), *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnetclf make-data: error:" in err
    assert not (tmp_path / "never").exists()
