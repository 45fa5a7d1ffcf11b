"""Bad input is refused before training; faults do not cost the best model."""

from __future__ import annotations

import copy
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from conftest import (
    assert_same_state,
    fitted_state,
    head_only_classifier,
    small_classifier,
)
from resnetclf import _training
from resnetclf._checkpoint import load_state_dict_file


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a training step starts."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(_training.EpochLoop, "train_step", refuse)


def _images(n=24, shape=(12, 20)):
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, size=(n, *shape)).astype(np.uint8), np.arange(n) % 3


BAD_X = {
    "empty": (np.zeros((0, 12, 20), np.uint8), "0 sample"),
    "nan": (np.full((24, 12, 20), np.nan), "NaN"),
    "inf": (np.full((24, 12, 20), np.inf), "infinity"),
    "strings": (np.full((24, 12, 20), "a"), "numeric|string"),
    "1-D": (np.zeros(24), "2D|1D"),
    "5-D": (np.zeros((24, 2, 12, 20, 1)), "5-D"),
    "channels": (np.zeros((24, 12, 20, 2), np.uint8), "1 or 3 channels"),
    "zero-size image": (np.zeros((24, 0, 20), np.uint8), "0 feature|at least 1x1"),
}


@pytest.mark.parametrize("name", list(BAD_X))
def test_bad_X_is_refused(name, no_training):
    X, match = BAD_X[name]
    with pytest.raises((ValueError, TypeError), match=match):
        small_classifier().fit(X, np.arange(24) % 3)


@pytest.mark.parametrize("dtype", ["datetime64[s]", "timedelta64[s]"])
def test_date_and_time_images_are_refused_by_name(dtype, no_training):
    X = np.ones((24, 12, 20)).astype(dtype)
    with pytest.raises(TypeError, match=r"X.*(datetime64|timedelta64)"):
        small_classifier().fit(X, np.arange(24) % 3)


def test_flat_rows_that_do_not_match_image_shape(no_training):
    X, y = _images()
    with pytest.raises(ValueError, match="image_shape"):
        small_classifier(image_shape=(10, 20)).fit(X.reshape(24, -1), y)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        small_classifier(image_shape=(12, 10, 2)).fit(X.reshape(24, -1), y)


def test_X_y_length_mismatch(no_training):
    X, y = _images()
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        small_classifier().fit(X, y[:-1])


def test_single_class(no_training):
    X, _ = _images()
    with pytest.raises(ValueError, match="at least 2 classes"):
        small_classifier().fit(X, np.zeros(24))


def test_continuous_targets(no_training):
    X, _ = _images()
    with pytest.raises(ValueError, match="Unknown label type"):
        small_classifier().fit(X, np.linspace(0, 1, 24))


def test_validation_data_inconsistent(no_training):
    X, y = _images()
    with pytest.raises(ValueError, match="X_val has images of shape"):
        small_classifier().fit(X, y, X_val=X[:, :10], y_val=y)
    with pytest.raises(ValueError, match="not in y"):
        small_classifier().fit(X, y, X_val=X, y_val=y + 5)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        small_classifier().fit(X, y, X_val=X, y_val=y[:5])
    with pytest.raises(ValueError, match="together"):
        small_classifier().fit(X, y, X_val=X)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"max_iter": 0}, "max_iter"),
        ({"batch_size": 0}, "batch_size"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"validation_fraction": -0.1}, "validation_fraction"),
        ({"arch": "resnet9"}, "arch"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"device": "tpu"}, "device"),
        ({"lr": 0}, "lr"),
        ({"layer_lr_decay": 1.5}, "layer_lr_decay"),
        ({"layer_lr_decay": {"layer5": 0.1}}, "unknown stage names"),
        ({"layer_lr_decay": {"fc": -1.0}}, "layer_lr_decay"),
        (
            {
                "layer_lr_decay": {
                    s: 0 for s in ("stem", "layer1", "layer2", "layer3", "layer4", "fc")
                }
            },
            "freezes every stage",
        ),
        ({"weights": "IMAGENET1K_V9"}, "not a weights name"),
        ({"weights": 3}, "weights"),
        ({"normalization": (0.5, 0.0)}, "std"),
        ({"normalization": "cifar"}, "normalization"),
        ({"rotation_degrees": -1}, "rotation_degrees"),
        ({"precision": "int8"}, "precision"),
        ({"early_stopping": True, "validation_fraction": 0.0}, "early_stopping"),
    ],
)
def test_bad_parameters(params, match, no_training):
    X, y = _images()
    with pytest.raises((ValueError, TypeError), match=match):
        small_classifier(**params).fit(X, y)


