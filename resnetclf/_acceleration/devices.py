"""Device and precision choices."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from resnetclf._switches import current as switches

__all__ = [
    "amp_dtype_for",
    "cpu_has_native_bf16",
    "cudnn_autotuned",
    "resolve_device",
]

# CPU features with bf16 arithmetic in hardware that oneDNN's kernels use:
# AVX512-BF16 (AMD since Zen 4, Intel since Cooper Lake) and AMX-BF16 (Intel
# since Sapphire Rapids). Without them oneDNN emulates bf16 with float32
# instructions and conversions, slower than float32 itself.
NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


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
    """The autocast dtype for ``precision`` on ``device``; None means fp32.

    ``"auto"`` is bf16 on CUDA devices that support it, else fp16; on the CPU,
    bf16 where :func:`cpu_has_native_bf16` says the processor computes it in
    hardware (and oneDNN is enabled), else fp32; fp32 on other devices.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.enabled and cpu_has_native_bf16():
        return torch.bfloat16
    return None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware, through oneDNN.

    True when torch's oneDNN (mkldnn) backend is built in and runs bf16
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``) and the CPU has one of
    :data:`NATIVE_BF16_FEATURES` (``torch.cpu.get_capabilities()``). oneDNN's
    own check also accepts plain AVX-512, where it emulates bf16 with
    conversions around float32 arithmetic (nothing to gain), hence the
    second condition (on a torch without
    ``get_capabilities``, its private ``torch.cpu._is_avx512_bf16_supported``
    and ``_is_amx_tile_supported``). Other architectures (ARM among them)
    answer False: their bf16 speed has not been measured. Any failure of
    the probe (an older torch without one of these functions) answers False,
    silently: float32 is always correct. Cached: the CPU does not change.
    """
    try:
        if not (
            torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        ):
            return False
        get_capabilities = getattr(torch.cpu, "get_capabilities", None)
        if get_capabilities is None:  # torch before get_capabilities
            return bool(
                torch.cpu._is_avx512_bf16_supported()
                or torch.cpu._is_amx_tile_supported()
            )
        capabilities = get_capabilities()
        return any(bool(capabilities.get(name)) for name in NATIVE_BF16_FEATURES)
    except (AttributeError, RuntimeError):
        return False


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
