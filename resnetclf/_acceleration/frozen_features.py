"""Train a linear head on features computed once, when nothing else trains.

A fit whose every stage below the head is frozen (``layer_lr_decay`` gives
them a rate of 0) and whose images are neither augmented nor mixed runs the
same backbone, in evaluation mode, on the same images every epoch: its
pooled features are a fixed function of each image. They are computed once
here, and the epoch loop then reads feature rows where it read images, and
trains ``fc`` on them: the same loop, the same head and history, without a
backbone pass per epoch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from resnetclf._features import pooled_features
from resnetclf._images import ImageBatches
from resnetclf._switches import current as switches

__all__ = ["FeatureBatches", "features_of_all", "features_suffice"]


def features_suffice(
    model: nn.Module,
    trainable: list[str],
    augments: bool,
    ema_decay: float | None,
    torch_compile,
) -> bool:
    """Whether fit may train the head on features computed once.

    Only the head trains, nothing changes the images from one epoch to the
    next (``augments``: an augmentation, MixUp or CutMix is on), the head is
    torchvision's ``Linear`` on the pooled map, and nothing reads the whole
    network each step (a weight average, a compiled forward). Resizing
    (``input_size``) is no obstacle: the features are computed from the
    resized images.
    """
    return (
        switches().frozen_features
        and trainable == ["fc"]
        and not augments
        and type(model.fc) is nn.Linear
        and isinstance(getattr(model, "avgpool", None), nn.AdaptiveAvgPool2d)
        and ema_decay is None
        and torch_compile is False
    )


@torch.no_grad()
def features_of_all(
    images: ImageBatches, model: nn.Module, batch_size: int, autocast
) -> torch.Tensor:
    """The pooled features of every image, in order, on the device."""
    was_training = model.training
    model.eval()
    features = None
    for start in range(0, len(images), batch_size):
        indices = np.arange(start, min(start + batch_size, len(images)))
        with autocast():
            # What torchvision's ResNet hands ``fc``: the pooled last map.
            batch = pooled_features(model, images.get(indices))
        if features is None:
            # One buffer on the device for every row.
            shape = (len(images), batch.shape[1])
            features = batch.new_empty(shape)
        features[indices[0] : indices[-1] + 1] = batch
    model.train(was_training)
    return features


class FeatureBatches:
    """The pooled features of every image of ``images``, computed once.

    Stands in for :class:`~resnetclf._images.ImageBatches` in the epoch loop:
    ``get(indices)`` returns feature rows instead of images. Augmentation is
    not possible (nothing augments when this is used).

    Parameters
    ----------
    images : ImageBatches
        The images, normalised on the device as the network reads them.
    model : torch.nn.Module
        The network whose frozen backbone computes the features; it is run
        in evaluation mode, as a frozen stage trains.
    batch_size : int
        Images per forward pass.
    autocast : context manager factory
        Called with no argument around each pass: the fit's precision.
    """

    def __init__(
        self, images: ImageBatches, model: nn.Module, batch_size: int, autocast
    ) -> None:
        self.device = images.device
        self.model_channels = images.model_channels
        self.features = features_of_all(images, model, batch_size, autocast)

    def __len__(self) -> int:
        return len(self.features)

    def get(
        self,
        indices: np.ndarray,
        augment=None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Feature rows ``indices`` (nothing augments: ``augment`` is None)."""
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.device)
        return self.features.index_select(0, index)