def test_cuda_requested_without_cuda(no_training):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    X, y = _images()
    with pytest.raises(ValueError, match="CUDA is not available"):
        small_classifier(device="cuda").fit(X, y)


def test_unwritable_checkpoint_path(tmp_path, no_training):
    X, y = _images()
    with pytest.raises(ValueError, match="checkpoint_path"):
        small_classifier(checkpoint_path=str(tmp_path)).fit(X, y)  # a folder


def test_predict_before_fit():
    X, _ = _images()
    with pytest.raises(NotFittedError):
        small_classifier().predict(X)
    with pytest.raises(NotFittedError):
        small_classifier().predict_proba(X)


def test_predict_on_other_image_shape_or_channels(fitted):
    clf, X, _, _ = fitted
    with pytest.raises(ValueError, match=r"\(12, 16, 1\).*\(12, 20, 1\)"):
        clf.predict(X[:, :, :16])
    with pytest.raises(ValueError, match="channels"):
        clf.predict(np.repeat(X[..., None], 3, axis=-1))
    with pytest.raises(ValueError, match="features"):
        clf.predict(X.reshape(48, -1)[:, :100])


def test_inputs_are_not_modified(tiny_images):
    X, y = tiny_images
    X_val = X[:12].astype(np.float32) / 255
    copies = [a.copy() for a in (X, y, X_val)]
    for a in (X, y, X_val):
        a.setflags(write=False)  # any in-place write would raise
    clf = small_classifier(max_iter=1, rotation_degrees=30)
    clf.fit(X, y, X_val=X_val, y_val=y[:12]).predict(X_val)
    for original, kept in zip((X, y, X_val), copies):
        np.testing.assert_array_equal(original, kept)


def test_keyboard_interrupt_keeps_best_weights(best_epoch_fits, monkeypatch):
    fits = best_epoch_fits
    original = _training.EpochLoop.train_epoch
    calls = {"n": 0}

    def interrupted_in_epoch_3(self, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, data)

    monkeypatch.setattr(_training.EpochLoop, "train_epoch", interrupted_in_epoch_3)
    clf = head_only_classifier(max_iter=5)
    with pytest.warns(UserWarning, match="interrupted"):
        clf.fit(fits.X_train, fits.y_train, X_val=fits.X_val, y_val=fits.y_val)
    assert clf.n_iter_ == 2 == len(clf.history_)
    # Epoch 1 was the best and epoch 2 worse: the model holds epoch 1's weights.
    assert clf.best_epoch_ == 1
    assert clf.history_[1]["val_accuracy"] < clf.best_score_
    assert clf.score(fits.X_val, fits.y_val) == clf.best_score_
    np.testing.assert_allclose(
        clf.predict_proba(fits.X_val),
        fits.one_epoch.predict_proba(fits.X_val),
        rtol=0,
        atol=1e-6,
    )


def test_out_of_memory_suggests_smaller_batch(tiny_images, monkeypatch):
    X, y = tiny_images

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(_training.EpochLoop, "train_step", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match="smaller batch_size"):
        small_classifier(batch_size=16).fit(X, y)


