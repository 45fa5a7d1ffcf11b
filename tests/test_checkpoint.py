"""Checkpoint files: atomic writes, safe reads."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
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


def _save_forever(path: str) -> None:
    value = 0.0
    while True:
        value += 1.0
        save_state_dict_atomic(_state(value, size=2_000_000), path)


def test_kill_during_repeated_saves_leaves_a_loadable_file(tmp_path):
    path = tmp_path / "best.pth"
    save_state_dict_atomic(_state(0.0, size=2_000_000), path)
    context = multiprocessing.get_context("spawn")
    for delay in (0.3, 0.55, 0.8):
        child = context.Process(target=_save_forever, args=(str(path),))
        child.start()
        time.sleep(delay)  # an 8 MB save is in flight most of the time
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        loaded = load_state_dict_file(path)
        assert loaded["weight"].shape == (2_000_000,)
        assert torch.all(loaded["weight"] == loaded["weight"][0])


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


def test_checkpoint_mode_follows_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = save_state_dict_atomic(_state(1.0), tmp_path / "best.pth")
    finally:
        os.umask(previous)
    assert os.stat(path).st_mode & 0o777 == 0o644
