"""A fitted estimator as one torch module: raw images in, predictions out.

``predict_proba`` and ``predict`` take images as the user has them and turn
each batch into the network's input on the device
(:class:`~resnetclf._images.ImageBatches`); a deployed model must do the same
inside its graph. :class:`RawImagesToOutputs` does it in the same order and
with the same arithmetic: the raw values to float32, the layout to
``(N, C, H, W)``, a grayscale image repeated to three channels when the stem
is not folded, then ``x * (scale / std) - mean / std``; then the network,
and a small module that maps its outputs as the estimator's task does:
:class:`ClassProbabilities` (a softmax over the classes, or a sigmoid per
label for a multi-label model) for a classifier, :class:`TargetValues` (the
standardised outputs back in the targets' units) for a regressor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "INPUT_DTYPES",
    "INPUT_LAYOUTS",
    "ClassProbabilities",
    "RawImagesToOutputs",
    "TargetValues",
    "input_shape",
    "resolve_input_dtype",
    "resolve_input_layout",
]

# How a deployed model takes its images: the layouts predict reads.
INPUT_LAYOUTS = ("NHW", "NHWC", "NCHW", "flat")
# uint8 is divided by 255; floats are taken as already in [0, 1], as in predict.
INPUT_DTYPES = ("uint8", "float32", "float64")


def resolve_input_layout(layout: str, channels: int) -> str:
    """``layout`` checked for images of ``channels``; ``"auto"`` is ``"NHW"``
    for grayscale and ``"NHWC"`` for colour."""
    if layout == "auto":
        return "NHW" if channels == 1 else "NHWC"
    if layout not in INPUT_LAYOUTS:
        raise ValueError(
            f"input_layout must be 'auto' or one of {', '.join(INPUT_LAYOUTS)}; "
            f"got {layout!r}"
        )
    if layout == "NHW" and channels != 1:
        raise ValueError(
            f"input_layout='NHW' is for grayscale images; the model was fitted "
            f"on {channels}-channel images: use 'NHWC', 'NCHW' or 'flat'"
        )
    return layout


def resolve_input_dtype(dtype) -> str:
    """``dtype`` (a name or a numpy dtype) as one of :data:`INPUT_DTYPES`."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in INPUT_DTYPES:
        raise ValueError(
            f"input_dtype must be one of {', '.join(INPUT_DTYPES)}; got {dtype!r}"
        )
    return name


def input_shape(layout: str, image_shape: Sequence[int]) -> tuple[int, ...]:
    """One image's shape in ``layout``, for images ``(height, width, channels)``."""
    height, width, channels = image_shape
    return {
        "NHW": (height, width),
        "NHWC": (height, width, channels),
        "NCHW": (channels, height, width),
        "flat": (height * width * channels,),
    }[layout]


class ClassProbabilities(nn.Module):
    """A classifier's logits to its class probabilities, as ``predict_proba``.

    Parameters
    ----------
    multi_label : bool, default=False
        One sigmoid per label (a multi-label model) instead of a softmax over
        the classes.
    """

    def __init__(self, multi_label: bool = False) -> None:
        super().__init__()
        self.multi_label = multi_label

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)


class TargetValues(nn.Module):
    """A regressor's standardised outputs to values in the targets' units.

    ``outputs * scale + mean`` per output, as ``predict`` maps them, in
    float32: shape ``(N,)`` for a single output, as ``predict`` returns it,
    else ``(N, n_outputs)``.

    Parameters
    ----------
    mean, scale : sequence of float
        The training targets' mean and standard deviation, one per output
        (the regressor's standardisation).
    """

    def __init__(self, mean: Sequence[float], scale: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32).reshape(-1))
        scale_t = torch.as_tensor(np.asarray(scale, dtype=np.float32).reshape(-1))
        if mean_t.shape != scale_t.shape:
            raise ValueError("mean and scale need one value per output each")
        self.register_buffer("mean", mean_t)
        self.register_buffer("scale", scale_t)
        self.single_output = mean_t.numel() == 1

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        values = outputs.to(torch.float32) * self.scale + self.mean
        if self.single_output:
            # One output: (N,), as scikit-learn's regressors predict it.
            return values.squeeze(1)
        return values


class RawImagesToOutputs(nn.Module):
    """``model``'s predictions for images as the user holds them.

    Parameters
    ----------
    model : nn.Module
        The fitted network, in evaluation mode, float32.
    layout : str
        One of :data:`INPUT_LAYOUTS`: how a batch of images is laid out.
    image_shape : sequence of int
        ``(height, width, channels)`` of the images.
    scale : float
        1/255 for uint8 input, 1 for floats.
    mean, std : sequence of float
        The normalisation, three values each.
    model_channels : int
        Channels of the network's stem: 1 (folded grayscale) or 3.
    output : nn.Module
        What the network's outputs become: :class:`ClassProbabilities` for a
        classifier, :class:`TargetValues` for a regressor.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: str,
        image_shape: Sequence[int],
        scale: float,
        mean: Sequence[float],
        std: Sequence[float],
        model_channels: int,
        output: nn.Module,
    ) -> None:
        super().__init__()
        self.model = model
        self.output = output
        self.layout = layout
        self.image_shape = tuple(int(s) for s in image_shape)
        self.model_channels = model_channels
        # As ImageBatches computes them, so that the rounding is the same.
        mean_t = torch.tensor(mean[:model_channels], dtype=torch.float32)
        std_t = torch.tensor(std[:model_channels], dtype=torch.float32)
        shape = (1, model_channels, 1, 1)
        self.register_buffer("multiplier", ((1.0 / std_t) * scale).view(shape))
        self.register_buffer("shift", (-mean_t / std_t).view(shape))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        height, width, channels = self.image_shape
        if self.layout == "flat":
            # Rows hold each image row-major as (height, width, channels).
            x = x.reshape(x.shape[0], height, width, channels)
        if self.layout == "NHW":
            x = x.unsqueeze(1)
        elif self.layout in ("NHWC", "flat"):
            x = x.permute(0, 3, 1, 2)
        if channels != self.model_channels:
            # Grayscale normalised differently per channel: an RGB stem.
            x = x.expand(-1, self.model_channels, -1, -1)
        x = x * self.multiplier + self.shift
        return self.output(self.model(x))
