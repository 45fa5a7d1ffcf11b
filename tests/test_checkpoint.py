"""Checkpoint files: atomic writes, safe reads, in safetensors or torch's format."""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import pickle
import signal
import stat
import time

import pytest
import safetensors.torch
import torch

from resnetclf import _checkpoint
from resnetclf._checkpoint import load_state_dict_file, save_state_dict_atomic

SUFFIXES = pytest.mark.parametrize("suffix", [".pth", ".safetensors"])


def _state(value: float, size: int = 1000) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((size,), value), "bias": torch.zeros(3)}


@SUFFIXES
def test_round_trip(tmp_path, suffix):
    state = {
        **_state(1.5),
        "half": torch.randn(2, 3).half(),
        "counter": torch.tensor(7),  # int64, as num_batches_tracked
        "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
    }
    path = save_state_dict_atomic(state, tmp_path / "sub" / f"best{suffix}")
    loaded = load_state_dict_file(path)
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key
    assert [p.name for p in path.parent.iterdir()] == [f"best{suffix}"]  # no temp


def test_safetensors_checkpoint_is_a_plain_safetensors_file(tmp_path):
    path = save_state_dict_atomic(_state(2.5), tmp_path / "best.safetensors")
    # Other tools read it with safetensors alone; it holds no pickle.
    loaded = safetensors.torch.load_file(path)
    assert torch.equal(loaded["weight"], _state(2.5)["weight"])
    # A JSON header and raw bytes: neither a zip archive nor a pickle.
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    assert set(header) == {"__metadata__", "weight", "bias"}
    assert header["weight"] == {
        "dtype": "F32",
        "shape": [1000],
        "data_offsets": header["weight"]["data_offsets"],
    }
    assert len(data) == 8 + header_length + 1003 * 4


def test_the_format_goes_by_the_bytes_not_the_name(tmp_path):
    safetensors_named_pth = tmp_path / "weights.pth"
    safetensors_named_pth.write_bytes(
        (save_state_dict_atomic(_state(3.0), tmp_path / "a.safetensors")).read_bytes()
    )
    assert torch.equal(
        load_state_dict_file(safetensors_named_pth)["bias"], _state(0)["bias"]
    )
    torch_named_safetensors = tmp_path / "torch.safetensors"
    torch.save(_state(3.0), torch_named_safetensors)
    with pytest.raises(
        ValueError, match="torch.safetensors' is not a valid safetensors"
    ):
        load_state_dict_file(torch_named_safetensors)


def test_torch_files_are_refused_on_an_unpatched_torch(tmp_path, monkeypatch):
    pth = save_state_dict_atomic(_state(1.0), tmp_path / "best.pth")
    safe = save_state_dict_atomic(_state(1.0), tmp_path / "best.safetensors")
    for version in ("2.9.1", "2.5.1+cu124", "2.10.0", "2.14.1+cu130", "3.0"):
        monkeypatch.setattr(torch, "__version__", version)
        assert _checkpoint.unpickler_is_patched() == (
            version not in ("2.9.1", "2.5.1+cu124")
        )
    monkeypatch.setattr(torch, "__version__", "2.9.1")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must not run on an unpatched torch")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ValueError) as error:
        load_state_dict_file(pth)
    message = str(error.value)
    assert "CVE-2025-32434" in message and "CVE-2026-24747" in message
    assert "use .safetensors" in message and "best.pth" in message
    assert "\n" not in message
    # safetensors files need no unpickler at all.
    assert torch.equal(load_state_dict_file(safe)["weight"], _state(1.0)["weight"])


@SUFFIXES
def test_tensors_no_resnet_holds_are_refused(tmp_path, suffix):
    path = save_state_dict_atomic(
        {"weight": torch.zeros(2), "mask": torch.zeros(2, dtype=torch.bool)},
        tmp_path / f"odd{suffix}",
    )
    with pytest.raises(ValueError, match=r"'mask' is torch.bool|dtype 'BOOL'"):
        load_state_dict_file(path)


