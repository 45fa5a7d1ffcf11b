"""Image layouts, normalisation, batched rotation, the validation split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resnetclf._images import (
    ImageBatches,
    infer_layout,
    model_input_channels,
    random_rotate,
    resolve_normalization,
    rotate,
)
from resnetclf._split import stratified_holdout
from resnetclf._training import batch_slices


@pytest.mark.parametrize(
    "shape, image_shape, expected",
    [
        ((5, 40, 168), None, (40, 168, 1, True)),
        ((5, 40, 168, 3), None, (40, 168, 3, True)),
        ((5, 40, 168, 1), None, (40, 168, 1, True)),
        ((5, 3, 40, 168), None, (40, 168, 3, False)),
        ((5, 1, 40, 168), None, (40, 168, 1, False)),
        ((5, 64), None, (1, 64, 1, True)),
        ((5, 64), (8, 8), (8, 8, 1, True)),
        ((5, 192), (8, 8, 3), (8, 8, 3, True)),
    ],
)
def test_infer_layout(shape, image_shape, expected):
    layout = infer_layout(shape, image_shape)
    assert (layout.height, layout.width, layout.channels, layout.channels_last) == (
        expected
    )


def test_normalization_values():
    assert resolve_normalization((0.5, 0.5)) == ((0.5,) * 3, (0.5,) * 3)
    mean, std = resolve_normalization("imagenet")
    assert mean[0] == 0.485 and std[2] == 0.225
    assert model_input_channels(1, *resolve_normalization((0.5, 0.5))) == 1
    assert model_input_channels(1, mean, std) == 3
    assert model_input_channels(3, (0.5,) * 3, (0.5,) * 3) == 3


def test_batches_scale_normalise_and_keep_the_data_as_is():
    X = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    images = ImageBatches(
        X, infer_layout(X.shape), torch.device("cpu"), (0.5,) * 3, (0.5,) * 3, 1
    )
    batch = images.get(np.array([0]))
    expected = (torch.tensor([[0, 255], [51, 102]]) / 255 - 0.5) / 0.5
    torch.testing.assert_close(batch[0, 0], expected.float())
    assert batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert images.X is X  # no copy of the data set


def test_repeated_gray_channel_normalised_per_channel():
    X = np.full((1, 2, 2), 255, dtype=np.uint8)
    mean, std = resolve_normalization("imagenet")
    images = ImageBatches(X, infer_layout(X.shape), torch.device("cpu"), mean, std, 3)
    batch = images.get(np.array([0]))
    for c in range(3):
        assert batch[0, c, 0, 0].item() == pytest.approx((1 - mean[c]) / std[c])


def test_rotation_zero_is_identity_and_180_flips():
    images = torch.rand(2, 1, 6, 10)
    torch.testing.assert_close(random_rotate(images, 0.0, None), images)
    rotated = rotate(images, torch.full((2,), math.pi))
    torch.testing.assert_close(rotated, images.flip(-1).flip(-2), atol=1e-5, rtol=0)


def test_rotation_by_90_on_square_images_matches_rot90():
    images = torch.rand(1, 1, 8, 8)
    rotated = rotate(images, torch.tensor([math.pi / 2]))
    candidates = [torch.rot90(images, k, dims=(-2, -1)) for k in (1, 3)]
    assert any(torch.allclose(rotated, c, atol=1e-5) for c in candidates)


def test_rotation_keeps_shapes_on_wide_images():
    # A bar along the width of a wide image, turned by 90 degrees, must become a
    # bar along the height, not be stretched by the aspect ratio.
    images = torch.zeros(1, 1, 9, 33)
    images[..., 4, 12:21] = 1.0  # 9 pixels long, centred
    turned = rotate(images, torch.tensor([math.pi / 2]))[0, 0]
    assert turned[:, 16].sum().item() == pytest.approx(9.0, abs=0.5)
    assert turned[4].sum().item() == pytest.approx(1.0, abs=0.5)


def test_rotation_angles_differ_per_image():
    images = torch.rand(1, 1, 16, 16).repeat(8, 1, 1, 1)
    rotated = random_rotate(images, 45.0, torch.Generator().manual_seed(0))
    assert not torch.allclose(rotated[0], rotated[1])


def test_stratified_holdout():
    y = np.repeat(np.arange(4), [40, 20, 10, 1])
    rng = np.random.RandomState(0)
    train, val, unsplit = stratified_holdout(y, 0.1, rng)
    assert len(val) == 7
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(71))
    assert np.bincount(y[val], minlength=4).tolist() == [4, 2, 1, 0]
    assert unsplit.tolist() == [3]


def test_training_batches_never_hold_one_sample():
    slices = batch_slices(33, 16, training=True)
    assert [s.stop - s.start for s in slices] == [16, 17]
    assert [s.stop - s.start for s in batch_slices(33, 16, training=False)] == [
        16,
        16,
        1,
    ]


@pytest.mark.parametrize("shape", [(5, 6, 7), (5, 6, 7, 3), (5, 3, 6, 7), (5, 42)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_resident_batches_equal_streamed_ones(shape, dtype):
    # The CPU runs the gather path CUDA takes for data kept on the device.
    rng = np.random.default_rng(0)
    X = (rng.random(shape) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    layout = infer_layout(X.shape, (6, 7, 1) if len(shape) == 2 else None)
    channels = model_input_channels(layout.channels, (0.5,) * 3, (0.5,) * 3)
    batches = {
        resident: ImageBatches(
            X, layout, torch.device("cpu"), (0.5,) * 3, (0.5,) * 3, channels, resident
        )
        for resident in (True, False)
    }
    indices = np.array([4, 0, 2])
    torch.testing.assert_close(
        batches[True].get(indices), batches[False].get(indices), rtol=0, atol=0
    )
    assert batches[True].is_resident and not batches[False].is_resident


def test_resident_on_cpu_is_a_view_of_the_array():
    X = np.zeros((4, 3, 3), dtype=np.uint8)
    X.setflags(write=False)  # read-only input, as a memmap would be
    images = ImageBatches(
        X, infer_layout(X.shape), torch.device("cpu"), (0.5,) * 3, (0.5,) * 3, 1, True
    )
    images.get(np.array([1]))
    assert images._resident.data_ptr() == X.ctypes.data  # no copy made


def test_auto_residency_stays_off_the_cpu():
    X = np.zeros((4, 3, 3), dtype=np.uint8)
    images = ImageBatches(
        X, infer_layout(X.shape), torch.device("cpu"), (0.5,) * 3, (0.5,) * 3, 1
    )
    images.get(np.array([0, 1]))
    assert not images.is_resident


def test_a_reversed_single_image_can_be_resident():
    """numpy keeps a negative stride on an axis of length 1 (found by the
    property tests); a resident copy must still be readable by torch."""
    X = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(1, 4, 5, 3)[::-1]
    assert X.strides[0] < 0
    layout = infer_layout(X.shape)
    batches = ImageBatches(
        X, layout, torch.device("cpu"), (0.5,) * 3, (0.5,) * 3, 3, resident=True
    )
    got = batches.get(np.array([0]))
    want = (torch.from_numpy(X.copy()).permute(0, 3, 1, 2) / 255 - 0.5) / 0.5
    torch.testing.assert_close(got, want.float())
