"""Batch norm folded into convolutions for prediction."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import resnetclf._inference as inference_module
from conftest import small_classifier
from resnetclf._acceleration import bn_folding as _bn_folding
from resnetclf._acceleration.bn_folding import folded_for_inference, worth_folding
from resnetclf._backbone import build_resnet


def _with_batch_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine terms, as after training."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize(
    ("arch", "in_channels"), [("resnet18", 1), ("resnet18", 3), ("resnet50", 1)]
)
def test_folded_model_gives_the_same_outputs(arch, in_channels):
    torch.manual_seed(0)
    model = _with_batch_statistics(build_resnet(arch, None, 5, in_channels))
    model = model.to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = folded_for_inference(model)
    x = torch.randn(4, in_channels, 24, 40).contiguous(
        memory_format=torch.channels_last
    )
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    # Every norm follows a convolution in a ResNet: none is left, downsample
    # paths included; the model itself is untouched.
    assert _count(folded, nn.BatchNorm2d) == 0
    assert _count(model, nn.BatchNorm2d) > 0
    assert not folded.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_only_a_norm_right_after_its_convolution_is_folded():
    model = nn.Module()
    model.conv1 = nn.Conv2d(1, 4, 3)
    model.bn1 = nn.BatchNorm2d(4)
    model.pre = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3))  # norm first
    model.conv2 = nn.Conv2d(4, 4, 3)
    model.bn2 = nn.BatchNorm1d(4)  # not a 2d norm
    folded = folded_for_inference(_with_batch_statistics(model))
    assert isinstance(folded.bn1, nn.Identity)
    assert folded.conv1.bias is not None
    assert isinstance(folded.pre[0], nn.BatchNorm2d)
    assert isinstance(folded.bn2, nn.BatchNorm1d)


def test_worth_folding_weighs_pixels_against_weights():
    model = nn.Conv2d(1, 4, 3, bias=False)  # 36 weights
    needed = _bn_folding.MIN_PIXELS_PER_WEIGHT * 36  # 9 pixels
    assert worth_folding(model, n_images=1, height=3, width=3) == (9 >= needed)
    assert not worth_folding(model, n_images=1, height=2, width=2)
    assert worth_folding(model, n_images=10, height=2, width=2)


@pytest.mark.parametrize(
    ("precision", "tolerance"),
    # Folding rounds the weights apart from the unfolded pass: float32's
    # rounding, or bf16's (8 significant bits) under bf16 autocast.
    [("fp32", {"rtol": 1e-4, "atol": 1e-6}), ("bf16", {"rtol": 0, "atol": 3e-2})],
)
def test_predict_folds_when_it_pays_and_gives_the_same_probabilities(
    fitted, monkeypatch, precision, tolerance
):
    clf, X, y, _ = fitted
    clf = copy.copy(clf).set_params(precision=precision)  # shares module_
    calls = []

    def spy(model):
        calls.append(model)
        return folded_for_inference(model)

    monkeypatch.setattr(inference_module, "folded_for_inference", spy)
    monkeypatch.setattr(_bn_folding, "MIN_PIXELS_PER_WEIGHT", 10.0**9)
    plain = clf.predict_proba(X)
    assert calls == []
    monkeypatch.setattr(_bn_folding, "MIN_PIXELS_PER_WEIGHT", 0.0)
    folded = clf.predict_proba(X)
    assert len(calls) == 1 and calls[0] is clf.module_
    np.testing.assert_allclose(folded, plain, **tolerance)
    assert _count(clf.module_, nn.BatchNorm2d) > 0  # the fitted model keeps its norms
    assert np.array_equal(clf.predict(X), clf.classes_[plain.argmax(axis=1)])


def test_fit_leaves_no_gradients_behind(tiny_images):
    X, y = tiny_images
    clf = small_classifier(max_iter=1).fit(X, y)
    assert all(p.grad is None for p in clf.module_.parameters())
