"""Training augmentations of whole batches on the device, each image its own draw.

An augmentation takes a float batch ``(N, C, H, W)`` with values in [0, 1] (the
images scaled, possibly resized, not yet normalised) and a
:class:`torch.Generator` on the batch's device, and returns a batch of the
same shape, dtype and device. Every random value is drawn per image from that
generator in one call, so two images of a batch get different crops, flips and
colours, a seeded generator gives the same batches on every run, and no Python
loop runs over the samples.

Why not torchvision or kornia: ``torchvision.transforms.v2`` applied to a
batch tensor draws one set of parameters for the whole batch (every image gets
the same crop and flip), and kornia's random augmentations draw from torch's
global random state rather than from a generator the caller owns.

The ``augmentation`` parameter, resolved by :func:`resolve_augmentation`:

- ``"rotation"``: each image rotated by its own angle, the library's training
  augmentation so far (:class:`RotationAugmentation`);
- ``"photo"``: random resized crop, horizontal flip and a small rotation in
  one resampling, then brightness, contrast and saturation jitter
  (:class:`PhotoAugmentation`);
- ``None``: none;
- a callable ``f(batch, generator) -> batch``, checked batch by batch
  (:func:`check_augmented`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real

import torch
import torch.nn.functional as F

from resnetclf._images import random_rotate

__all__ = [
    "Augmentation",
    "CheckedAugmentation",
    "PhotoAugmentation",
    "RotationAugmentation",
    "check_augmented",
    "resolve_augmentation",
]

Augmentation = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]

PRESETS = ("rotation", "photo")

# ITU-R 601 luma, the weights of torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class RotationAugmentation:
    """Rotate each image by its own angle, uniform in ``[-degrees, degrees]``.

    Exactly :func:`resnetclf._images.random_rotate`, the augmentation the
    library has always trained with: bilinear resampling (or what the
    ``rotation_sampling`` switch says), corners filled with 0. With
    ``degrees=0`` the batch is returned as it is and nothing is drawn.

    Parameters
    ----------
    degrees : float
        Largest angle, in degrees.
    """

    degrees: float

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        if self.degrees <= 0:
            return images
        return random_rotate(images, self.degrees, generator)


@dataclass(frozen=True)
class PhotoAugmentation:
    """Crop, flip, rotate and colour-jitter each image with its own draw.

    The geometry is one affine map per image, applied with a single
    ``affine_grid`` + ``grid_sample`` (bilinear):

    1. a random resized crop: a box covering a fraction uniform in ``scale``
       of the image's area, its aspect ratio *relative to the image's*
       log-uniform in ``ratio``, placed uniformly where it fits, stretched to
       the batch's size. Relative rather than in pixels (as torchvision's
       ``RandomResizedCrop``) because the output keeps the input's size: the
       ratio is then exactly how much the content is stretched, and a
       40x168 strip gets crops of its own shape rather than squares that do
       not fit in it. When a side of the box would exceed the image it is
       clipped to the image (the area is then a little below the draw);
       torchvision redraws instead, a loop this avoids;
    2. a horizontal flip with probability ``flip``;
    3. a rotation by an angle uniform in ``[-rotation_degrees,
       rotation_degrees]`` about the centre. The corners it brings in from
       outside the image are 0, faded in over half a pixel. The image's edge
       pixels are repeated inside that half pixel rather than blended with
       zeros: with ``grid_sample``'s zero padding a crop reaching the image's
       edge would get a darkened outer row (its samples lie within half a
       pixel of the edge when zooming in).

    Then, per image and in this order, each clipped to [0, 1] as
    torchvision's ``ColorJitter`` does: brightness (values times a factor
    uniform in ``[1 - brightness, 1 + brightness]``), contrast (blended with
    the image's mean gray level by such a factor) and, for three-channel
    images only, saturation (blended with each pixel's gray level). Gray is
    the ITU-R 601 luma. torchvision shuffles the order of the three per call;
    a fixed order keeps the draws simple and changes little.

    Randomness: one ``torch.rand((N, 9))`` from the generator per batch, row
    ``i`` for image ``i`` (columns: area, ratio, horizontal and vertical
    position, flip, angle, brightness, contrast, saturation), drawn whatever
    the settings, so that changing one setting does not shift the others'
    draws.

    Parameters
    ----------
    rotation_degrees : float, default=0.0
        Largest rotation, in degrees; 0 for none.
    scale : tuple of (float, float), default=(0.35, 1.0)
        Range of the crop's share of the image's area, within (0, 1].
    ratio : tuple of (float, float), default=(3/4, 4/3)
        Range of the crop's aspect ratio relative to the image's.
    flip : float, default=0.5
        Probability of a horizontal flip. Leave it at 0 where the mirror image
        of an example is not an example of its class (text, digits).
    brightness, contrast, saturation : float, default=0.4
        Strength of each jitter, in [0, 1); 0 for none. 0.4 is timm's
        default ``color_jitter``.
    """

    rotation_degrees: float = 0.0
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4

    def __post_init__(self) -> None:
        low, high = _pair("scale", self.scale)
        if not 0 < low <= high <= 1:
            raise ValueError(
                f"scale must be a pair 0 < low <= high <= 1; got {self.scale!r}"
            )
        low, high = _pair("ratio", self.ratio)
        if not 0 < low <= high:
            raise ValueError(
                f"ratio must be a pair 0 < low <= high; got {self.ratio!r}"
            )
        # Tuples whatever was passed, so that equal settings compare equal.
        object.__setattr__(self, "scale", _pair("scale", self.scale))
        object.__setattr__(self, "ratio", _pair("ratio", self.ratio))
        _check_range("rotation_degrees", self.rotation_degrees, 0, 180)
        _check_range("flip", self.flip, 0, 1)
        for name in ("brightness", "contrast", "saturation"):
            _check_range(name, getattr(self, name), 0, 1, open_high=True)

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        n, channels, height, width = images.shape
        if n == 0:
            return images  # affine_grid refuses an empty batch
        draws = torch.rand(
            (n, 9), generator=generator, device=images.device, dtype=torch.float32
        )
        theta = self._geometry(draws[:, :6], height, width).to(images.dtype)
        grid = F.affine_grid(theta, [n, channels, height, width], align_corners=False)
        images = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        images = images * _coverage(grid, height, width)
        return self._colour(images, draws[:, 6:].to(images.dtype))

    def _geometry(self, draws: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Per-image 2x3 matrices from output to input coordinates in [-1, 1]."""
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * draws[:, 0]
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        ratio = torch.exp(log_low + (log_high - log_low) * draws[:, 1])
        # The box's width and height as shares of the image's.
        box_w = torch.sqrt(area * ratio).clamp(max=1.0)
        box_h = torch.sqrt(area / ratio).clamp(max=1.0)
        centre_x = (2 * draws[:, 2] - 1) * (1 - box_w)
        centre_y = (2 * draws[:, 3] - 1) * (1 - box_h)
        mirror = torch.where(draws[:, 4] < self.flip, -1.0, 1.0)
        angle = (2 * draws[:, 5] - 1) * math.radians(self.rotation_degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # crop @ flip @ rotation, the rotation's matrix corrected for the
        # aspect ratio as in _images.rotate (the grid runs over [-1, 1] on
        # both axes, whatever the sides' lengths).
        theta = torch.stack(
            [
                torch.stack(
                    [
                        box_w * mirror * cos,
                        -box_w * mirror * sin * height / width,
                        centre_x,
                    ],
                    dim=1,
                ),
                torch.stack(
                    [box_h * sin * width / height, box_h * cos, centre_y], dim=1
                ),
            ],
            dim=1,
        )
        return theta

    def _colour(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation, one factor per image each."""
        factors = [
            (1 + strength * (2 * draws[:, k] - 1)).view(-1, 1, 1, 1)
            for k, strength in enumerate(
                (self.brightness, self.contrast, self.saturation)
            )
        ]
        if self.brightness > 0:
            images = (images * factors[0]).clamp(0, 1)
        if self.contrast > 0:
            mean = _gray(images).mean(dim=(-2, -1), keepdim=True)
            images = _blend(images, mean, factors[1])
        if self.saturation > 0 and images.shape[1] == 3:
            images = _blend(images, _gray(images), factors[2])
        return images


def _coverage(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, 1, H, W)``: 1 where the grid samples inside the image, fading to 0
    half a pixel outside its edge."""
    # Python numbers rather than a small tensor: copying one to the GPU
    # would wait on it.
    beyond_x = (grid[..., 0].abs() - 1) * (width / 2)
    beyond_y = (grid[..., 1].abs() - 1) * (height / 2)
    coverage = (1 - 2 * beyond_x).clamp(0, 1) * (1 - 2 * beyond_y).clamp(0, 1)
    return coverage.unsqueeze(1)


def _gray(images: torch.Tensor) -> torch.Tensor:
    """Luma of an NCHW batch, ``(N, 1, H, W)``; a gray batch is its own."""
    if images.shape[1] == 1:
        return images
    red, green, blue = _LUMA
    return red * images[:, 0:1] + green * images[:, 1:2] + blue * images[:, 2:3]


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor):
    """``factor * images + (1 - factor) * other``, clipped to [0, 1]."""
    return (other + factor * (images - other)).clamp(0, 1)


class CheckedAugmentation:
    """A user's augmentation, its every output checked by :func:`check_augmented`.

    Parameters
    ----------
    function : callable
        ``function(batch, generator) -> batch``; see :func:`check_augmented`
        for the contract.
    """

    def __init__(self, function: Augmentation) -> None:
        self.function = function

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        return check_augmented(self.function(images, generator), images, self.function)

    def __repr__(self) -> str:
        return f"CheckedAugmentation({self.function!r})"


def check_augmented(
    result, images: torch.Tensor, function: Callable | None = None
) -> torch.Tensor:
    """``result`` if it can stand for the batch ``images``, else a ValueError.

    The contract of a user's augmentation ``f(batch, generator) -> batch``:

    - ``batch`` is a float tensor ``(N, C, H, W)`` with values in [0, 1]:
      the images scaled (uint8 divided by 255), resized to ``input_size``, in
      their own channels (1 for grayscale, 3 for colour), not normalised;
    - ``generator`` is the :class:`torch.Generator` on the batch's device
      that fitting seeds from ``random_state``; draw every random value from
      it (``torch.rand(..., generator=generator, device=batch.device)``) for
      fits that repeat, and per image for images that differ;
    - it returns a tensor of the same shape, dtype and device, values in
      [0, 1] (not checked: that would wait on the device every batch). It
      may modify ``batch`` in place; the input is a fresh tensor.

    Only the cheap parts (type, shape, dtype, device) are checked, on every
    batch.

    Parameters
    ----------
    result : object
        What the augmentation returned.
    images : torch.Tensor
        The batch it was given.
    function : callable, optional
        The augmentation, named in the message.

    Returns
    -------
    torch.Tensor
        ``result``.

    Raises
    ------
    ValueError
        If ``result`` is not a tensor, or its shape, dtype or device differ
        from the batch's.
    """
    name = _name(function)
    if not isinstance(result, torch.Tensor):
        raise ValueError(
            f"augmentation {name} returned {type(result).__name__}; it must "
            "return the batch as a torch.Tensor of the shape, dtype and "
            f"device it was given ({_describe(images)})"
        )
    for what in ("shape", "dtype", "device"):
        if getattr(result, what) != getattr(images, what):
            raise ValueError(
                f"augmentation {name} changed the batch's {what}: it was given "
                f"{_describe(images)} and returned {_describe(result)}; it must "
                "return the same shape, dtype and device (resize with "
                "input_size, not in the augmentation)"
            )
    return result


def _name(function: Callable | None) -> str:
    if function is None:
        return "callable"
    return getattr(function, "__qualname__", None) or repr(function)


def _describe(tensor: torch.Tensor) -> str:
    return f"shape {tuple(tensor.shape)}, {tensor.dtype} on {tensor.device}"


def resolve_augmentation(augmentation, rotation_degrees: float) -> Augmentation | None:
    """The training augmentation the two parameters ask for, or None for none.

    ``rotation_degrees`` is the one rotation setting, whatever the preset: it
    is the angle of ``"rotation"`` (as it always was), and the extra rotation
    ``"photo"`` adds to its crop and flip (0 for none; a few degrees suit
    photographs, where a camera is seldom level). ``None`` means no
    augmentation at all and a callable is the whole augmentation: neither
    rotates on its own, and ``rotation_degrees`` is ignored with them, as
    the callable's own settings govern it. One parameter rather than one per
    preset, so that ``rotation_degrees=0`` keeps meaning "no rotation".

    Parameters
    ----------
    augmentation : {"rotation", "photo"}, None or callable
        The preset's name, None, or ``f(batch, generator) -> batch`` (see
        :func:`check_augmented` for its contract). Instances of this module's
        classes are used as they are; any other callable is wrapped in a
        :class:`CheckedAugmentation`.
    rotation_degrees : float
        In [0, 180].

    Returns
    -------
    callable or None
        ``f(batch, generator) -> batch``, or None when nothing is to be done
        (None, or ``"rotation"`` with ``rotation_degrees=0``: no draw is then
        made, as before).

    Raises
    ------
    ValueError
        If ``augmentation`` names no preset or is of another kind, or
        ``rotation_degrees`` is not a number in [0, 180].
    """
    _check_range("rotation_degrees", rotation_degrees, 0, 180)
    if augmentation is None:
        return None
    if isinstance(augmentation, str):
        if augmentation == "rotation":
            return (
                RotationAugmentation(float(rotation_degrees))
                if rotation_degrees > 0
                else None
            )
        if augmentation == "photo":
            return PhotoAugmentation(rotation_degrees=float(rotation_degrees))
        raise ValueError(
            f"augmentation={augmentation!r} names no preset; expected one of "
            f"{PRESETS}, None, or a callable f(batch, generator) -> batch"
        )
    if isinstance(augmentation, (RotationAugmentation, PhotoAugmentation)):
        return augmentation
    if callable(augmentation):
        return CheckedAugmentation(augmentation)
    raise ValueError(
        f"augmentation must be one of {PRESETS}, None, or a callable "
        f"f(batch, generator) -> batch; got {type(augmentation).__name__}"
    )


def _pair(name: str, value) -> tuple[float, float]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(_is_real(v) for v in value)
    ):
        raise ValueError(f"{name} must be a pair of numbers; got {value!r}")
    return float(value[0]), float(value[1])


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_range(
    name: str, value, low: float, high: float, open_high: bool = False
) -> None:
    inside = _is_real(value) and math.isfinite(value) and low <= value
    inside = inside and (value < high if open_high else value <= high)
    if not inside:
        closing = ")" if open_high else "]"
        raise ValueError(
            f"{name} must be a number in [{low}, {high}{closing}; got {value!r}"
        )
