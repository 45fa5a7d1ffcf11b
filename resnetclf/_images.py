"""Image arrays -> normalised, augmented batches on the training device.

The data set stays in the array the user passed, in its own dtype (uint8 for the
merged data set); on a GPU with room for it, one copy in that dtype lives on the
device. Only one batch at a time is gathered, converted to float, resized,
augmented and normalised on the device, so memory never holds a float or a
three-channel copy of the whole data set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F

from resnetclf._resize import resize_batch
from resnetclf._switches import current as switches
from resnetclf._warnings import user_stacklevel

__all__ = [
    "IMAGENET_STATS",
    "ImageBatches",
    "ImageLayout",
    "array_ndim",
    "infer_layout",
    "model_input_channels",
    "random_rotate",
    "resolve_normalization",
    "rotate",
    "warn_if_beyond_unit_range",
]

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# dtypes torch.from_numpy takes on every supported torch release.
_TORCH_NATIVE_DTYPES = {
    np.dtype(t)
    for t in (
        np.uint8,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.float16,
        np.float32,
        np.float64,
        np.bool_,
    )
}


@dataclass(frozen=True)
class ImageLayout:
    """How each sample of an array is laid out.

    Attributes
    ----------
    height, width, channels : int
        Image size; ``channels`` is 1 or 3.
    channels_last : bool
        Samples are stored ``(H, W, C)`` (also flattened rows and ``(H, W)``
        grayscale images) rather than ``(C, H, W)``.
    """

    height: int
    width: int
    channels: int
    channels_last: bool

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)``."""
        return (self.height, self.width, self.channels)


def array_ndim(X) -> int:
    """Dimensions of ``X``, an array or what ``np.asarray`` makes one of.

    Whether ``X`` holds flattened rows (2-D) or images (3-D, 4-D) decides how
    it is validated, before any validation has made it an array.
    """
    ndim = getattr(X, "ndim", None)
    return int(ndim) if ndim is not None else np.asarray(X).ndim


