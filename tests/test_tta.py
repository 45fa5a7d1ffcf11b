"""Test-time augmentation views."""

from __future__ import annotations

import math

import pytest
import torch

from resnetclf._images import rotate
from resnetclf._tta import tta_view_names, tta_views


def _batch(n: int = 2, channels: int = 1, height: int = 16, width: int = 40):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(n, channels, height, width, generator=generator)


def test_view_zero_is_the_batch_itself():
    batch = _batch()
    assert tta_views(batch, 1, flips=False)[0] is batch
    assert tta_views(batch, 5, flips=True)[0] is batch


@pytest.mark.parametrize("flips, available", [(False, 7), (True, 14)])
def test_view_counts(flips, available):
    batch = _batch()
    assert len(tta_view_names(None, flips)) == available
    for n_views in (1, 3, available):
        views = tta_views(batch, n_views, flips)
        assert len(views) == n_views
        assert all(v.shape == batch.shape and v.dtype == batch.dtype for v in views)
    with pytest.raises(ValueError, match=f"from 1 to {available}"):
        tta_views(batch, available + 1, flips)


def test_fewer_views_without_rotation_or_shift():
    assert tta_view_names(None, False, degrees=0) == [
        "identity",
        "shift +1/16, +1/16",
        "shift -1/16, -1/16",
        "shift -1/16, +1/16",
        "shift +1/16, -1/16",
    ]
    assert tta_view_names(None, True, degrees=0, shift=0) == ["identity", "flip"]


def test_views_are_what_their_names_say():
    batch = _batch(height=16, width=40)
    names = tta_view_names(None, True)
    views = dict(zip(names, tta_views(batch, len(names), flips=True)))
    assert names[:4] == ["identity", "flip", "rotate +5", "rotate -5"]
    assert torch.equal(views["flip"], batch.flip(-1))
    angle = torch.full((2,), math.radians(5.0))
    assert torch.equal(views["rotate +5"], rotate(batch, angle))
    assert torch.equal(views["flip, rotate -5"], rotate(batch.flip(-1), -angle))
    # 16 / 16 = 1 pixel, down and right: the content moves, zeros come in.
    down_right = views["shift +1/16, +1/16"]
    assert torch.equal(down_right[..., 1:, 1:], batch[..., :-1, :-1])
    assert float(down_right[..., 0, :].abs().max()) == 0.0
    assert float(down_right[..., :, 0].abs().max()) == 0.0
    up_left = views["shift -1/16, -1/16"]
    assert torch.equal(up_left[..., :-1, :-1], batch[..., 1:, 1:])


def test_shift_rounds_to_pixels_of_the_short_side():
    batch = _batch(n=1, height=40, width=168)
    view = tta_views(batch, 4, flips=False)[3]  # down and right, 40/16 -> 3
    assert torch.equal(view[..., 3:, 3:], batch[..., :-3, :-3])


def test_each_image_has_the_views_it_has_alone():
    batch = _batch(n=2, channels=3)
    together = tta_views(batch, 14, flips=True)
    for i in range(2):
        alone = tta_views(batch[i : i + 1], 14, flips=True)
        for view_together, view_alone in zip(together, alone):
            torch.testing.assert_close(
                view_together[i : i + 1], view_alone, rtol=0, atol=0
            )


def test_an_empty_batch_has_empty_views():
    views = tta_views(torch.rand(0, 3, 8, 8), 14, flips=True)
    assert all(view.shape == (0, 3, 8, 8) for view in views)


def test_views_are_the_same_on_every_call():
    batch = _batch()
    first, second = tta_views(batch, 14, True), tta_views(batch, 14, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_a_row_of_features_keeps_its_content_when_shifted():
    batch = _batch(n=1, height=1, width=64)
    shifted = tta_views(batch, 5, flips=False, degrees=0)[1]
    # Height 1 is not shifted out of view; the width moves by one pixel.
    assert torch.equal(shifted[..., 1:], batch[..., :-1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_views=0), "n_views"),
        (dict(n_views=True), "n_views"),
        (dict(n_views=2.0), "n_views"),
        (dict(flips=1), "flips"),
        (dict(degrees=-1.0), "degrees"),
        (dict(shift=0.5), "shift"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    arguments = dict(n_views=2, flips=False)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tta_views(_batch(), **arguments)
