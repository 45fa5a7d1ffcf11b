"""The single-product weight gradient for small-map convolutions on the CPU."""

from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import small_classifier
from resnetclf._acceleration import conv_weight_grad as _conv_weight_grad
from resnetclf._acceleration.conv_weight_grad import (
    gemm_weight_grads,
    uses_gemm_weight_grad,
    weight_grad_by_gemm,
)
from resnetclf._backbone import build_resnet


def reference_weight_grad(inputs, grad_output, weight_shape, stride, padding):
    return torch.nn.grad.conv2d_weight(
        inputs, weight_shape, grad_output, stride=stride, padding=padding
    )


@pytest.mark.parametrize(
    "in_channels, out_channels, size, kernel, stride, padding",
    [
        (8, 16, (1, 1), 3, 1, 1),
        (8, 16, (2, 6), 3, 1, 1),
        (5, 7, (7, 9), 3, 2, 1),
        (4, 6, (6, 5), 1, 2, 0),
        (3, 4, (11, 13), 7, 2, 3),
        (6, 5, (4, 4), (1, 3), (1, 2), (0, 1)),
    ],
)
@pytest.mark.parametrize(
    "memory_format", [torch.channels_last, torch.contiguous_format]
)
def test_weight_grad_matches_torch(
    in_channels, out_channels, size, kernel, stride, padding, memory_format
):
    kernel, stride, padding = (
        v if isinstance(v, tuple) else (v, v) for v in (kernel, stride, padding)
    )
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(3, in_channels, *size, generator=generator)
    weight = torch.randn(out_channels, in_channels, *kernel, generator=generator)
    out = F.conv2d(inputs, weight, None, stride, padding)
    grad_output = torch.randn(out.shape, generator=generator)
    inputs = inputs.contiguous(memory_format=memory_format)
    grad_output = grad_output.contiguous(memory_format=memory_format)

    ours = weight_grad_by_gemm(inputs, grad_output, kernel, stride, padding)

    expected = reference_weight_grad(inputs, grad_output, weight.shape, stride, padding)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert ours.is_contiguous(memory_format=torch.channels_last)


def test_weight_grad_in_slices_of_the_batch_is_the_same():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(7, 4, 3, 3, generator=generator)
    grad_output = torch.randn(7, 6, 3, 3, generator=generator)
    whole = weight_grad_by_gemm(inputs, grad_output, (3, 3), (1, 1), (1, 1))
    # 36 patch values per output position, 9 positions: 2 images per slice.
    sliced = weight_grad_by_gemm(
        inputs, grad_output, (3, 3), (1, 1), (1, 1), max_patch_elements=2 * 9 * 36
    )
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)


def _gradients(model, inputs, targets):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs), targets).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_resnet_gradients_are_unchanged_and_the_product_is_used():
    torch.manual_seed(0)
    model = build_resnet("resnet18", None, 5, 1).to(memory_format=torch.channels_last)
    inputs = torch.randn(4, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    targets = torch.tensor([0, 1, 2, 3])
    expected = _gradients(model, inputs, targets)

    with (
        mock.patch.object(
            _conv_weight_grad, "weight_grad_by_gemm", wraps=weight_grad_by_gemm
        ) as spy,
        gemm_weight_grads(model),
    ):
        ours = _gradients(model, inputs, targets)

    # 16x16 images: layer2..4 (128..512 channels) work on 2x2 and 1x1 maps.
    assert spy.call_count >= 10
    assert ours.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(
            ours[name], expected[name], rtol=1e-4, atol=1e-5, msg=name
        )


def test_modules_are_switched_back_even_on_error():
    model = build_resnet("resnet18", None, 3, 1)
    keys = list(model.state_dict())
    with pytest.raises(RuntimeError, match="boom"), gemm_weight_grads(model):
        assert type(model.layer4[0].conv1) is not nn.Conv2d
        raise RuntimeError("boom")
    assert all(
        type(m) is nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d)
    )
    assert list(model.state_dict()) == keys


def test_disabled_leaves_the_modules_alone():
    model = build_resnet("resnet18", None, 3, 1)
    with gemm_weight_grads(model, enabled=False):
        assert type(model.layer4[0].conv1) is nn.Conv2d


@pytest.mark.parametrize(
    "case",
    [
        "large map",
        "few channels",
        "no grad",
        "frozen",
        "float64",
        "autocast",
        "not cpu",
    ],
)
def test_only_float32_cpu_training_on_small_maps_uses_the_product(case):
    conv = nn.Conv2d(64, 128 if case != "few channels" else 64, 3, padding=1)
    size = 9 if case == "large map" else 8  # 81 vs 64 output positions
    inputs = torch.randn(2, 64, size, size)
    if case == "frozen":
        conv.weight.requires_grad_(False)
    if case == "float64":
        conv, inputs = conv.double(), inputs.double()
    if case == "not cpu":
        inputs = torch.empty(2, 64, size, size, device="meta")
    assert uses_gemm_weight_grad(
        nn.Conv2d(64, 128, 3, padding=1), torch.randn(1, 64, 8, 8)
    )
    if case == "no grad":
        with torch.no_grad():
            assert not uses_gemm_weight_grad(conv, inputs)
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not uses_gemm_weight_grad(conv, inputs)
    else:
        assert not uses_gemm_weight_grad(conv, inputs)


def test_grouped_dilated_and_biased_convolutions_are_not_switched():
    model = nn.Sequential(
        nn.Conv2d(128, 128, 3, padding=1, bias=False),
        nn.Conv2d(128, 128, 3, padding=1, groups=32, bias=False),
        nn.Conv2d(128, 128, 3, padding=2, dilation=2, bias=False),
        nn.Conv2d(128, 128, 3, padding=1),
    )
    with gemm_weight_grads(model):
        switched = [type(m) is not nn.Conv2d for m in model]
    assert switched == [True, False, False, False]


def test_convolutions_with_few_channels_are_switched_but_keep_onednn():
    model = build_resnet("resnet18", None, 3, 1)
    inputs = torch.randn(2, 64, 4, 4)
    with gemm_weight_grads(model):
        assert type(model.layer1[0].conv1) is not nn.Conv2d
        assert not uses_gemm_weight_grad(model.layer1[0].conv1, inputs)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fit_uses_the_product_and_leaves_a_plain_model(tiny_images, precision):
    X, y = tiny_images
    with mock.patch.object(
        _conv_weight_grad, "weight_grad_by_gemm", wraps=weight_grad_by_gemm
    ) as spy:
        clf = small_classifier(precision=precision).fit(X, y)
    # The product is a float32 path: under bf16 autocast oneDNN takes over.
    assert (spy.call_count > 0) == (precision == "fp32")
    convs = [m for m in clf.module_.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is nn.Conv2d for m in convs)
    assert np.isfinite(clf.predict_proba(X)).all()


def test_empty_batch_gives_a_zero_gradient():
    inputs = torch.randn(0, 3, 2, 2)
    grad_output = torch.randn(0, 4, 2, 2)
    grad = weight_grad_by_gemm(inputs, grad_output, (3, 3), (1, 1), (1, 1))
    assert grad.shape == (4, 3, 3, 3) and not grad.any()