def infer_layout(shape: Sequence[int], image_shape=None) -> ImageLayout:
    """Read the image layout from an array's shape.

    - ``(N, D)``: flattened images; ``image_shape`` ``(H, W)`` or ``(H, W, C)``
      gives their shape in row-major order, and without it each row is one
      ``1 x D`` grayscale image.
    - ``(N, H, W)``: grayscale images.
    - ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3}: the last axis is
      taken as channels when it has 1 or 3 entries, else the second axis.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return _flat_layout(shape[1], image_shape)
    if len(shape) == 3:
        _check_size(shape[1], shape[2])
        return ImageLayout(shape[1], shape[2], 1, channels_last=True)
    if len(shape) == 4:
        if shape[3] in (1, 3):
            _check_size(shape[1], shape[2])
            return ImageLayout(shape[1], shape[2], shape[3], channels_last=True)
        if shape[1] in (1, 3):
            _check_size(shape[2], shape[3])
            return ImageLayout(shape[2], shape[3], shape[1], channels_last=False)
        raise ValueError(
            "X must have 1 or 3 channels on its last axis (N, H, W, C) or its "
            f"second axis (N, C, H, W); got an array of shape {shape}"
        )
    raise ValueError(
        "X must be 2-D (N, H*W*C), 3-D (N, H, W), or 4-D (N, H, W, C) or "
        f"(N, C, H, W); got {len(shape)}-D with shape {shape}"
    )


def _flat_layout(n_features: int, image_shape) -> ImageLayout:
    if image_shape is None:
        return ImageLayout(1, n_features, 1, channels_last=True)
    if (
        not isinstance(image_shape, (tuple, list))
        or len(image_shape) not in (2, 3)
        or not all(
            isinstance(s, Integral) and not isinstance(s, bool) and s > 0
            for s in image_shape
        )
    ):
        raise ValueError(
            "image_shape must be None or a tuple (height, width) or "
            f"(height, width, channels) of positive ints; got {image_shape!r}"
        )
    height, width, channels = (*image_shape, 1)[:3]
    if channels not in (1, 3):
        raise ValueError(f"image_shape must have 1 or 3 channels; got {image_shape!r}")
    if height * width * channels != n_features:
        raise ValueError(
            f"image_shape={tuple(image_shape)!r} holds {height * width * channels}"
            f" values per image but X has {n_features} features per row"
        )
    return ImageLayout(int(height), int(width), int(channels), channels_last=True)


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"images must be at least 1x1 pixels; got {height}x{width}")


def resolve_normalization(normalization) -> tuple[tuple[float, ...], ...]:
    """``normalization`` -> per-channel ``(mean, std)`` as two 3-tuples.

    Accepts ``"imagenet"`` or a pair ``(mean, std)`` whose entries are floats
    (the same for every channel) or sequences of 1 or 3 floats.
    """
    if isinstance(normalization, str):
        if normalization != "imagenet":
            raise ValueError(
                "normalization must be 'imagenet' or a pair (mean, std); "
                f"got {normalization!r}"
            )
        return IMAGENET_STATS
    if not isinstance(normalization, (tuple, list)) or len(normalization) != 2:
        raise ValueError(
            "normalization must be 'imagenet' or a pair (mean, std) of floats or "
            f"3-sequences of floats; got {normalization!r}"
        )
    mean, std = (_three_floats(v, name) for v, name in zip(normalization, "ms"))
    if not all(math.isfinite(m) for m in mean) or not all(
        math.isfinite(s) and s > 0 for s in std
    ):
        raise ValueError(
            f"normalization needs finite means and stds > 0; got mean={mean}, std={std}"
        )
    return mean, std


def _three_floats(value, which: str) -> tuple[float, float, float]:
    if isinstance(value, Real) and not isinstance(value, bool):
        return (float(value),) * 3
    if (
        isinstance(value, (tuple, list))
        and len(value) in (1, 3)
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in value)
    ):
        return tuple(float(v) for v in value) * (3 // len(value))
    kind = "mean" if which == "m" else "std"
    raise ValueError(
        f"normalization's {kind} must be a float or a sequence of 1 or 3 floats; "
        f"got {value!r}"
    )


def model_input_channels(input_channels: int, mean, std) -> int:
    """1 when a grayscale image can feed a folded stem exactly, else 3.

    Folding is exact only when every channel is normalised alike; otherwise the
    gray channel is repeated (as a view, not a copy) and normalised per channel.
    """
    uniform = len(set(mean)) == 1 and len(set(std)) == 1
    fold = uniform and switches().fold_gray_stem
    return 1 if input_channels == 1 and fold else 3


def random_rotate(
    images: torch.Tensor, max_degrees: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Rotate each image by its own angle drawn uniformly in [-max, max] degrees."""
    angles = torch.rand(len(images), device=images.device, generator=generator)
    return rotate(images, (angles * 2 - 1) * math.radians(max_degrees))


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image of an NCHW batch by its angle (radians) about its centre.

    One ``affine_grid`` + ``grid_sample`` for the whole batch; corners are filled
    with 0, as torchvision's ``RandomRotation`` does. The matrix is corrected for
    the aspect ratio, since the grid's coordinates run over [-1, 1] on both axes.
    """
    height, width = images.shape[-2:]
    cos, sin = torch.cos(angles), torch.sin(angles)
    zeros = torch.zeros_like(cos)
    theta = torch.stack(
        [
            torch.stack([cos, -sin * height / width, zeros], dim=1),
            torch.stack([sin * width / height, cos, zeros], dim=1),
        ],
        dim=1,
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(
        images,
        grid,
        mode=switches().rotation_sampling,
        padding_mode="zeros",
        align_corners=False,
    )


class ImageBatches:
    """Gather batches of an image array as model input on a device.

    Parameters
    ----------
    X : ndarray
        The validated array, any numeric dtype, in the layout ``layout`` says.
        Only read, never copied whole.
    layout : ImageLayout
        How samples are stored.
    device : torch.device
        Where batches go and are processed.
    mean, std : tuple of float
        Per-channel statistics (3 entries) applied after scaling to [0, 1]
        (uint8 data is divided by 255; other dtypes are used as they are).
    model_channels : int
        1 for a folded grayscale stem, else 3.
    size : tuple of (int, int) or None, default=None
        ``(height, width)`` every batch is resized to (``input_size``
        resolved), after scaling to [0, 1] and before augmentation and
        normalisation; None, or the images' own size, resizes nothing.
    resident : bool or None, default=None
        Gather batches from one copy of ``X`` kept on ``device`` (made at the
        first ``get``) rather than from host memory batch by batch. None: on
        CUDA when ``X`` is C-contiguous, of a dtype torch reads without
        conversion, and at most a quarter of the device's free memory; never
        on the CPU, where the host array already is the device's.
    name : str, default="X"
        What the user called ``X``, for the warning of
        :func:`warn_if_beyond_unit_range`.
    """

    def __init__(
        self,
        X: np.ndarray,
        layout: ImageLayout,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        model_channels: int,
        resident: bool | None = None,
        name: str = "X",
        size: tuple[int, int] | None = None,
    ) -> None:
        warn_if_beyond_unit_range(X, name)
        self.X = X
        self.layout = layout
        self.device = device
        self.model_channels = model_channels
        own = (layout.height, layout.width)
        self.size = own if size is None else (int(size[0]), int(size[1]))
        self._resizes = self.size != own
        channels = model_channels
        mean_t = torch.tensor(mean[:channels], dtype=torch.float32, device=device)
        std_t = torch.tensor(std[:channels], dtype=torch.float32, device=device)
        self._scale = 1.0 / 255.0 if X.dtype == np.uint8 else 1.0
        self._inv_std = (1.0 / std_t).view(1, channels, 1, 1)
        self._shift = (-mean_t / std_t).view(1, channels, 1, 1)
        self._pin = device.type == "cuda"
        self._resident_wanted = resident
        self._resident: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.X)

    def get(
        self,
        indices: np.ndarray,
        augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
        | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images ``indices`` as a float32, normalised, channels-last NCHW tensor.

        ``augment(batch, generator)``, when given, changes the batch scaled
        to [0, 1] and resized, in its own channels, before normalisation
        (see :mod:`resnetclf._augment`).
        """
        batch = self._float(indices)
        scale = self._scale
        if self._resizes or augment is not None:
            batch = batch * scale
            scale = 1.0
            if self._resizes:
                batch = resize_batch(batch, self.size)
            if augment is not None:
                batch = augment(batch, generator)
        # Without either, scaling rides on the normalisation: one pass fewer.
        return self._normalised(batch, scale)

    def get_unit(self, indices: np.ndarray) -> torch.Tensor:
        """Images ``indices`` scaled to [0, 1] and resized, not normalised,
        in their own channels (for test-time views; :meth:`normalise` them)."""
        return resize_batch(self._float(indices) * self._scale, self.size)

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of :meth:`get_unit`'s kind as model input, as :meth:`get`
        makes it."""
        return self._normalised(batch, 1.0)

    def _float(self, indices: np.ndarray) -> torch.Tensor:
        """The raw samples ``indices`` as float32 NCHW, on the device."""
        batch = self._gather(indices)
        layout = self.layout
        if layout.channels_last:
            # A permuted NHWC block is already NCHW in channels_last memory.
            batch = batch.reshape(
                len(indices), layout.height, layout.width, layout.channels
            ).permute(0, 3, 1, 2)
        else:
            batch = batch.reshape(
                len(indices), layout.channels, layout.height, layout.width
            )
        return batch.to(torch.float32)

    def _normalised(self, batch: torch.Tensor, scale: float) -> torch.Tensor:
        """``batch * scale`` normalised, in the model's channels."""
        if batch.shape[1] != self.model_channels:
            batch = batch.expand(-1, self.model_channels, -1, -1)
        batch = batch * (self._inv_std * scale) + self._shift
        return batch.contiguous(memory_format=torch.channels_last)

    @property
    def is_resident(self) -> bool:
        """Whether batches come from a copy of ``X`` on the device."""
        return self._resident_source() is not None

    def _gather(self, indices: np.ndarray) -> torch.Tensor:
        """The raw samples ``indices``, in ``X``'s dtype, on the device."""
        source = self._resident_source()
        if source is not None:
            index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
            return source.index_select(0, index.to(self.device, non_blocking=True))
        raw = np.take(self.X, indices, axis=0)
        if raw.dtype not in _TORCH_NATIVE_DTYPES:
            raw = raw.astype(np.float32)
        batch = torch.from_numpy(raw)
        if self._pin:
            # Pinned pages let the copy overlap the work queued before it.
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def _resident_source(self) -> torch.Tensor | None:
        if self._resident is None and self._resident_wanted is not False:
            if self._resident_wanted or _fits_on_device(self.X, self.device):
                self._resident = _as_tensor_on(self.X, self.device)
            else:
                self._resident_wanted = False
        return self._resident


