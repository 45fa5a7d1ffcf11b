"""Calibrating a fitted classifier on held-out images, without refitting it."""

from __future__ import annotations

import numpy as np
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import log_loss

from conftest import assert_same_state, fitted_state

# Temperature scaling came with scikit-learn 1.8; a sigmoid per class before.
NEW_SKLEARN = tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8)
METHOD = "temperature" if NEW_SKLEARN else "sigmoid"


def _held_out_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """New images drawn as the ``tiny_images`` fixture draws its own."""
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 3
    X = rng.randint(0, 80, size=(n, 12, 20)) + 80 * y[:, None, None]
    return X.astype(np.uint8), y


def test_calibrated_frozen_classifier_on_held_out_images(fitted):
    clf, _, _, _ = fitted
    X_calib, y_calib = _held_out_images(30, seed=1)
    X_test, _ = _held_out_images(12, seed=2)
    before = fitted_state(clf)
    calibrated = CalibratedClassifierCV(FrozenEstimator(clf), method=METHOD)
    calibrated.fit(X_calib, y_calib)
    assert_same_state(before, fitted_state(clf))  # the network is not refitted
    np.testing.assert_array_equal(calibrated.classes_, clf.classes_)
    proba = calibrated.predict_proba(X_test)
    assert proba.shape == (12, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    calibrated_loss = log_loss(y_calib, calibrated.predict_proba(X_calib))
    if METHOD == "temperature":
        # One temperature keeps each image's ranking of the classes, and is
        # chosen to minimise the log loss on these very images.
        np.testing.assert_array_equal(
            proba.argmax(axis=1), clf.predict_proba(X_test).argmax(axis=1)
        )
        network_loss = log_loss(y_calib, clf.predict_proba(X_calib))
        assert calibrated_loss <= network_loss + 1e-6
    else:
        assert np.isfinite(calibrated_loss)
