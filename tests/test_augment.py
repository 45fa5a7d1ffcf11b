"""Training augmentations: presets drawn per image from a generator, user callables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnetclf._augment import (
    CheckedAugmentation,
    PhotoAugmentation,
    RotationAugmentation,
    check_augmented,
    resolve_augmentation,
)
from resnetclf._images import random_rotate

# Everything off: the identity, to switch one part on at a time.
NOTHING = dict(
    scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, brightness=0, contrast=0, saturation=0
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 4, channels: int = 3, height: int = 10, width: int = 14):
    return torch.rand(n, channels, height, width, generator=_generator(123))


def test_rotation_preset_is_random_rotate_bit_for_bit():
    images = _images(channels=1, height=8, width=20)
    augment = resolve_augmentation("rotation", 10.0)
    assert augment == RotationAugmentation(10.0)
    expected = random_rotate(images, 10.0, _generator())
    assert torch.equal(augment(images, _generator()), expected)


def test_rotation_of_zero_degrees_draws_nothing():
    assert resolve_augmentation("rotation", 0) is None
    generator = _generator()
    state = generator.get_state()
    images = _images()
    assert RotationAugmentation(0.0)(images, generator) is images
    assert torch.equal(generator.get_state(), state)


def test_none_is_no_augmentation_whatever_the_rotation():
    assert resolve_augmentation(None, 10.0) is None


@pytest.mark.parametrize("channels", [1, 3])
def test_photo_keeps_shape_dtype_and_unit_range(channels):
    images = _images(n=6, channels=channels)
    augment = resolve_augmentation("photo", 10.0)
    assert augment == PhotoAugmentation(rotation_degrees=10.0)
    out = augment(images, _generator())
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # Strong jitter on bright and dark images stays in range too.
    extreme = torch.cat([torch.ones_like(images), torch.zeros_like(images)])
    strong = PhotoAugmentation(brightness=0.9, contrast=0.9, saturation=0.9)
    out = strong(extreme, _generator())
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_photo_passes_an_empty_batch_through():
    empty = torch.rand(0, 3, 8, 8)
    assert PhotoAugmentation()(empty, _generator()).shape == (0, 3, 8, 8)


def test_photo_is_deterministic_given_the_generator():
    images = _images()
    augment = PhotoAugmentation(rotation_degrees=10.0)
    first = augment(images, _generator(5))
    assert torch.equal(first, augment(images, _generator(5)))
    assert not torch.equal(first, augment(images, _generator(6)))


def test_photo_draws_per_image():
    # Copies of one image in one batch come out different: each its own crop,
    # flip and colours.
    image = _images(n=1)
    batch = image.expand(8, -1, -1, -1).contiguous()
    out = PhotoAugmentation()(batch, _generator())
    for i in range(1, 8):
        assert not torch.allclose(out[0], out[i])
    # The geometry alone differs too.
    out = PhotoAugmentation(**{**NOTHING, "scale": (0.35, 1.0), "flip": 0.5})(
        batch, _generator()
    )
    assert len({tuple(np.round(o.numpy().ravel(), 4)) for o in out}) == 8


def test_photo_with_everything_off_is_the_identity():
    images = _images()
    out = PhotoAugmentation(**NOTHING)(images, _generator())
    torch.testing.assert_close(out, images, rtol=0, atol=1e-6)


def test_photo_flip_mirrors_the_image():
    images = _images()
    out = PhotoAugmentation(**{**NOTHING, "flip": 1.0})(images, _generator())
    torch.testing.assert_close(out, images.flip(-1), rtol=0, atol=1e-6)


def test_photo_crop_covers_its_share_of_the_image():
    # A horizontal ramp: a crop of half the width shows half the ramp's range,
    # of the image's own aspect ratio (ratio 1 is relative), wherever it lies.
    height, width = 8, 64
    ramp = (torch.arange(width) + 0.5) / width
    images = ramp.expand(16, 1, height, width).contiguous()
    augment = PhotoAugmentation(**{**NOTHING, "scale": (0.25, 0.25)})
    out = augment(images, _generator())
    spans = out[:, 0, height // 2].amax(dim=1) - out[:, 0, height // 2].amin(dim=1)
    # Half the ramp between the outer samples' centres; a box reaching the
    # image's edge samples a quarter pixel beyond the edge pixel's centre,
    # where the edge pixel's value is repeated.
    full = 0.5 * (width - 1) / width
    assert float(spans.max()) <= full + 1e-6
    assert float(spans.min()) >= full - 0.5 / width - 1e-6
    # Never darker nor brighter than the image: no zeros blended in at edges.
    assert float(out.min()) >= float(ramp[0]) - 1e-6
    assert float(out.max()) <= float(ramp[-1]) + 1e-6
    starts = out[:, 0, height // 2, 0]
    assert float(starts.std()) > 0.05  # the box moves from image to image


def test_photo_rotation_fills_corners_with_zero_and_crops_do_not():
    white = torch.ones(8, 1, 12, 20)
    cropped = PhotoAugmentation(**{**NOTHING, "scale": (0.35, 1.0), "flip": 0.5})
    torch.testing.assert_close(cropped(white, _generator()), white)
    rotated = PhotoAugmentation(**{**NOTHING, "rotation_degrees": 45.0})
    out = rotated(white, _generator())
    assert float(out[:, :, 6, 10].min()) == 1.0  # the centre stays
    # Corners brought in from outside the image are black.
    assert float(out[:, 0, 0, 0].min()) == 0.0
    assert float(out.min()) == 0.0 and float(out.max()) <= 1.0


def test_photo_brightness_scales_each_image_by_its_own_factor():
    images = torch.full((64, 1, 4, 4), 0.5)
    out = PhotoAugmentation(**{**NOTHING, "brightness": 0.4})(images, _generator())
    factors = out[:, 0, 0, 0] / 0.5
    assert torch.equal(out, out[:, :, :1, :1].expand_as(out))  # uniform per image
    assert 0.6 <= float(factors.min()) < 0.7 and 1.3 < float(factors.max()) <= 1.4


def test_photo_saturation_leaves_gray_pixels_gray():
    gray = torch.rand(4, 1, 6, 6, generator=_generator(1)).expand(-1, 3, -1, -1)
    out = PhotoAugmentation(**{**NOTHING, "saturation": 0.9})(gray, _generator())
    torch.testing.assert_close(out, gray, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scale=(0.0, 1.0)), "scale"),
        (dict(scale=(0.8, 0.5)), "scale"),
        (dict(ratio=(2.0, 1.0)), "ratio"),
        (dict(ratio=1.0), "ratio"),
        (dict(flip=1.5), "flip"),
        (dict(brightness=1.0), "brightness"),
        (dict(rotation_degrees=-1), "rotation_degrees"),
    ],
)
def test_photo_settings_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhotoAugmentation(**kwargs)


def test_user_callable_gets_the_generator_and_is_checked():
    seen = []

    def darker(batch, generator):
        seen.append(generator)
        return batch * 0.5

    generator = _generator()
    augment = resolve_augmentation(darker, 10.0)
    assert isinstance(augment, CheckedAugmentation)
    images = _images()
    torch.testing.assert_close(augment(images, generator), images * 0.5)
    assert seen == [generator]


@pytest.mark.parametrize(
    "function, match",
    [
        (lambda batch, generator: batch.numpy(), "returned ndarray"),
        (lambda batch, generator: None, "returned NoneType"),
        (lambda batch, generator: batch[:, :1], "changed the batch's shape"),
        (lambda batch, generator: batch[:, :, :-1], "changed the batch's shape"),
        (lambda batch, generator: batch.double(), "changed the batch's dtype"),
    ],
)
def test_a_bad_callable_is_refused(function, match):
    with pytest.raises(ValueError, match=match):
        resolve_augmentation(function, 0)(_images(), _generator())


def test_check_augmented_passes_a_good_result_through():
    images = _images()
    result = images.clone()
    assert check_augmented(result, images) is result


@pytest.mark.parametrize(
    "augmentation, degrees, match",
    [
        ("photos", 10, "names no preset"),
        ("Rotation", 10, "names no preset"),
        (3, 10, "got int"),
        ("photo", -1, "rotation_degrees"),
        ("photo", 200, "rotation_degrees"),
        ("photo", float("nan"), "rotation_degrees"),
        ("rotation", True, "rotation_degrees"),
    ],
)
def test_resolver_refusals(augmentation, degrees, match):
    with pytest.raises(ValueError, match=match):
        resolve_augmentation(augmentation, degrees)


def test_own_instances_are_used_as_they_are():
    photo = PhotoAugmentation(flip=0.0)
    assert resolve_augmentation(photo, 10.0) is photo
    assert PhotoAugmentation(scale=[0.5, 1]) == PhotoAugmentation(scale=(0.5, 1.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_photo_on_cuda_draws_from_a_cuda_generator():
    device = torch.device("cuda")
    images = _images().to(device)
    augment = PhotoAugmentation(rotation_degrees=10.0)
    first = augment(images, torch.Generator(device).manual_seed(0))
    second = augment(images, torch.Generator(device).manual_seed(0))
    assert first.device.type == "cuda" and torch.equal(first, second)
    assert float(first.min()) >= 0 and float(first.max()) <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augmenting_does_not_wait_on_the_gpu():
    device = torch.device("cuda")
    images = torch.rand(4, 3, 12, 20, device=device)
    generator = torch.Generator(device).manual_seed(0)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        PhotoAugmentation(rotation_degrees=10.0)(images, generator)
        RotationAugmentation(10.0)(images, generator)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
