"""Checkpoint files: atomic writes and safe reads."""

from __future__ import annotations

import errno
import os
import pickle
import secrets
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["load_state_dict_file", "save_state_dict_atomic"]


def save_state_dict_atomic(state_dict: Mapping[str, torch.Tensor], path) -> Path:
    """Write ``state_dict`` to ``path`` so that readers never see a partial file.

    The tensors go to a new, uniquely named temporary file in the destination
    folder, which is flushed to disk and then renamed over ``path``; the folder
    is flushed too, so the rename itself survives a power loss. A rename within
    one file system is atomic, so a process killed mid-save leaves the previous
    file intact, and parallel writers to the same path never interleave their
    bytes. The file gets the mode a plain ``open()`` would give it (0666 less
    the umask), without reading or changing the process-wide umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu_state = {key: value.detach().cpu() for key, value in state_dict.items()}
    tmp_path, fd = _create_temporary_file(path)
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            torch.save(cpu_state, tmp_file)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        # Whatever went wrong (disk full, KeyboardInterrupt), the old file stays.
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


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


def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(..., weights_only=True)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated or not a torch file, if it holds anything but
        tensors and plain containers (a pickle that would run code is refused
        without running it), or if it is not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: '{path}'")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
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
    return dict(loaded)


def _unreadable(path: Path, exc: BaseException) -> str:
    return (
        f"could not read '{path}' as a torch state dict; the file may be "
        f"truncated or in another format ({type(exc).__name__}: {_first_line(exc)})"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
