"""The input_size parameter and the batched resize."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import ResNet18_Weights, ResNet50_Weights

from resnetclf._resize import resize_batch, resolve_input_size, weights_resolution


@pytest.mark.parametrize(
    "input_size, image_size, expected",
    [
        (None, (40, 168), (40, 168)),
        (224, (40, 168), (224, 941)),  # 940.8 rounds up
        (224, (168, 40), (941, 224)),  # portrait: the width is the short side
        (32, (64, 64), (32, 32)),
        (10, (4, 6), (10, 15)),  # exactly 15
        (3, (2, 3), (3, 5)),  # 4.5: halves round up
        (1, (100, 120), (1, 1)),  # 1.2 rounds to 1
        (1, (100, 1000), (1, 10)),
        ((64, 256), (40, 168), (64, 256)),
        ([7, 9], (40, 168), (7, 9)),
    ],
)
def test_resolve_input_size(input_size, image_size, expected):
    assert resolve_input_size(input_size, image_size) == expected


def test_auto_reads_the_crop_size_of_the_weights():
    assert weights_resolution(ResNet18_Weights.DEFAULT) == 224
    # V2 resizes to 232 before its 224 crop: the crop is what the network saw.
    assert weights_resolution(ResNet50_Weights.IMAGENET1K_V2) == 224
    weights = ResNet18_Weights.IMAGENET1K_V1
    assert resolve_input_size("auto", (40, 168), weights) == (224, 941)
    assert resolve_input_size("auto", (427, 640), weights) == (224, 336)
    # Large images are brought down to the weights' resolution too.
    assert resolve_input_size("auto", (448, 448), weights) == (224, 224)


@pytest.mark.parametrize("weights", [None, Path("model.safetensors"), "DEFAULT"])
def test_auto_without_torchvision_weights_is_refused(weights):
    with pytest.raises(ValueError, match="input_size='auto'.*has none"):
        resolve_input_size("auto", (40, 168), weights)


@pytest.mark.parametrize(
    "input_size",
    [0, -3, True, 2.0, "224", "Auto", (0, 5), (5, -1), (5,), (1, 2, 3), (True, 4)],
)
def test_bad_input_size_is_refused(input_size):
    with pytest.raises(ValueError, match="input_size must be None"):
        resolve_input_size(input_size, (40, 168))


def test_resize_is_the_same_tensor_when_the_size_matches():
    images = torch.rand(2, 1, 5, 7)
    assert resize_batch(images, (5, 7)) is images


def test_resize_shrinks_with_antialiasing_and_grows_without():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 12, 16, generator=generator)
    small = resize_batch(images, (6, 8))
    assert small.shape == (2, 3, 6, 8)
    expected = F.interpolate(
        images, size=(6, 8), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(small, expected, rtol=0, atol=0)
    # Halving with the filter averages 2x2 blocks' neighbourhoods, not 4 pixels.
    plain = F.interpolate(images, size=(6, 8), mode="bilinear", align_corners=False)
    assert not torch.equal(small, plain)

    large = resize_batch(images, (24, 20))
    expected = F.interpolate(
        images, size=(24, 20), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(large, expected, rtol=0, atol=0)


def test_resize_keeps_a_constant_image_constant_and_images_apart():
    images = torch.stack([torch.full((1, 9, 13), 0.25), torch.full((1, 9, 13), 0.75)])
    for size in [(4, 5), (20, 31), (4, 30)]:
        resized = resize_batch(images, size)
        assert resized.shape == (2, 1, *size)
        torch.testing.assert_close(resized[0], torch.full((1, *size), 0.25))
        torch.testing.assert_close(resized[1], torch.full((1, *size), 0.75))
