"""State-dict files: atomic writes and safe reads, as safetensors or torch files.

A ``.safetensors`` path gets that format (a JSON header and raw bytes: reading
it runs no code); other paths get ``torch.save``'s, which plain torchvision
scripts load. Reading goes by the file's first bytes: safetensors through the
``safetensors`` package, which checks the header before allocating anything;
torch files through ``torch.load(weights_only=True)`` on a patched torch only.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import secrets
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

# A ResNet state dict holds floats and int64 counters (num_batches_tracked).
_STATE_DICT_DTYPES = frozenset(
    {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64}
)


# ------------------------------------------------------------------ writing
def save_state_dict_atomic(state_dict: Mapping[str, torch.Tensor], path) -> Path:
    """Write ``state_dict`` to ``path`` in the format its suffix names,
    atomically and durably (see :func:`write_atomic`)."""
    cpu_state = {key: value.detach().cpu() for key, value in state_dict.items()}
    if Path(path).suffix == SAFETENSORS_SUFFIX:
        return write_atomic(path, safetensors_bytes(cpu_state))
    return write_atomic(path, lambda file: torch.save(cpu_state, file))


def write_atomic(path, content: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``content`` (bytes, or a function writing to a binary file) to
    ``path`` so that readers never see a partial file.

    The bytes go to a new temporary file next to ``path``, flushed to disk,
    then renamed over it (atomic: a kill mid-save leaves the previous file,
    parallel writers never interleave), and the folder is flushed so that the
    rename survives a power loss. The mode is what ``open()`` would give.
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


def safetensors_bytes(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """``state_dict`` as a safetensors file's bytes, ``metadata`` (strings to
    strings) in its header; each tensor's bytes row-major."""
    tensors = {key: value.contiguous() for key, value in state_dict.items()}
    return safetensors.torch.save(
        tensors, metadata={"format": "pt", **(metadata or {})}
    )


def _create_temporary_file(path: Path) -> tuple[Path, int]:
    """A new file next to ``path``, open for writing, that no one else has:
    0666 (not ``mkstemp``'s 0600), which the kernel masks as for ``open()``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return tmp_path, os.open(tmp_path, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name next to '{path}'")


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries, so that a rename into it is on disk (POSIX:
    NTFS journals renames; file systems that cannot sync a folder skip it)."""
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
    """A state dict from a safetensors or torch file, told by its first bytes.

    FileNotFoundError if ``path`` does not exist; ValueError naming it for a
    file in neither format or truncated, a pickle of anything but tensors and
    plain containers (refused unrun), or a torch file on a torch before 2.10.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: '{path}'")
    with open(path, "rb") as file:
        # An 8-byte header length, then the header's opening brace; torch
        # files start with a zip ("PK") or a pickle (0x80) signature.
        head = file.read(9)
        if path.suffix == SAFETENSORS_SUFFIX or head[8:9] == b"{":
            return read_safetensors(head + file.read(), path)[0]
    return _checked_state_dict(_torch_load(path), path)


def read_safetensors(data: bytes, path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the metadata of a safetensors file's bytes; a
    ValueError naming ``path`` for other bytes.

    ``safetensors`` checks the header before it allocates anything (length,
    strict JSON of its schema, metadata of strings, offsets that tile the
    data); the metadata is read only from a header that passed.
    """
    try:
        tensors = safetensors.torch.load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    except Exception as exc:  # safetensors raises its own error class
        raise ValueError(
            f"'{path}' is not a valid safetensors file ({_first_line(exc)[:200]})"
        ) from exc
    return _checked_state_dict(tensors, path), header.get("__metadata__") or {}


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
