"""Checkpoint files: atomic writes and safe reads."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["load_state_dict_file", "save_state_dict_atomic"]


def save_state_dict_atomic(state_dict: Mapping[str, torch.Tensor], path) -> Path:
    """Write ``state_dict`` to ``path`` so that readers never see a partial file.

    The tensors go to a uniquely named temporary file in the destination folder,
    which is flushed to disk and then renamed over ``path``. A rename within one
    file system is atomic, so a process killed mid-save leaves the previous file
    intact, and parallel writers to the same path never interleave their bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu_state = {key: value.detach().cpu() for key, value in state_dict.items()}
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        # mkstemp creates the file private (0600); give it the mode a plain
        # open() would, so the checkpoint is as readable as torch.save's.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as tmp_file:
            torch.save(cpu_state, tmp_file)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Whatever went wrong (disk full, KeyboardInterrupt), the old file stays.
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


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
