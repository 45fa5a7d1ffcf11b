"""Checkpoint files: atomic writes, safe reads."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import pickle
import signal
import stat
import time

import pytest
import torch

from resnetclf._checkpoint import load_state_dict_file, save_state_dict_atomic


def _state(value: float, size: int = 1000) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((size,), value), "bias": torch.zeros(3)}


def test_round_trip(tmp_path):
    path = save_state_dict_atomic(_state(1.5), tmp_path / "sub" / "best.pth")
    loaded = load_state_dict_file(path)
    assert torch.equal(loaded["weight"], _state(1.5)["weight"])
    assert [p.name for p in path.parent.iterdir()] == ["best.pth"]  # no temp left


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
def test_kill_during_repeated_saves_leaves_a_loadable_file(tmp_path):
    path = tmp_path / "best.pth"
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
def test_checkpoint_mode_follows_umask_without_touching_it(
    tmp_path, monkeypatch, umask, mode
):
    previous = os.umask(umask)
    try:

        def no_umask(*args):
            raise AssertionError("os.umask changes the whole process's state")

        monkeypatch.setattr(os, "umask", no_umask)
        path = save_state_dict_atomic(_state(1.0), tmp_path / "best.pth")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert os.stat(path).st_mode & 0o777 == mode


@pytest.mark.skipif(os.name != "posix", reason="folder fsync is POSIX")
def test_file_then_folder_are_synced_around_the_rename(tmp_path, monkeypatch):
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
    path = save_state_dict_atomic(_state(1.0), tmp_path / "sub" / "best.pth")
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
