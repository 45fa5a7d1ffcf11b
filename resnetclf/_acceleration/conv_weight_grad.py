"""Convolution weight gradients as one matrix product per batch, on the CPU.

oneDNN's CPU backward-weights pass for channels_last convolutions ("gemm:jit"
on CPUs without AVX-512) multiplies one image at a time: a ``(C_out, L)`` by
``(L, C_in*kh*kw)`` product per image, ``L`` the image's output positions.
ResNet's last stages work on small maps (40x168 images shrink to 3x11 and 2x6
there, 28x28 ones to 2x2 and 1x1), so each product is a rank-``L`` update of
the whole weight gradient and the pass walks that gradient once per image:
memory-bound. For a 512->512 3x3 convolution on 1x1 maps and a batch of 64 it
takes 85 ms, where the same arithmetic as a single product over the whole
batch takes 5 ms (2 threads, AVX2).

Here, for convolutions with few output positions and many output channels, the
weight gradient is that single product: every image's input patches (im2col,
in channels_last order) times the output gradient. The forward pass and the
input gradient stay with oneDNN. The result is the same gradient, summed in
another order. docs/benchmarks.md has both ways measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from resnetclf._switches import current as switches

__all__ = ["gemm_weight_grads", "uses_gemm_weight_grad", "weight_grad_by_gemm"]

# Where one product beats oneDNN's per-image products (2-core AVX2 CPU,
# docs/benchmarks.md): from about even at the edges (128
# channels on 7x7 maps) to 18x (512 channels on 1x1 maps); with fewer channels
# or larger maps the patch copy costs more than the products save.
MAX_OUTPUT_POSITIONS = 64
MIN_OUT_CHANNELS = 128
# Patches gathered at once (float32 elements, 32 MiB): larger batches are
# taken in slices, so the copy stays small next to the activations.
_MAX_PATCH_ELEMENTS = 1 << 23


def weight_grad_by_gemm(
    inputs: torch.Tensor,
    grad_output: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    max_patch_elements: int = _MAX_PATCH_ELEMENTS,
) -> torch.Tensor:
    """The weight gradient of an ungrouped, undilated ``conv2d``.

    Parameters
    ----------
    inputs : Tensor of shape (N, C_in, H, W)
        The convolution's input, in any memory format (channels_last is the
        one that needs no copy before the patches are gathered).
    grad_output : Tensor of shape (N, C_out, H_out, W_out)
        The gradient of the loss with respect to the convolution's output.
    kernel_size, stride, padding : tuple of int
        The convolution's geometry, (height, width) each; zero padding.
    max_patch_elements : int
        Most patch values gathered at once; the batch is taken in slices.

    Returns
    -------
    Tensor of shape (C_out, C_in, kh, kw)
        In channels_last memory, the layout of the weights it is for.
    """
    n_images, out_channels, out_height, out_width = grad_output.shape
    kernel_height, kernel_width = kernel_size
    pixels = inputs.permute(0, 2, 3, 1)  # NHWC: a view when inputs are channels_last
    if padding[0] or padding[1]:
        pixels = F.pad(pixels, (0, 0, padding[1], padding[1], padding[0], padding[0]))
    # (N, H_out, W_out, C_in, kh, kw) windows, still a view.
    windows = pixels.unfold(1, kernel_height, stride[0]).unfold(
        2, kernel_width, stride[1]
    )
    gradient = grad_output.permute(0, 2, 3, 1)  # (N, H_out, W_out, C_out)
    patch_size = kernel_height * kernel_width * inputs.shape[1]
    per_image = out_height * out_width * patch_size
    step = max(1, max_patch_elements // max(1, per_image))
    weight_grad = None
    for start in range(0, n_images, step):
        images = slice(start, start + step)
        # Rows: output positions of the slice; columns: (kh, kw, C_in).
        patches = windows[images].permute(0, 1, 2, 4, 5, 3).reshape(-1, patch_size)
        rows = gradient[images].reshape(-1, out_channels)
        if weight_grad is None:
            weight_grad = rows.t() @ patches
        else:
            weight_grad.addmm_(rows.t(), patches)
    if weight_grad is None:  # an empty batch
        weight_grad = grad_output.new_zeros(out_channels, patch_size)
    return weight_grad.view(
        out_channels, kernel_height, kernel_width, inputs.shape[1]
    ).permute(0, 3, 1, 2)


class _ConvGemmWeightGrad(torch.autograd.Function):
    """``conv2d`` without bias whose backward takes its weight gradient from
    :func:`weight_grad_by_gemm`."""

    @staticmethod
    def forward(ctx, inputs, weight, stride, padding):
        ctx.save_for_backward(inputs, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(inputs, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad_output):
        inputs, weight = ctx.saved_tensors
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.aten.convolution_backward(
                grad_output,
                inputs,
                weight,
                None,
                list(ctx.stride),
                list(ctx.padding),
                [1, 1],
                False,
                [0, 0],
                1,
                [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            grad_weight = weight_grad_by_gemm(
                inputs, grad_output, weight.shape[2:], ctx.stride, ctx.padding
            )
        return grad_input, grad_weight, None, None


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def _has_plain_geometry(conv: nn.Conv2d) -> bool:
    kind = type(conv)
    if parametrize.is_parametrized(conv, "weight"):
        # Low-rank adapters: torch gives the module a class of its own,
        # derived from its original one, whose weight is computed on access.
        kind = kind.__bases__[0]
    return (
        kind is nn.Conv2d
        and conv.groups == 1
        and conv.bias is None
        and conv.padding_mode == "zeros"
        and tuple(conv.dilation) == (1, 1)
        and not isinstance(conv.padding, str)
    )


def uses_gemm_weight_grad(
    conv: nn.Conv2d, inputs: torch.Tensor, weight: torch.Tensor | None = None
) -> bool:
    """Whether ``conv`` on ``inputs`` takes the single-product weight gradient:
    float32 training on the CPU, few output positions, many output channels.

    ``weight`` is the weight of this call, when the caller has it: a
    parametrized weight is computed anew on each ``conv.weight``.
    """
    weight = conv.weight if weight is None else weight
    if not (
        conv.out_channels >= MIN_OUT_CHANNELS
        and inputs.device.type == "cpu"
        and inputs.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.requires_grad
        and torch.is_grad_enabled()
        and not _autocast_on_cpu()
    ):
        return False
    positions = 1
    for size, kernel, stride, padding in zip(
        inputs.shape[2:], conv.kernel_size, conv.stride, conv.padding
    ):
        positions *= (size + 2 * padding - kernel) // stride + 1
    return positions <= MAX_OUTPUT_POSITIONS and switches().batched_weight_grads


class _GemmWeightGrad:
    """Mixed into a convolution's class, routes eligible calls through the
    single-product weight gradient; instances only ever get such a class for
    the duration of :func:`gemm_weight_grads`."""

    def _conv_forward(self, input, weight, bias):
        if bias is None and uses_gemm_weight_grad(self, input, weight):
            return _ConvGemmWeightGrad.apply(
                input, weight, tuple(self.stride), tuple(self.padding)
            )
        return super()._conv_forward(input, weight, bias)


class _GemmWeightGradConv2d(_GemmWeightGrad, nn.Conv2d):
    """``nn.Conv2d`` with the single-product weight gradient."""


def _switched_class(kind: type) -> type:
    if kind is nn.Conv2d:
        return _GemmWeightGradConv2d
    # A parametrized convolution's class is made for that one module.
    return type(f"GemmWeightGrad{kind.__name__}", (_GemmWeightGrad, kind), {})


@contextlib.contextmanager
def gemm_weight_grads(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Let ``model``'s plain convolutions take the single-product weight
    gradient while the context lasts.

    The modules are switched to a subclass of ``nn.Conv2d`` that adds no state
    (same parameters, same state dict, same optimizer references) and are
    switched back on exit, so the model the user keeps is plain torchvision.
    Each call still decides by device, dtype and map size, so the switch is
    harmless wherever the single product does not apply.
    """
    kinds = {m: type(m) for m in model.modules() if enabled and _has_plain_geometry(m)}
    for conv, kind in kinds.items():
        conv.__class__ = _switched_class(kind)
    try:
        yield
    finally:
        for conv, kind in kinds.items():
            conv.__class__ = kind
