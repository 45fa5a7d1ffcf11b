"""Smoke tests of the scripts in ``examples/``, on tiny offline configurations.

Each example's ``main`` runs in this process (so that monkeypatches apply) on a
few dozen small stand-in images: ResNet18 from random weights, one epoch of a
single batch, one torch thread. On a CPU an optimizer step over ResNet18's 11M
parameters costs about the same for any small image, so the number of steps is
what these tests keep down; one thread avoids the threads' synchronisation,
which costs more than it gains on such small tensors (a lot more on a busy
machine). The network is never reached: torchvision's downloader is replaced
by one that fails, for every test.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.error
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torchvision

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (examples is not a package)."""
    module_name = f"_resnetclf_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses look their module up there.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def merged_dataset():
    return _load_example("merged_dataset")


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """The tests pass ``--threads 1``; give later tests torch's setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Make every weights download fail at once, as on an offline machine."""
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return calls


TINY_MERGED = [
    "--max-samples",
    "80",
    "--arch",
    "resnet18",
    "--weights",
    "none",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--device",
    "cpu",
    "--threads",
    "1",
]
#: Small stand-in images, for the runs without --data-dir.
TINY_STAND_IN = ["--stand-in-samples", "160", "--stand-in-shape", "16", "64"]


def test_merged_dataset_writes_all_outputs(merged_dataset, tmp_path, capsys):
    from resnetclf.datasets import make_digit_sums, write_merged

    X, y = make_digit_sums(100, image_shape=(16, 64), random_state=1)
    write_merged(tmp_path / "data", X, y, n_subsets=3)
    out = tmp_path / "run"
    argv = [*TINY_MERGED, "--data-dir", str(tmp_path / "data"), "--out", str(out)]

    assert merged_dataset.main(argv) == 0

    printed = capsys.readouterr().out
    assert "STAND-IN" not in printed
    assert "test accuracy" in printed
    for name in ("loss.png", "accuracy.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "val_accuracy",
        "test_accuracy",
        "best_epoch",
        "n_iter",
        "arch",
        "weights",
        "n_train",
        "n_val",
        "n_test",
        "seconds",
        "stand_in",
        "history",
    ):
        assert key in metrics, key
    assert metrics["stand_in"] is False
    assert metrics["arch"] == "resnet18" and metrics["weights"] == "none"
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 80
    assert metrics["n_val"] > 0 and metrics["n_test"] > 0
    assert metrics["n_iter"] == len(metrics["history"]) == 1
    assert 0.0 <= metrics["test_accuracy"] <= 1.0

    state_dict = torch.load(out / "resnet-step.pth", weights_only=True)
    model = torchvision.models.resnet18(num_classes=metrics["n_classes"])
    model.load_state_dict(state_dict)


def test_merged_dataset_without_weights_exits_2(
    merged_dataset, tmp_path, monkeypatch, capsys, no_network
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert Path(torch.hub.get_dir()).is_relative_to(tmp_path)
    out = tmp_path / "run"
    argv = [a if a != "none" else "DEFAULT" for a in TINY_MERGED]

    assert merged_dataset.main([*argv, *TINY_STAND_IN, "--out", str(out)]) == 2

    captured = capsys.readouterr()
    assert "STAND-IN" in captured.out  # no --data-dir: says it makes stand-in data
    assert "--weights none" in captured.err
    assert no_network, "the download was not attempted"
    assert "epoch 1" not in captured.out  # nothing was trained
    assert not (out / "resnet-step.pth").exists()


def test_merged_dataset_rejects_unknown_weights(merged_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc_info:
        merged_dataset.main(["--weights", "IMAGENET9K", "--out", str(tmp_path)])
    assert exc_info.value.code == 2
    assert "IMAGENET9K" in capsys.readouterr().err


def _check_split(split, y, n_samples):
    parts = [split.train, split.val, split.test]
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == n_samples
    trained = set(y[split.train])
    assert set(y[split.val]) <= trained and set(y[split.test]) <= trained


def test_split_keeps_rare_classes_in_training(merged_dataset):
    # Digit sums as in the merged dataset: 0 and 36 once, 1 and 35 twice.
    rng = np.random.RandomState(0)
    y = np.concatenate([[0, 36, 1, 1, 35, 35], rng.randint(2, 35, size=994)])
    split = merged_dataset.train_val_test_split(y, seed=0)
    _check_split(split, y, len(y))
    assert len(split.test) == len(split.val) == 100
    assert split.test_info["stratified"] and split.val_info["stratified"]
    assert {0, 36} <= set(split.test_info["rare_classes"])
    assert 0 in y[split.train] and 36 in y[split.train]


def test_split_of_too_few_samples_to_stratify(merged_dataset):
    y = np.random.RandomState(0).randint(0, 37, size=40)
    split = merged_dataset.train_val_test_split(y, seed=0)
    _check_split(split, y, len(y))
    assert not split.test_info["stratified"]


def test_subsample_is_seeded_and_stratified(merged_dataset):
    y = np.concatenate([[0], np.repeat(np.arange(1, 11), 50)])
    first, info = merged_dataset.subsample(y, 100, seed=3)
    second, _ = merged_dataset.subsample(y, 100, seed=3)
    assert len(first) == 100 and np.array_equal(first, second)
    assert info["stratified"] and info["rare_classes"] == [0]
    assert np.array_equal(np.bincount(y[first])[1:], np.full(10, 10))


# A few dozen images leave some digit sums with a single member.
@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")
@pytest.mark.filterwarnings("ignore:The number of unique classes:UserWarning")
def test_cross_validation_prints_scores(tmp_path, capsys):
    module = _load_example("cross_validation")
    argv = ["--n-samples", "48", "--cv", "2", "--epochs", "1", "--batch-size", "64"]
    assert module.main([*argv, "--device", "cpu", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "fold 1:" in printed and "fold 2:" in printed and "mean" in printed


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")
@pytest.mark.filterwarnings("ignore:The number of unique classes:UserWarning")
def test_grid_search_prints_best_params(tmp_path, capsys):
    module = _load_example("grid_search")
    argv = ["--n-samples", "40", "--cv", "2", "--epochs", "1", "--batch-size", "64"]
    argv += ["--lr", "1e-3", "--layer-lr-decay", "0.5", "1.0"]
    argv += ["--device", "cpu", "--threads", "1"]
    assert module.main(argv) == 0
    printed = capsys.readouterr().out
    assert "best_params_" in printed
    assert printed.count("+/-") == 2  # one table row per candidate
