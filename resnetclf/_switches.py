"""The one hook through which the benchmarks vary the library.

A benchmark that asks what one of ``fit``'s means is worth (a copy of the data
on the GPU, CUDA graphs, the small-map weight gradients), or which of the
library's differences from a plain training loop an accuracy gap comes from
(fused Adam, no weight decay on norms and biases, bilinear rotation, the
folded grayscale stem), switches that means off here and measures again. The
library reads :func:`current` where each means is decided, so the benchmarks
name a switch, never a private function or constant that may move.

Not part of the public API: the defaults are the library, and every switch
exists for a measurement on ``docs/benchmarks.md``.

Examples
--------
>>> from resnetclf._switches import switched
>>> with switched(fused_optimizer=False):
...     pass  # a fit here steps torch's default Adam
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Switches", "current", "switched"]


@dataclass(frozen=True)
class Switches:
    """Which of the library's means are on; the defaults are the library.

    Attributes
    ----------
    resident_data : bool
        On CUDA, copy the whole image array to the device when it fits.
    cudnn_autotune : bool
        Let cuDNN time its convolution algorithms.
    cuda_graphs : bool
        Replay long passes from CUDA graphs.
    batched_weight_grads : bool
        On a CPU, compute small maps' weight gradients as one product over
        the batch rather than through oneDNN.
    fused_optimizer : bool
        Step Adam/AdamW with torch's fused kernels.
    decay_norms_and_biases : bool
        Apply weight decay to norms and biases as well as to weights.
    rotation_sampling : {"bilinear", "nearest"}
        How the training rotation samples the image.
    fold_gray_stem : bool
        Feed grayscale images to a one-channel (folded) stem rather than
        repeating them to three channels.
    frozen_features : bool
        When only the head trains on unaugmented images, train it on the
        backbone's features computed once rather than on the images.
    """

    resident_data: bool = True
    cudnn_autotune: bool = True
    cuda_graphs: bool = True
    batched_weight_grads: bool = True
    fused_optimizer: bool = True
    decay_norms_and_biases: bool = False
    rotation_sampling: str = "bilinear"
    fold_gray_stem: bool = True
    frozen_features: bool = True


_current = Switches()


def current() -> Switches:
    """The switches in force."""
    return _current


@contextlib.contextmanager
def switched(**changes) -> Iterator[Switches]:
    """Run the block with the :class:`Switches` named in ``changes`` set.

    Parameters
    ----------
    **changes
        Field names of :class:`Switches` and their values for the block.

    Yields
    ------
    Switches
        The switches in force in the block.
    """
    global _current
    previous = _current
    _current = dataclasses.replace(previous, **changes)
    try:
        yield _current
    finally:
        _current = previous
