"""Batched inference on a fitted network, with the speed-ups that pay there.

``predict``, ``transform`` and the feature extractor all run a network (or a
part of it) over images in batches on the estimator's device; this is the
one place that does it, so each gets batch-norm folding on the CPU and CUDA
graphs on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from resnetclf._acceleration.bn_folding import folded_for_inference, worth_folding
from resnetclf._acceleration.cuda_graphs import cuda_graphed
from resnetclf._acceleration.devices import amp_dtype_for, cudnn_autotuned
from resnetclf._images import ImageBatches
from resnetclf._test_time import TestTimeViews
from resnetclf._training import module_on, predict_logits

__all__ = ["run_batched"]


def run_batched(
    forward_of: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]],
    module: nn.Module,
    images: ImageBatches,
    batch_size: int,
    precision: str,
    views: TestTimeViews | None = None,
) -> torch.Tensor:
    """``forward_of(module)`` over every image, in batches of ``batch_size`` on
    the images' device, at ``precision``, as a float32 CPU tensor.

    ``module`` is left as it is: a copy runs when it lives on another device,
    and batch norm is folded into a copy on the CPU when the images are many
    enough to pay for it. With ``views`` (a batch's test-time views), one
    output per view, stacked: ``(n_views, n_images, n_outputs)``.
    """
    device = images.device
    model = module_on(module, device)
    n_views = 1 if views is None else len(views)
    height, width = images.size
    if device.type == "cpu" and worth_folding(
        model, n_views * len(images), height, width
    ):
        # Measured on CPUs only; on CUDA the graphs below take the launches.
        model = folded_for_inference(model)
    with (
        cudnn_autotuned(device),
        cuda_graphed(
            forward_of(model),
            model,
            device,
            batch_size,
            evaluation_batches=n_views * (len(images) // batch_size),
        ) as forward,
    ):
        return predict_logits(
            forward, model, images, batch_size, amp_dtype_for(device, precision), views
        )