# Rounding in a user's own scaling (X / X.max(), say) may pass 1 by a few ulps.
_UNIT_RANGE_SLACK = 1e-3


def warn_if_beyond_unit_range(X: np.ndarray, name: str = "X") -> float | None:
    """Warn when non-uint8 images hold values above 1, which are read as in [0, 1].

    Only uint8 images are rescaled (by 1/255); every other dtype is used as it
    is. 0..255 floats or ``load_digits``' 0..16 would then train and predict
    on a scale the normalisation and pretrained weights do not expect, with no
    error. A warning rather than an error: values beyond [0, 1] can be meant
    (images already standardised by the user), and a network trained from
    scratch copes with the scale. One reduction over the array, no copy.

    Returns the maximum checked, or None when the dtype needs no check.
    Dates and durations, which scikit-learn's numeric check lets through,
    are refused here with a TypeError naming the array.
    """
    if X.dtype.kind in "mM":
        raise TypeError(
            f"{name} has dtype {X.dtype}: images must hold numbers (uint8, or "
            "floats in [0, 1]), not dates or durations"
        )
    if X.dtype == np.uint8 or X.dtype == np.bool_ or X.size == 0:
        return None
    maximum = float(np.max(X))
    if maximum > 1.0 + _UNIT_RANGE_SLACK:
        warnings.warn(
            f"{name} ({X.dtype}) has values up to {maximum:g}, but images that "
            "are not uint8 are taken as already scaled to [0, 1] (only uint8 "
            f"is divided by 255). Divide {name} by its maximum (for 0..255 "
            f"values: {name} / 255, or pass {name}.astype(np.uint8)), the same "
            "way at fit and at predict. If the scale is meant (images you "
            "standardised yourself), ignore this warning.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return maximum


# Share of a CUDA device's free memory a resident copy of the data may take; the
# rest is left to the model, its activations and the optimizer.
_RESIDENT_MEMORY_SHARE = 0.25


def _fits_on_device(X: np.ndarray, device: torch.device) -> bool:
    if device.type != "cuda" or not switches().resident_data:
        return False
    if X.dtype not in _TORCH_NATIVE_DTYPES or not X.flags.c_contiguous:
        return False
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return X.nbytes <= _RESIDENT_MEMORY_SHARE * free_bytes


def _as_tensor_on(X: np.ndarray, device: torch.device) -> torch.Tensor:
    """``X`` as a tensor on ``device``: a view of the array on the CPU (never
    written to), one bulk copy on an accelerator."""
    if X.dtype not in _TORCH_NATIVE_DTYPES:
        raise TypeError(f"resident batches need a dtype torch reads; got {X.dtype}")
    with warnings.catch_warnings():
        # A read-only array (a memmap, say) is fine: it is only ever read.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        contiguous = np.ascontiguousarray(X)
        if any(stride < 0 for stride in contiguous.strides):
            # numpy calls an axis of length 1 contiguous whatever its stride,
            # so a reversed single image stays reversed; torch refuses that.
            contiguous = contiguous.copy()
        tensor = torch.from_numpy(contiguous)
    return tensor.to(device)
