"""Test-time augmentation: fixed views of a batch, to average predictions over.

Predicting on a few slightly changed copies of each image and averaging the
class probabilities smooths out a model's sensitivity to exact position and
angle. The views here are deterministic, the same on every call, and each is
computed from its image alone (no batch statistics, no random draw), so an
image's prediction does not depend on the batch it comes in.

The views, in order; ``n_views`` takes the first ones:

0. the image itself;
1. its mirror image (left-right), only when ``flips`` is True: where
   training flipped images (the ``"photo"`` augmentation), a mirror image is
   one more example of the class; where it did not (digits, text), it is not
   one;
2. rotated by ``+degrees`` about its centre;
3. rotated by ``-degrees``;
4. - 7. shifted by ``s`` pixels down and right, up and left, up and right,
   down and left, with ``s = shift * short side`` rounded to the nearest
   pixel (at least 1), content leaving the frame dropped;
8. - 13. only with ``flips``: views 2 - 7 of the mirror image.

Rotations are skipped when ``degrees`` is 0 and shifts when ``shift`` is 0.
Areas brought in from outside the image are 0, as the training rotation
fills them: the views are made, like the training augmentations, on batches
scaled to [0, 1] and resized, before normalisation, so that 0 is black there
too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real

import torch

from resnetclf._images import rotate

__all__ = ["tta_view_names", "tta_views"]

# Defaults: within the training rotation (10 degrees by default), and a shift
# of a sixteenth of the short side (2-3 pixels of a 40-pixel strip).
DEFAULT_DEGREES = 5.0
DEFAULT_SHIFT = 1 / 16

# (dy, dx) signs of the shifted views, in order.
_SHIFTS = ((1, 1), (-1, -1), (-1, 1), (1, -1))


def tta_views(
    batch: torch.Tensor,
    n_views: int,
    flips: bool,
    *,
    degrees: float = DEFAULT_DEGREES,
    shift: float = DEFAULT_SHIFT,
) -> list[torch.Tensor]:
    """The first ``n_views`` test-time views of an NCHW batch.

    Parameters
    ----------
    batch : torch.Tensor of shape (N, C, H, W)
        Floating-point images in [0, 1], not normalised.
    n_views : int
        How many views, from 1 (the batch alone) to
        ``len(tta_view_names(None, flips, ...))``.
    flips : bool
        Whether mirror images are views: True only when training flipped.
    degrees : float, default=5.0
        Angle of the rotated views, in [0, 180]; 0 for none.
    shift : float, default=1/16
        Size of the shifts as a share of the short side, in [0, 0.5); 0 for
        none.

    Returns
    -------
    list of torch.Tensor
        ``n_views`` tensors shaped like ``batch``; the first is ``batch``
        itself (not a copy). Average the model's probabilities over them.

    Raises
    ------
    ValueError
        If ``n_views`` is not an int between 1 and the number of views
        available, or a setting is out of range.

    Examples
    --------
    >>> import torch
    >>> views = tta_views(torch.rand(2, 1, 40, 168), 3, flips=False)
    >>> tta_view_names(3, flips=False)
    ['identity', 'rotate +5', 'rotate -5']
    >>> len(views), views[1].shape
    (3, torch.Size([2, 1, 40, 168]))
    """
    makers = _view_makers(flips, degrees, shift)
    n_views = _check_n_views(n_views, len(makers))
    return [make(batch) for _, make in makers[:n_views]]


def tta_view_names(
    n_views: int | None,
    flips: bool,
    *,
    degrees: float = DEFAULT_DEGREES,
    shift: float = DEFAULT_SHIFT,
) -> list[str]:
    """Names of the views :func:`tta_views` makes with these settings.

    Parameters
    ----------
    n_views : int or None
        How many; None for all that these settings make available.
    flips, degrees, shift
        As in :func:`tta_views`.

    Returns
    -------
    list of str
        E.g. ``['identity', 'flip', 'rotate +5', ...]``; shifts are named by
        their share of the short side, ``'shift +1/16, -1/16'`` for down and
        left (rows first, as the batch's axes).
    """
    makers = _view_makers(flips, degrees, shift)
    if n_views is None:
        return [name for name, _ in makers]
    return [name for name, _ in makers[: _check_n_views(n_views, len(makers))]]


def _view_makers(
    flips: bool, degrees: float, shift: float
) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """``(name, function)`` of every view available, in order."""
    if not isinstance(flips, bool):
        raise ValueError(f"flips must be True or False; got {flips!r}")
    if not _is_real(degrees) or not 0 <= degrees <= 180:
        raise ValueError(f"degrees must be a number in [0, 180]; got {degrees!r}")
    if not _is_real(shift) or not 0 <= shift < 0.5:
        raise ValueError(f"shift must be a number in [0, 0.5); got {shift!r}")
    extras: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
    if degrees > 0:
        for sign in (1, -1):
            extras.append((f"rotate {sign * degrees:+g}", _rotation(sign * degrees)))
    if shift > 0:
        share = _share_text(shift)
        for dy, dx in _SHIFTS:
            name = f"shift {'+-'[dy < 0]}{share}, {'+-'[dx < 0]}{share}"
            extras.append((name, _shift(dy * shift, dx * shift)))
    makers = [("identity", _identity)]
    if flips:
        makers.append(("flip", _flip))
    makers += extras
    if flips:
        makers += [(f"flip, {name}", _after_flip(make)) for name, make in extras]
    return makers


def _identity(batch: torch.Tensor) -> torch.Tensor:
    return batch


def _flip(batch: torch.Tensor) -> torch.Tensor:
    return batch.flip(-1)


def _after_flip(make: Callable[[torch.Tensor], torch.Tensor]):
    return lambda batch: make(batch.flip(-1))


def _rotation(degrees: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def rotated(batch: torch.Tensor) -> torch.Tensor:
        if len(batch) == 0:
            return batch  # affine_grid refuses an empty batch
        angles = torch.full((len(batch),), math.radians(degrees), device=batch.device)
        return rotate(batch, angles)

    return rotated


def _shift(share_y: float, share_x: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Move the content by whole pixels (no resampling blur), zeros coming in."""

    def shifted(batch: torch.Tensor) -> torch.Tensor:
        height, width = batch.shape[-2:]
        step = max(1, int(abs(share_y) * min(height, width) + 0.5))
        # An axis of one pixel (a row of features) is not shifted out of view.
        dy = int(math.copysign(min(step, height - 1), share_y))
        dx = int(math.copysign(min(step, width - 1), share_x))
        out = torch.zeros_like(batch)
        out[..., _target(dy, height), _target(dx, width)] = batch[
            ..., _source(dy, height), _source(dx, width)
        ]
        return out

    return shifted


def _target(offset: int, size: int) -> slice:
    return slice(max(offset, 0), size + min(offset, 0))


def _source(offset: int, size: int) -> slice:
    return slice(max(-offset, 0), size - max(offset, 0))


def _share_text(share: float) -> str:
    inverse = 1 / share
    if abs(inverse - round(inverse)) < 1e-9:
        return f"1/{round(inverse)}"
    return f"{share:g}"


def _check_n_views(n_views, available: int) -> int:
    if (
        not isinstance(n_views, Integral)
        or isinstance(n_views, bool)
        or not 1 <= n_views <= available
    ):
        raise ValueError(
            f"n_views must be an int from 1 to {available} (the views these "
            f"settings make: {available}); got {n_views!r}"
        )
    return int(n_views)


def _is_real(value) -> bool:
    return (
        isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    )
