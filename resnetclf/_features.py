"""Pooled features of a ResNet stage: what ``transform`` returns.

A torchvision ResNet reads an image through a stem and four stages
(``layer1`` .. ``layer4``); torchvision's head averages the last stage's map
over its positions and feeds the result, one value per channel, to ``fc``.
That average of a stage's map is the image's feature vector here, for the
last stage (what any head of the classifier reads, pooled) or an earlier one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["STAGES", "pooled_features", "stage_channels", "truncated_after"]

# The stages of a ResNet, input to output.
STAGES = ("layer1", "layer2", "layer3", "layer4")


def pooled_features(
    model: nn.Module, x: torch.Tensor, layer: str = "layer4"
) -> torch.Tensor:
    """``layer``'s map for input ``x``, averaged over positions: ``(N, C)``.

    For ``"layer4"`` this is what torchvision's ``avgpool`` hands ``fc``,
    whatever head the model has.
    """
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for name in STAGES[: STAGES.index(layer) + 1]:
        x = getattr(model, name)(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def stage_channels(model: nn.Module, layer: str) -> int:
    """Channels of ``layer``'s output: its last block's last norm."""
    stage = getattr(model, layer)
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


def truncated_after(model: nn.Module, layer: str) -> nn.Module:
    """``model`` with the stages after ``layer`` and the head made identities.

    torchvision's forward then returns ``layer``'s pooled map, as
    :func:`pooled_features` computes it, and no weight of the dropped stages
    is kept. Changes ``model`` in place and returns it.
    """
    for name in STAGES[STAGES.index(layer) + 1 :]:
        setattr(model, name, nn.Identity())
    model.fc = nn.Identity()
    return model