@SUFFIXES
def test_failed_write_keeps_previous_file(tmp_path, monkeypatch, suffix):
    path = save_state_dict_atomic(_state(1.0), tmp_path / f"best{suffix}")

    def failing_fsync(fd):
        raise OSError("disk full (test)")  # after the bytes were written

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict_atomic(_state(2.0), path)
    monkeypatch.undo()
    assert torch.equal(load_state_dict_file(path)["weight"], _state(1.0)["weight"])
    assert [p.name for p in tmp_path.iterdir()] == [f"best{suffix}"]


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = save_state_dict_atomic(_state(1.0), tmp_path / "best.pth")

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full (test)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict_atomic(_state(2.0), path)
    assert torch.equal(load_state_dict_file(path)["weight"], _state(1.0)["weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]


def _save_forever(path: str, saves_started) -> None:
    value = 0.0
    while True:
        value += 1.0
        with saves_started.get_lock():
            saves_started.value += 1
        save_state_dict_atomic(_state(value, size=2_000_000), path)


def _save_and_stall_mid_write(path: str, stalled) -> None:
    """Save through a torch.save that writes half the file, then hangs."""
    real_save = torch.save

    def half_then_hang(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        # A path (an in-place writer) or the open temporary file.
        handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        handle.write(data[: len(data) // 2])
        handle.flush()
        stalled.set()
        time.sleep(600)

    torch.save = half_then_hang
    save_state_dict_atomic(_state(2.0), path)


needs_sigkill = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"
)


def _kill(child) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL  # killed, not finished


@needs_sigkill
def test_kill_in_the_middle_of_writing_keeps_the_previous_file(tmp_path):
    path = tmp_path / "best.pth"
    save_state_dict_atomic(_state(1.0), path)
    context = multiprocessing.get_context("spawn")
    stalled = context.Event()
    child = context.Process(target=_save_and_stall_mid_write, args=(str(path), stalled))
    child.start()
    try:
        # The child imports torch first (seconds); then it stops half-written.
        assert stalled.wait(timeout=300), "the child never reached the write"
    finally:
        _kill(child)
    loaded = load_state_dict_file(path)
    assert torch.equal(loaded["weight"], _state(1.0)["weight"])


@needs_sigkill
@SUFFIXES
def test_kill_during_repeated_saves_leaves_a_loadable_file(tmp_path, suffix):
    path = tmp_path / f"best{suffix}"
    save_state_dict_atomic(_state(0.0, size=2_000_000), path)
    context = multiprocessing.get_context("spawn")
    saves_started = context.Value("i", 0)
    child = context.Process(target=_save_forever, args=(str(path), saves_started))
    child.start()
    try:
        # Killed only once saves are under way: most of the loop is writing.
        deadline = time.monotonic() + 300
        while saves_started.value < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert saves_started.value >= 3, "the child never started saving"
    finally:
        _kill(child)
    loaded = load_state_dict_file(path)
    assert loaded["weight"].shape == (2_000_000,)
    assert torch.all(loaded["weight"] == loaded["weight"][0])
    assert loaded["weight"][0] >= 2  # a file the child wrote, not the first one


class _Marker:
    """Unpickling this would create a file: the payload weights_only must stop."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"weight": torch.zeros(2), "payload": _Marker(str(marker))}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(ValueError, match="evil.pkl"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_truncated_file_names_the_path(tmp_path):
    path = save_state_dict_atomic(_state(1.0), tmp_path / "best.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="best.pth"):
        load_state_dict_file(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_state_dict_file(tmp_path / "absent.pth")


def test_non_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_state_dict_file(path)


def test_wrapped_state_dict_is_unwrapped(tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": _state(3.0), "epoch": 4}, path)
    assert torch.equal(load_state_dict_file(path)["weight"], _state(3.0)["weight"])


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
@SUFFIXES
def test_checkpoint_mode_follows_umask_without_touching_it(
    tmp_path, monkeypatch, umask, mode, suffix
):
    previous = os.umask(umask)
    try:

        def no_umask(*args):
            raise AssertionError("os.umask changes the whole process's state")

        monkeypatch.setattr(os, "umask", no_umask)
        path = save_state_dict_atomic(_state(1.0), tmp_path / f"best{suffix}")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert os.stat(path).st_mode & 0o777 == mode


@pytest.mark.skipif(os.name != "posix", reason="folder fsync is POSIX")
@SUFFIXES
def test_file_then_folder_are_synced_around_the_rename(tmp_path, monkeypatch, suffix):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "file"
        events.append(("fsync", kind, info.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace",))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = save_state_dict_atomic(_state(1.0), tmp_path / "sub" / f"best{suffix}")
    monkeypatch.undo()
    assert [e[:2] for e in events] == [
        ("fsync", "file"),
        ("replace",),
        ("fsync", "folder"),
    ]
    assert events[0][2] == os.stat(path).st_ino  # the data, under its final name
    assert events[2][2] == os.stat(path.parent).st_ino  # the folder holding it


def test_folder_that_cannot_be_synced_is_skipped(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument (test)")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = save_state_dict_atomic(_state(1.0), tmp_path / "best.pth")
    assert torch.equal(load_state_dict_file(path)["weight"], _state(1.0)["weight"])
