"""Device and precision choices."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from resnetclf._switches import current as switches

__all__ = ["amp_dtype_for", "cudnn_autotuned", "resolve_device"]


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            "device must be 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'; "
            f"got {device!r}"
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} but CUDA is not available on this machine; "
                "use device='auto' or 'cpu'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible"
            )
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={device!r} but MPS is not available")
    elif resolved.type != "cpu":
        raise ValueError(
            "device must be 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'; "
            f"got {device!r}"
        )
    return resolved


def amp_dtype_for(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On CPUs, bf16 autocast is slower than fp32 on most chips without AMX.
    return None


@contextlib.contextmanager
def cudnn_autotuned(device: torch.device) -> Iterator[None]:
    """Let cuDNN time its convolution algorithms and keep the fastest per shape.

    Training and prediction see a handful of input shapes (the batch, the last
    batch), so the one-off timing pays for itself. The global flag is set back
    afterwards. Nothing changes on other devices, nor when the user asked for
    reproducibility (``torch.backends.cudnn.deterministic`` or
    ``torch.use_deterministic_algorithms``): timing can pick other algorithms
    from run to run.
    """
    if (
        device.type != "cuda"
        or not switches().cudnn_autotune
        or torch.backends.cudnn.deterministic
        or torch.are_deterministic_algorithms_enabled()
    ):
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