def test_parallel_fits_sharing_a_checkpoint_path(best_epoch_fits, tmp_path):
    fits = best_epoch_fits
    path = tmp_path / "shared.pth"

    def fit(seed):
        clf = head_only_classifier(
            max_iter=3, random_state=seed, checkpoint_path=str(path)
        )
        return clf.fit(fits.X_train, fits.y_train, X_val=fits.X_val, y_val=fits.y_val)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = joblib.Parallel(n_jobs=2)(joblib.delayed(fit)(s) for s in (0, 1))
    # Each keeps its own best weights, whatever the shared file ended up with;
    # in each, a later epoch was worse, so keeping the last would show.
    for clf in results:
        assert clf.history_[-1]["val_accuracy"] < clf.best_score_
        assert clf.score(fits.X_val, fits.y_val) == clf.best_score_
    state = load_state_dict_file(path)
    assert state["fc.weight"].shape == (3, 512)
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_write_failure_during_fit_warns_and_continues(
    tiny_images, tmp_path, monkeypatch
):
    X, y = tiny_images

    def failing_save(state_dict, path):
        raise OSError("disk full (test)")

    monkeypatch.setattr(_training, "save_state_dict_atomic", failing_save)
    clf = small_classifier(checkpoint_path=str(tmp_path / "best.pth"))
    with pytest.warns(RuntimeWarning, match="disk full"):
        clf.fit(X, y)
    assert clf.best_score_ is not None


def test_refused_fit_leaves_the_estimator_unfitted(tiny_images):
    X, y = tiny_images
    clf = small_classifier()
    with pytest.raises(ValueError):
        clf.fit(X, np.zeros(len(X)))  # a single class, refused after validate_data
    assert not hasattr(clf, "n_features_in_")
    with pytest.raises(NotFittedError):
        clf.predict(X)


def test_unreadable_weights_files_name_the_path(tmp_path, tiny_images):
    X, y = tiny_images
    for name, content in [("text.pth", b"hello, weights"), ("noise.pth", b"\x00" * 64)]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=name):
            small_classifier(weights=path).fit(X, y)


def test_checkpoint_without_validation_holds_the_last_epoch(tiny_images, tmp_path):
    X, y = tiny_images
    path = tmp_path / "last.pth"
    clf = small_classifier(validation_fraction=0.0, checkpoint_path=str(path))
    clf.fit(X, y)
    state = load_state_dict_file(path)
    torch.testing.assert_close(state["fc.weight"], clf.module_.fc.weight.detach())


@pytest.fixture(scope="module")
def warm_fits(tiny_images):
    """Fitted for warm starts on grayscale: with uniform statistics (a folded
    1-channel stem) and with ImageNet's (3 channels, the gray repeated)."""
    X, y = tiny_images
    return {
        stem: head_only_classifier(
            max_iter=1, warm_start=True, normalization=normalization
        ).fit(X, y)
        for stem, normalization in (("gray", (0.5, 0.5)), ("rgb", "imagenet"))
    }


@pytest.mark.parametrize(
    "stem, reason",
    [
        ("gray", "normalization"),
        ("rgb", "normalization"),
        ("gray", "classes"),
        ("gray", "image shape"),
        ("gray", "checkpoint folder"),
    ],
)
def test_refused_warm_start_refit_leaves_the_estimator_as_it_was(
    warm_fits, tiny_images, tmp_path, stem, reason, no_training
):
    X, y = tiny_images
    clf = copy.deepcopy(warm_fits[stem])
    assert clf.module_.conv1.in_channels == (1 if stem == "gray" else 3)
    proba = clf.predict_proba(X)
    before = fitted_state(clf)
    # Refits that the kept network or data cannot take, and what says so.
    other_statistics = (0.5, 0.5) if stem == "rgb" else "imagenet"
    refits = {
        "normalization": (dict(normalization=other_statistics), X, y, "normaliz"),
        "classes": ({}, X[y < 2], y[y < 2], "classes"),
        "image shape": ({}, X[:, :, :16], y, "shape"),
        "checkpoint folder": (dict(checkpoint_path=str(tmp_path)), X, y, "folder"),
    }
    params, X_refit, y_refit, match = refits[reason]
    with pytest.raises(ValueError, match=match):
        clf.set_params(**params).fit(X_refit, y_refit)
    assert_same_state(before, fitted_state(clf))
    np.testing.assert_array_equal(clf.predict_proba(X), proba)
