"""The frozen-backbone fast path: a head trained on features computed once.

When only the head trains and nothing augments the images, fit reads the
backbone's pooled features, computed once, in place of the images. It must
give the same model and history as the plain path (switched off through the
benchmarks' hook), and run only where it is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resnetclf._acceleration.frozen_features as frozen_features
from conftest import small_classifier
from resnetclf._switches import switched

FROZEN = dict(layer_lr_decay=0.0, rotation_degrees=0.0, max_iter=3)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(40, 12, 20), dtype=np.uint8)
    y = np.repeat(np.arange(4), 10)
    return X, y


def _spy_on_features(monkeypatch) -> list[int]:
    """Count how often the backbone's features are computed."""
    calls = []
    original = frozen_features.features_of_all

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(frozen_features, "features_of_all", counted)
    return calls


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"validation_fraction": 0.0},
        {"freeze_epochs": 1, "optimizer": "sgd", "lr_schedule": "cosine"},
        {"normalization": "imagenet", "label_smoothing": 0.1},
        # Features of the resized images; no augmentation, whatever the angle.
        {"input_size": 16, "augmentation": None, "rotation_degrees": 10.0},
    ],
)
def test_fast_path_gives_the_plain_paths_head_and_history(data, params, monkeypatch):
    X, y = data
    calls = _spy_on_features(monkeypatch)
    fast = small_classifier(**{**FROZEN, **params}).fit(X, y)
    assert len(calls) == 1  # once per fit, shared by training and validation
    with switched(frozen_features=False):
        plain = small_classifier(**{**FROZEN, **params}).fit(X, y)
    assert len(calls) == 1
    fast_state, plain_state = fast.module_.state_dict(), plain.module_.state_dict()
    for name, tensor in plain_state.items():
        torch.testing.assert_close(fast_state[name], tensor, rtol=1e-4, atol=1e-5)
    assert fast.best_epoch_ == plain.best_epoch_
    for fast_record, plain_record in zip(fast.history_, plain.history_, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            if plain_record[key] is None:  # no validation part
                assert fast_record[key] is None
            else:
                assert fast_record[key] == pytest.approx(plain_record[key], rel=1e-4)
    np.testing.assert_allclose(
        fast.predict_proba(X), plain.predict_proba(X), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize(
    "params",
    [
        {"rotation_degrees": 10.0},  # augmented: each epoch sees new images
        {"augmentation": "photo"},  # even without rotation
        {"augmentation": lambda batch, generator: batch},  # a user's
        {"mixup_alpha": 0.4},  # mixed batches
        {"cutmix_alpha": 1.0},
        {"layer_lr_decay": {"layer4": 1e-4}},  # layer4 trains
        {"ema_decay": 0.9},  # the average is the whole network
        {"head": "digit-sum"},  # a head that reads the map, not pooled features
    ],
)
def test_fast_path_only_where_it_is_exact(data, params, monkeypatch):
    X, y = data
    if params.get("head") == "digit-sum":
        y = np.repeat([0, 5, 9, 36], 10)
    calls = _spy_on_features(monkeypatch)
    small_classifier(**{**FROZEN, **params, "max_iter": 1}).fit(X, y)
    assert calls == []
