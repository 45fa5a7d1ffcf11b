"""Shared fixtures: tiny data and one fitted estimator many tests read."""

from __future__ import annotations

import numpy as np
import pytest

from resnetclf import ResNetFineTuneClassifier


def small_classifier(**params) -> ResNetFineTuneClassifier:
    """A configuration that fits in a fraction of a second on a CPU."""
    defaults = dict(
        arch="resnet18",
        weights=None,
        max_iter=2,
        batch_size=16,
        random_state=0,
        device="cpu",
    )
    defaults.update(params)
    return ResNetFineTuneClassifier(**defaults)


@pytest.fixture(scope="session")
def tiny_images():
    """48 uint8 grayscale 12x20 images in 3 classes that differ in brightness."""
    rng = np.random.RandomState(0)
    y = np.arange(48) % 3
    X = rng.randint(0, 80, size=(48, 12, 20)) + 80 * y[:, None, None]
    return X.astype(np.uint8), y


@pytest.fixture(scope="session")
def fitted(tiny_images, tmp_path_factory):
    """Fitted with explicit validation data and a checkpoint file; read only."""
    X, y = tiny_images
    path = tmp_path_factory.mktemp("fitted") / "resnet-step.pth"
    clf = small_classifier(max_iter=3, checkpoint_path=str(path))
    clf.fit(X[:36], y[:36], X_val=X[36:], y_val=y[36:])
    return clf, X, y, path
