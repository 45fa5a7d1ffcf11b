"""The optional ``torch.compile`` of the training forward pass."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["COMPILE_MODES", "compiled_forward"]

COMPILE_MODES = (
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)
# Modes that replay CUDA graphs, whose outputs the next replay overwrites.
_CUDA_GRAPH_MODES = {"reduce-overhead", "max-autotune"}


def compiled_forward(
    model: nn.Module, torch_compile: bool | str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward as the estimator's ``torch_compile`` asks for it.

    False gives the model itself; True or a mode name gives it compiled with
    static shapes. Dynamic shapes would save a recompile for the last, smaller
    batch, but their convolution backward with channels_last weights fails in
    inductor (torch 2.11, CUDA); the few static graphs are cheap.
    """
    if torch_compile is False:
        return model
    mode = "default" if torch_compile is True else torch_compile
    compiled = torch.compile(model, mode=mode, dynamic=False)
    if mode not in _CUDA_GRAPH_MODES:
        return compiled

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        # Each call is a new step: the caller is done with the last outputs
        # (the loop reduces them on the device before the next batch).
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(inputs)

    return forward
