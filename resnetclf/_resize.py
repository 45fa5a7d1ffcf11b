"""The ``input_size`` parameter: the resolution images are fed to the network at.

Pretrained torchvision networks were trained and evaluated at one resolution
(224 pixels for every ResNet), and photographs arrive at any size. The
parameter says at which size each batch enters the network, and
:func:`resize_batch` brings a batch there on the device, after the images are
scaled to [0, 1] and before they are augmented and normalised.

- ``None``: the images' own size, nothing resized (the library's behaviour
  so far, bit for bit).
- an int ``s``: the short side becomes ``s`` and the aspect ratio is kept,
  as torchvision's ``Resize(s)`` does. A 40x168 strip at 224 becomes
  224x941.
- a pair ``(height, width)``: exactly that size; the aspect ratio changes
  when the pair's differs from the images'.
- ``"auto"``: the int above, taken from the chosen torchvision weights'
  own evaluation transforms (their ``crop_size``, see
  :func:`weights_resolution`).

Nothing is ever cropped away: torchvision's evaluation transforms resize the
short side to ``resize_size`` (256) and cut the central ``crop_size`` (224)
square out, which on a strip 4.2 times wider than high would throw away three
quarters of it. The whole image is kept, its short side at ``crop_size``, so a
square image enters the network at exactly the pretrained resolution and a
strip at that height with its whole width.
"""

from __future__ import annotations

from numbers import Integral

import torch
import torch.nn.functional as F
from torchvision.models import WeightsEnum

__all__ = ["resize_batch", "resolve_input_size", "weights_resolution"]


def weights_resolution(weights) -> int:
    """The side, in pixels, that torchvision weights were evaluated at.

    The ``crop_size`` of ``weights.transforms()`` (torchvision's
    ``ImageClassification``): the resolution the network actually saw at
    evaluation. Its ``resize_size`` only exists to be cropped down to
    ``crop_size``, and no crop is taken here.

    Parameters
    ----------
    weights : torchvision.models.WeightsEnum
        Weights whose transforms say their resolution. Anything else (None for
        random initialisation, a path to a state dict, a name not yet turned
        into an enum) carries no resolution, and is refused.

    Returns
    -------
    int
        The side, e.g. 224 for every ResNet of torchvision.

    Raises
    ------
    ValueError
        If ``weights`` is not a torchvision weights enum, or its transforms
        name no ``crop_size``.
    """
    if not isinstance(weights, WeightsEnum):
        raise ValueError(
            "input_size='auto' reads the resolution from torchvision weights' "
            f"own transforms, and weights={weights!r} has none (random "
            "initialisation or a file of tensors); pass input_size as an int "
            "(the short side, e.g. 224), a pair (height, width), or None for "
            "the images' own size"
        )
    crop = getattr(weights.transforms(), "crop_size", None)
    # ImageClassification stores the size as a one-element list.
    if isinstance(crop, (list, tuple)) and len(crop) == 1:
        crop = crop[0]
    if not _is_positive_int(crop):
        raise ValueError(
            f"input_size='auto': the transforms of {weights} name no crop_size "
            "to read the resolution from; pass input_size as an int or a pair "
            "(height, width)"
        )
    return int(crop)


def resolve_input_size(
    input_size, image_size: tuple[int, int], weights=None
) -> tuple[int, int]:
    """The ``(height, width)`` images of ``image_size`` are fed to the network at.

    Parameters
    ----------
    input_size : None, int, tuple of (int, int) or "auto"
        None: ``image_size`` itself. An int: the short side of the result,
        the long side scaled by the same factor and rounded to the nearest
        pixel (half up), at least 1. A pair: that ``(height, width)``.
        ``"auto"``: the int read from ``weights`` by
        :func:`weights_resolution`.
    image_size : tuple of (int, int)
        ``(height, width)`` of the images, as stored.
    weights : torchvision.models.WeightsEnum, path or None, default=None
        The resolved ``weights`` parameter; only read for ``"auto"``.

    Returns
    -------
    tuple of (int, int)
        ``(height, width)``.

    Raises
    ------
    ValueError
        If ``input_size`` is of none of these kinds, holds a size below 1 or
        a bool, or is ``"auto"`` with weights that carry no resolution.

    Examples
    --------
    >>> resolve_input_size(None, (40, 168))
    (40, 168)
    >>> resolve_input_size(224, (40, 168))
    (224, 941)
    >>> resolve_input_size((64, 256), (40, 168))
    (64, 256)
    >>> from torchvision.models import ResNet18_Weights
    >>> resolve_input_size("auto", (427, 640), ResNet18_Weights.DEFAULT)
    (224, 336)
    """
    height, width = (int(s) for s in image_size)
    if input_size is None:
        return height, width
    if isinstance(input_size, str):
        if input_size != "auto":
            raise ValueError(_expected(input_size))
        return _short_side(weights_resolution(weights), height, width)
    if _is_positive_int(input_size):
        return _short_side(int(input_size), height, width)
    if (
        isinstance(input_size, (tuple, list))
        and len(input_size) == 2
        and all(_is_positive_int(s) for s in input_size)
    ):
        return int(input_size[0]), int(input_size[1])
    raise ValueError(_expected(input_size))


def _expected(input_size) -> str:
    return (
        "input_size must be None (the images' own size), 'auto' (the "
        "resolution of the pretrained weights), an int >= 1 (the short side, "
        "aspect ratio kept) or a pair (height, width) of ints >= 1; got "
        f"{input_size!r}"
    )


def _is_positive_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def _short_side(side: int, height: int, width: int) -> tuple[int, int]:
    """Scale ``height x width`` so its short side is ``side``, aspect kept."""
    short, long = min(height, width), max(height, width)
    # Integer arithmetic: round(long * side / short), halves up, with no float
    # error deciding a pixel. torchvision's Resize truncates instead; rounding
    # keeps the aspect ratio closer (168 * 224 / 40 = 940.8 -> 941, not 940).
    scaled = max(1, (2 * long * side + short) // (2 * short))
    return (side, scaled) if height <= width else (scaled, side)


def resize_batch(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an NCHW float batch to ``size`` on its device.

    Bilinear, ``align_corners=False`` (pixel centres, as torchvision's
    ``Resize``), with an antialiasing filter when either side shrinks: without
    it, bilinear interpolation reads only the four nearest pixels and a
    photograph brought down several times aliases (moiré, jagged edges). When
    both sides grow the filter changes nothing and is left out.

    Parameters
    ----------
    images : torch.Tensor of shape (N, C, H, W)
        Floating-point images.
    size : tuple of (int, int)
        ``(height, width)`` wanted, from :func:`resolve_input_size`.

    Returns
    -------
    torch.Tensor of shape (N, C, height, width)
        ``images`` itself (the same tensor, no copy) when it already has that
        size, else a new tensor of its dtype on its device.
    """
    height, width = int(size[0]), int(size[1])
    if images.shape[-2:] == (height, width):
        return images
    shrinking = height < images.shape[-2] or width < images.shape[-1]
    return F.interpolate(
        images,
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=shrinking,
    )
