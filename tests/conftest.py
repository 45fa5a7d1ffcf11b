"""Shared fixtures: tiny data and fitted estimators many tests read.

Every fit here is a random ResNet18 on a few dozen 12x20 images for 1-3
epochs: a few seconds each on a CPU. Session fixtures are read only.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
import torchvision

from resnetclf import ResNetFineTuneClassifier
from resnetclf._checkpoint import safetensors_bytes
from resnetclf._persistence import METADATA_KEY, WEIGHTS_FILE

# The tests' networks are tiny: on one thread they skip the fork/join cost of
# each op, which dominates at this size (and a test that needs more threads
# sets them itself). Worker processes keep their own settings.
torch.set_num_threads(1)


def small_classifier(**params) -> ResNetFineTuneClassifier:
    """A configuration that fits in a few seconds on a CPU."""
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


def model_settings(folder) -> dict:
    """The settings ``save_model`` wrote into a folder's file, parsed."""
    with safetensors.safe_open(Path(folder) / WEIGHTS_FILE, "pt") as file:
        return json.loads(file.metadata()[METADATA_KEY])


def rewrite_model(folder, settings=None, tensors=None) -> Path:
    """Rewrite a saved model's file with other settings (a dict, or any text)
    or other tensors, as anyone who can write the file could."""
    path = Path(folder) / WEIGHTS_FILE
    if settings is None:
        settings = model_settings(folder)
    if tensors is None:
        tensors = safetensors.torch.load_file(path)
    text = settings if isinstance(settings, str) else json.dumps(settings)
    path.write_bytes(safetensors_bytes(tensors, {METADATA_KEY: text}))
    return Path(folder)


def predicting_in_fp32(clf: ResNetFineTuneClassifier) -> ResNetFineTuneClassifier:
    """A shallow copy of fitted ``clf`` that predicts in float32.

    ``precision="auto"`` predicts in bf16 on CPUs that compute it natively;
    its rounding (up to about 1e-2 on a probability) would hide what tests that
    compare ``predict_proba`` with float32 reference math at 1e-6 look for.
    The copy shares ``module_``; the fixture's estimator is left as it is.
    """
    return copy.copy(clf).set_params(precision="fp32")


def head_only_classifier(**params) -> ResNetFineTuneClassifier:
    """Only the head trains, on a frozen random backbone: a fit that learns.

    A random ResNet trained end to end on a handful of batches predicts at
    chance in evaluation mode: its batch-norm running statistics are still far
    from the batches'. A frozen backbone stays in evaluation mode while the
    head trains, so what training learns shows in ``predict`` and in the
    validation score, epoch by epoch.
    """
    defaults = dict(layer_lr_decay=0.0, lr=3e-2, batch_size=8)
    defaults.update(params)
    return small_classifier(**defaults)


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    """A 3-class ResNet18 state dict in torchvision's layout, as a user would
    pass it in ``weights``."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_images():
    """48 uint8 grayscale 12x20 images in 3 classes that differ in brightness."""
    rng = np.random.RandomState(0)
    y = np.arange(48) % 3
    X = rng.randint(0, 80, size=(48, 12, 20)) + 80 * y[:, None, None]
    return X.astype(np.uint8), y


@pytest.fixture(scope="session")
def fitted(tiny_images, tmp_path_factory):
    """Fitted with explicit validation data and a checkpoint file; read only.

    For plumbing: its validation accuracy is at chance in every epoch, so it
    cannot tell which epoch's weights were kept (``best_epoch_fits`` can).
    """
    X, y = tiny_images
    path = tmp_path_factory.mktemp("fitted") / "resnet-step.pth"
    clf = small_classifier(max_iter=3, checkpoint_path=str(path))
    clf.fit(X[:36], y[:36], X_val=X[36:], y_val=y[36:])
    return clf, X, y, path


class BestEpochFits(NamedTuple):
    """Fits whose best epoch is the first of three, and a fit of that epoch only."""

    three_epochs: ResNetFineTuneClassifier
    one_epoch: ResNetFineTuneClassifier
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    checkpoint: object  # pathlib.Path of three_epochs' checkpoint


def best_epoch_data(tiny_images):
    """Training data, and validation data whose labels training unlearns.

    The validation labels are the training rule shifted by one class, so the
    better the head learns the training images, the lower the validation
    accuracy: the first epoch is the best and the last one is worse.
    """
    X, y = tiny_images
    return X[:36], y[:36], X[36:], (y[36:] + 1) % 3


@pytest.fixture(scope="session")
def best_epoch_fits(tiny_images, tmp_path_factory) -> BestEpochFits:
    X_train, y_train, X_val, y_val = best_epoch_data(tiny_images)
    path = tmp_path_factory.mktemp("best_epoch") / "best.pth"
    three = head_only_classifier(max_iter=3, checkpoint_path=str(path))
    three.fit(X_train, y_train, X_val=X_val, y_val=y_val)
    # The same seed and settings for one epoch: the first epoch's weights.
    one = head_only_classifier(max_iter=1)
    one.fit(X_train, y_train, X_val=X_val, y_val=y_val)
    return BestEpochFits(three, one, X_train, y_train, X_val, y_val, path)


def fitted_state(clf) -> dict:
    """Every fitted attribute, the network's weights, flags and place included."""
    params = set(clf.get_params())
    state = {k: copy.deepcopy(v) for k, v in vars(clf).items() if k not in params}
    module = state.pop("module_")
    state["module_"] = {
        "id": id(clf.module_),
        "state": {k: v.clone() for k, v in module.state_dict().items()},
        "requires_grad": [p.requires_grad for p in module.parameters()],
        "devices": {str(t.device) for t in module.state_dict().values()},
        "training": [m.training for m in module.modules()],
        "classes": [type(m) for m in module.modules()],
    }
    return state


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key == "module_":
            other = after[key]
            assert other.keys() == value.keys()
            for name, tensor in value["state"].items():
                assert torch.equal(tensor, other["state"][name]), name
            for part in ("id", "requires_grad", "devices", "training", "classes"):
                assert value[part] == other[part], part
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, after[key], err_msg=key)
        else:
            assert value == after[key], key
