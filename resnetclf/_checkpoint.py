"""State-dict files: atomic writes and safe reads, as safetensors or torch files.

A path ending in ``.safetensors`` is written with the ``safetensors`` package:
a JSON header and raw tensor bytes, no pickle, so reading it cannot run code on
any torch. Other paths (``.pth``, ``.pt``) get ``torch.save``'s layout, which
plain torchvision scripts load. Reading goes by the file's first bytes, not its
name: safetensors files through a reader that checks the header against the
file before anything is allocated, torch files through
``torch.load(weights_only=True)``, and only on a torch without that
unpickler's published flaws.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
import secrets
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import safetensors.torch
import torch

__all__ = [
    "SAFETENSORS_SUFFIX",
    "load_state_dict_file",
    "read_safetensors",
    "safetensors_bytes",
    "save_state_dict_atomic",
    "write_atomic",
]

SAFETENSORS_SUFFIX = ".safetensors"

# torch.load(weights_only=True) ran code (CVE-2025-32434, fixed in 2.6.0) and
# corrupted memory on crafted opcodes and storage sizes (CVE-2026-24747, fixed in
# 2.10.0). pyproject.toml asks for 2.10; this guards environments that ignore it.
PATCHED_TORCH = (2, 10)
UNPICKLER_CVES = "CVE-2025-32434 and CVE-2026-24747"

# safetensors' own bound on the header; a real one is a few kB per 100 tensors.
_MAX_HEADER_BYTES = 100_000_000
_SAFETENSORS_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
}
# A ResNet state dict holds floats and int64 counters (num_batches_tracked).
_STATE_DICT_DTYPES = frozenset(_SAFETENSORS_DTYPES.values())
_TENSOR_FIELDS = {"dtype", "shape", "data_offsets"}


# ------------------------------------------------------------------ writing
def save_state_dict_atomic(state_dict: Mapping[str, torch.Tensor], path) -> Path:
    """Write ``state_dict`` to ``path`` so that readers never see a partial file.

    A path ending in ``.safetensors`` gets the safetensors format (no pickle);
    any other path gets ``torch.save``'s, which plain torchvision loads. The
    write is atomic and durable, as :func:`write_atomic` says.
    """
    cpu_state = {key: value.detach().cpu() for key, value in state_dict.items()}
    if Path(path).suffix == SAFETENSORS_SUFFIX:
        return write_atomic(path, safetensors_bytes(cpu_state))
    return write_atomic(path, lambda file: torch.save(cpu_state, file))


def write_atomic(path, content: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``content`` (bytes, or a function writing to a binary file) to
    ``path`` so that readers never see a partial file.

    The bytes go to a new, uniquely named temporary file in the destination
    folder, which is flushed to disk and then renamed over ``path``; the folder
    is flushed too, so the rename itself survives a power loss. A rename within
    one file system is atomic, so a process killed mid-save leaves the previous
    file intact, and parallel writers to the same path never interleave their
    bytes. The file gets the mode a plain ``open()`` would give it (0666 less
    the umask), without reading or changing the process-wide umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path, fd = _create_temporary_file(path)
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            if isinstance(content, bytes):
                tmp_file.write(content)
            else:
                content(tmp_file)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        # Whatever went wrong (disk full, KeyboardInterrupt), the old file stays.
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def safetensors_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """``state_dict`` as the bytes of a safetensors file."""
    # safetensors stores each tensor's bytes in row-major order.
    tensors = {key: value.contiguous() for key, value in state_dict.items()}
    return safetensors.torch.save(tensors, metadata={"format": "pt"})


def _create_temporary_file(path: Path) -> tuple[Path, int]:
    """A new file next to ``path``, open for writing, that no one else has.

    ``tempfile.mkstemp`` would make it private (0600); created here with 0666,
    the kernel applies the umask as it does for ``open()``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return tmp_path, os.open(tmp_path, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name next to '{path}'")


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries, so that a rename into it is on disk.

    POSIX only: Windows cannot open a folder as a file, and NTFS journals the
    rename itself. File systems that cannot sync a folder (EINVAL) are skipped.
    """
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


# ------------------------------------------------------------------ reading
def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file or a torch file.

    The file's first bytes decide, whatever its name: a safetensors file is
    read by :func:`read_safetensors`; anything else with
    ``torch.load(..., weights_only=True)``, which is refused on a torch older
    than 2.10 (its weights-only unpickler could run code or corrupt memory:
    CVE-2025-32434, CVE-2026-24747).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated or in neither format, if it holds anything
        but tensors and plain containers (a pickle that would run code is
        refused without running it), if it is not a mapping of names to
        floating-point (or int64) tensors, or if it is a torch file and torch
        is older than 2.10.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: '{path}'")
    with open(path, "rb") as file:
        head = file.read(9)
        if path.suffix == SAFETENSORS_SUFFIX or _looks_like_safetensors(head):
            if len(head) >= 8:  # a lying length is refused before reading on
                size = os.fstat(file.fileno()).st_size
                _check_header_length(struct.unpack("<Q", head[:8])[0], size, path)
            file.seek(0)
            return read_safetensors(file.read(), path)
    return _checked_state_dict(_torch_load(path), path)


def _looks_like_safetensors(head: bytes) -> bool:
    # An 8-byte header length, then the header's opening brace. torch files
    # start with a zip ("PK") or a pickle (0x80) signature.
    return len(head) == 9 and head[8:9] == b"{"


def read_safetensors(data: bytes, path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file's bytes, checked before any allocation.

    The header must be a JSON object no longer than the file, each entry a
    known dtype, a shape of ints and offsets whose span is exactly the bytes
    that dtype and shape need, the spans tiling the data with no gap or
    overlap. Only then are the tensors made, each a copy of its own bytes, so a
    header that lies about sizes costs nothing.

    Raises
    ------
    ValueError
        Naming ``path`` and what is wrong, for a file that is not such a file.
    """
    if len(data) < 8:
        raise ValueError(
            f"'{path}' is not a safetensors file: {len(data)} bytes, fewer than "
            "the 8 of its header length (truncated?)"
        )
    (header_length,) = struct.unpack("<Q", data[:8])
    _check_header_length(header_length, len(data), path)
    header = _parse_header(data[8 : 8 + header_length], path)
    _check_tensor_entries(header, len(data) - 8 - header_length, path)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors' own checks, as a last line
        raise ValueError(
            f"'{path}' is not a valid safetensors file ({_first_line(exc)})"
        ) from exc
    return _checked_state_dict(tensors, path)


def _check_header_length(header_length: int, file_size: int, path) -> None:
    if header_length > min(file_size - 8, _MAX_HEADER_BYTES):
        raise ValueError(
            f"'{path}' is not a valid safetensors file: its header claims "
            f"{header_length} bytes but {file_size - 8} follow (truncated, or "
            "not a safetensors file)"
        )


def _parse_header(header_bytes: bytes, path) -> dict:
    try:
        header = json.loads(
            header_bytes.decode("utf-8"), parse_constant=_refuse_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(
            f"'{path}' is not a valid safetensors file: its header is not JSON "
            f"({type(exc).__name__}: {_first_line(exc)[:200]})"
        ) from exc
    if not isinstance(header, dict):
        raise ValueError(
            f"'{path}' is not a valid safetensors file: its header is a JSON "
            f"{type(header).__name__}, not an object"
        )
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise ValueError(
            f"'{path}' is not a valid safetensors file: __metadata__ must map "
            "strings to strings"
        )
    return header


def _check_tensor_entries(header: dict, data_length: int, path) -> None:
    spans = []
    for name, entry in header.items():
        where = f"'{path}': tensor {name[:80]!r}"
        if not isinstance(entry, dict) or set(entry) != _TENSOR_FIELDS:
            raise ValueError(
                f"{where} must be described by exactly dtype, shape and data_offsets"
            )
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(
                f"{where} has dtype {str(dtype)[:20]!r}; a ResNet state dict "
                f"holds {', '.join(_SAFETENSORS_DTYPES)}"
            )
        if not (isinstance(shape, list) and all(_is_count(s) for s in shape)):
            raise ValueError(f"{where} has a shape that is not a list of ints >= 0")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1] <= data_length
        ):
            raise ValueError(
                f"{where} has data_offsets outside the file's {data_length} "
                "bytes of data"
            )
        needed = math.prod(shape) * _SAFETENSORS_DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != needed:
            raise ValueError(
                f"{where} declares shape {shape[:8]} of {dtype} ({needed} bytes) "
                f"but holds {offsets[1] - offsets[0]} bytes"
            )
        spans.append(offsets)
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise ValueError(
                f"'{path}' is not a valid safetensors file: its tensors' bytes "
                "overlap or leave gaps"
            )
        end = stop
    if end != data_length:
        raise ValueError(
            f"'{path}' is not a valid safetensors file: {data_length - end} "
            "bytes after the last tensor"
        )


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _torch_load(path: Path):
    if not unpickler_is_patched():
        raise ValueError(
            f"refusing to read '{path}' with torch {torch.__version__}: torch "
            f"files are read only on torch >= 2.10, whose weights-only unpickler "
            f"has the fixes for {UNPICKLER_CVES}; use .safetensors, or upgrade "
            "torch"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() and "global" in str(exc).lower():
            raise ValueError(
                f"refusing to load '{path}': it holds objects other than tensors "
                "and plain containers, which could run code when unpickled "
                f"(torch.load(weights_only=True) said: {_first_line(exc)})"
            ) from exc
        raise ValueError(_unreadable(path, exc)) from exc
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as exc:
        raise ValueError(_unreadable(path, exc)) from exc


def unpickler_is_patched() -> bool:
    """Whether this torch's weights-only unpickler has both CVE fixes (>= 2.10)."""
    match = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    return match is not None and tuple(map(int, match.groups())) >= PATCHED_TORCH


def _checked_state_dict(loaded, path: Path) -> dict[str, torch.Tensor]:
    # Accept checkpoints that wrap the weights, as many training scripts do.
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor)
        for key, value in loaded.items()
    ):
        raise ValueError(
            f"'{path}' does not hold a state dict (a mapping of parameter names "
            f"to tensors); found {type(loaded).__name__}"
        )
    odd = [k for k, value in loaded.items() if value.dtype not in _STATE_DICT_DTYPES]
    if odd:
        raise ValueError(
            f"'{path}' holds {len(odd)} tensor(s) of a dtype no ResNet state dict "
            f"has (floats, int64 counters): {odd[0]!r} is {loaded[odd[0]].dtype}"
        )
    return dict(loaded)


def _unreadable(path: Path, exc: BaseException) -> str:
    return (
        f"could not read '{path}' as a torch state dict; the file may be "
        f"truncated or in another format ({type(exc).__name__}: {_first_line(exc)})"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
