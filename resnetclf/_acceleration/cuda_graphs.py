"""CUDA graphs of the model's passes on full batches.

At the image sizes this library trains on, a ResNet step on a modern GPU is
bound by the host launching its several hundred kernels one by one, not by
the kernels themselves. A captured CUDA graph replays them all with one
launch. Full batches all have one shape, so one graph per pass serves a whole
fit; the last, smaller batch runs eagerly.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn

from resnetclf._switches import current as switches
from resnetclf._warnings import user_stacklevel

__all__ = ["MIN_REPLAYS", "CudaGraphedForward", "cuda_graphed"]

# A capture costs a few eager passes (warm-up) plus the capture itself; below
# this many replays of a pass it does not pay for itself.
MIN_REPLAYS = 32

Forward = Callable[[torch.Tensor], torch.Tensor]


class _Call(nn.Module):
    """``model`` behind a throw-away module, so that the graphing, which
    replaces its argument's ``forward``, leaves the user's model untouched."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)


class CudaGraphedForward:
    """Call ``model`` through CUDA graphs on batches of ``batch_size``.

    With grad enabled and the model in training mode, the forward and the
    backward are captured together (``torch.cuda.make_graphed_callables``);
    the loss and the optimizer step stay eager, so learning-rate schedules and
    grad scalers work unchanged. Under ``torch.inference_mode`` with the model
    in eval mode, the forward is captured alone. Each pass is captured at its
    first full batch, with the autocast settings in force then; a batch of
    another size, shape or stride runs the model eagerly, as does everything
    after a capture that failed (with a warning).

    Parameters
    ----------
    model : nn.Module
        On ``device``. Its parameters must stay the same tensors (updates
        in place are fine, as optimizers and ``load_state_dict`` make them).
    device : torch.device
        A CUDA device; inputs elsewhere run eagerly.
    batch_size : int
        The batch size to graph.
    training, evaluation : bool
        Which passes may be graphed.

    Notes
    -----
    Outputs of a replayed pass live in the graph's memory and are
    overwritten by the next replay: use them before the next call. Autocast
    must run with ``cache_enabled=False``, or casts made before a capture
    would be baked into the graph.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        batch_size: int,
        training: bool = True,
        evaluation: bool = True,
    ) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self._enabled = {"training": training, "evaluation": evaluation}
        self._graphs: dict[str, tuple[tuple, Forward]] = {}

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        graphed = self._graph_for(inputs)
        return self.model(inputs) if graphed is None else graphed(inputs)

    @property
    def captured(self) -> list[str]:
        """The passes captured so far: ``"training"``, ``"evaluation"``."""
        return sorted(self._graphs)

    def release(self) -> None:
        """Drop the graphs and their memory; later calls run eagerly."""
        self._graphs.clear()
        self._enabled = dict.fromkeys(self._enabled, False)
        # The gradients of the last replayed step live in the graph's memory.
        for param in self.model.parameters():
            param.grad = None

    def _graph_for(self, inputs: torch.Tensor) -> Forward | None:
        if inputs.device != self.device or inputs.shape[0] != self.batch_size:
            return None
        if self.model.training and torch.is_grad_enabled():
            kind = "training"
        elif not self.model.training and torch.is_inference_mode_enabled():
            kind = "evaluation"
        else:
            return None
        key = (tuple(inputs.shape), inputs.stride(), inputs.dtype, inputs.device)
        if kind in self._graphs:
            captured_key, graphed = self._graphs[kind]
            return graphed if captured_key == key else None
        if not self._enabled[kind]:
            return None
        capture = _capture_training if kind == "training" else _capture_evaluation
        try:
            graphed = capture(self.model, inputs)
        except RuntimeError as exc:  # torch.OutOfMemoryError included
            self._enabled[kind] = False
            warnings.warn(
                f"could not capture the {kind} pass as a CUDA graph; it runs "
                f"eagerly for the rest of this call. Cause: {exc}",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            return None
        self._graphs[kind] = (key, graphed)
        return graphed


def _capture_training(model: nn.Module, sample: torch.Tensor) -> Forward:
    saved_buffers = [buffer.clone() for buffer in model.buffers()]
    try:
        graphed = torch.cuda.make_graphed_callables(_Call(model), (sample.clone(),))
    finally:
        # The warm-up passes ran in training mode on the sample: undo what
        # they did to batch-norm statistics. (Weights are untouched: they
        # take their gradients through autograd.grad, not .grad.)
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved_buffers):
                buffer.copy_(value)
    return graphed


def _capture_evaluation(model: nn.Module, sample: torch.Tensor) -> Forward:
    static_input = sample.clone()
    # Warm up on a side stream, as capture requires: cuDNN's algorithm
    # search and the allocator's first requests must not be captured.
    stream = torch.cuda.Stream(sample.device)
    stream.wait_stream(torch.cuda.current_stream(sample.device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            model(static_input)
    torch.cuda.current_stream(sample.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = model(static_input)

    def replay(inputs: torch.Tensor) -> torch.Tensor:
        static_input.copy_(inputs)
        graph.replay()
        return static_output

    # The closure keeps the graph, and with it its memory pool, alive.
    return replay


@contextlib.contextmanager
def cuda_graphed(
    forward: Forward,
    model: nn.Module,
    device: torch.device,
    batch_size: int,
    training_batches: int = 0,
    evaluation_batches: int = 0,
) -> Iterator[Forward]:
    """``forward``, or on CUDA a :class:`CudaGraphedForward` of ``model``.

    ``training_batches`` and ``evaluation_batches`` are how many full batches
    each pass will run in this call; a pass is graphed only when that reaches
    :data:`MIN_REPLAYS`. The graphs are released on exit.
    """
    training = training_batches >= MIN_REPLAYS
    evaluation = evaluation_batches >= MIN_REPLAYS
    if device.type != "cuda" or forward is not model or not (training or evaluation):
        yield forward
        return
    if not switches().cuda_graphs:
        yield forward
        return
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    graphed = CudaGraphedForward(model, device, batch_size, training, evaluation)
    try:
        yield graphed
    finally:
        graphed.release()
