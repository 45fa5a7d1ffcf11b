"""LoRA fine-tuning and custom ResNets through the estimator."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest
import torch
import torchvision
from sklearn.base import clone
from torch.nn.utils import parametrize
from torchvision.models.resnet import BasicBlock, ResNet

import resnetclf._base as estimator_module
from conftest import small_classifier
from resnetclf._checkpoint import load_state_dict_file


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(2)
    y = np.arange(48) % 3
    X = rng.randint(0, 80, size=(48, 12, 20)) + 80 * y[:, None, None]
    return X.astype(np.uint8), y


def small_resnet(blocks: tuple[int, ...] = (2, 2, 2, 2)) -> ResNet:
    """A ResNet with ``blocks`` basic blocks per stage (module level, so it
    pickles)."""
    return ResNet(BasicBlock, list(blocks))


@pytest.fixture(scope="module")
def lora_fit(data, weights_file, tmp_path_factory):
    X, y = data
    path = tmp_path_factory.mktemp("lora") / "resnet-step.pth"
    clf = small_classifier(
        weights=str(weights_file),
        lora_rank=2,
        max_iter=2,
        lr=1e-2,
        validation_fraction=0,
        checkpoint_path=str(path),
    ).fit(X, y)
    return clf, path


def test_lora_fit_leaves_a_plain_torchvision_resnet(lora_fit):
    clf, _ = lora_fit
    assert not any(parametrize.is_parametrized(m) for m in clf.module_.modules())
    reference = torchvision.models.resnet18(num_classes=3).state_dict()
    fitted = clf.module_.state_dict()
    assert list(fitted) == list(reference)
    assert all(p.requires_grad for p in clf.module_.parameters())


def test_lora_changes_each_convolution_by_a_low_rank_matrix(lora_fit, weights_file):
    clf, _ = lora_fit
    initial = torch.load(weights_file, weights_only=True)
    fitted = clf.module_.state_dict()
    name = "layer3.0.conv2.weight"
    change = (fitted[name] - initial[name]).reshape(fitted[name].shape[0], -1)
    assert change.abs().max() > 0
    assert torch.linalg.matrix_rank(change.double(), atol=1e-7) <= 2


def test_lora_trains_fewer_parameters_than_full_fine_tuning(lora_fit, data):
    clf, _ = lora_fit
    X, y = data
    full = small_classifier(max_iter=1).fit(X, y)
    assert 0 < clf.n_trainable_params_ < full.n_trainable_params_ / 5
    assert full.n_trainable_params_ == sum(p.numel() for p in full.module_.parameters())


def test_lora_checkpoint_loads_into_torchvision_as_is(lora_fit):
    clf, path = lora_fit
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(load_state_dict_file(path))


def test_lora_model_pickles_and_warm_starts(lora_fit, data):
    clf, _ = lora_fit
    X, y = data
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf.predict_proba(X), restored.predict_proba(X))
    restored.set_params(warm_start=True, max_iter=1, checkpoint_path=None)
    restored.fit(X, y)
    assert restored.n_iter_ == clf.n_iter_ + 1


def test_lora_leaves_frozen_stages_alone(data, weights_file):
    X, y = data
    initial = torch.load(weights_file, weights_only=True)
    clf = small_classifier(
        weights=str(weights_file),
        lora_rank=2,
        max_iter=1,
        layer_lr_decay={"stem": 0, "layer1": 0},
        validation_fraction=0,
    ).fit(X, y)
    fitted = clf.module_.state_dict()
    for name in ("layer1.0.conv1.weight", "layer1.0.bn1.running_mean"):
        torch.testing.assert_close(fitted[name], initial[name])
    assert not torch.equal(
        fitted["layer2.0.conv1.weight"], initial["layer2.0.conv1.weight"]
    )


def test_lora_composes_with_freeze_epochs_and_ema(data, weights_file):
    X, y = data
    clf = small_classifier(
        weights=str(weights_file),
        lora_rank=1,
        max_iter=2,
        freeze_epochs=1,
        ema_decay=0.5,
    ).fit(X, y)
    assert clf.predict(X).shape == (len(y),)
    assert not any(parametrize.is_parametrized(m) for m in clf.module_.modules())


@pytest.mark.parametrize("rank", [0, 10_000])
def test_bad_lora_rank_is_refused_before_training(data, monkeypatch, rank):
    X, y = data
    clf = small_classifier(lora_rank=rank)

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(estimator_module.EpochLoop, "run", must_not_train)
    with pytest.raises(ValueError, match="lora_rank"):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")


def test_callable_arch_trains_pickles_and_clones(data, tmp_path):
    X, y = data
    arch = functools.partial(small_resnet, blocks=(1, 1, 1, 1))
    clf = small_classifier(
        arch=arch, max_iter=1, checkpoint_path=str(tmp_path / "small.pth")
    ).fit(X, y)
    assert clf.module_.layer1[0].conv1.out_channels == 64
    assert len(clf.module_.layer4) == 1
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf.predict_proba(X), restored.predict_proba(X))
    cloned_arch = clone(clf).get_params()["arch"]
    assert cloned_arch.func is small_resnet and cloned_arch.keywords == arch.keywords
    rebuilt = small_resnet((1, 1, 1, 1))
    rebuilt.fc = torch.nn.Linear(rebuilt.fc.in_features, 3)
    rebuilt.load_state_dict(load_state_dict_file(tmp_path / "small.pth"))


def test_callable_arch_returning_something_else_is_refused(data, monkeypatch):
    X, y = data
    monkeypatch.setattr(
        estimator_module.EpochLoop,
        "run",
        lambda *a, **k: pytest.fail("training started"),
    )
    clf = small_classifier(arch=lambda: torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="arch"):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")
