"""The ``resnetclf`` command: train and predict in-process, usage errors, --help."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from resnetclf import load_model, stratified_subsample, train_val_test_split
from resnetclf.cli import main
from resnetclf.datasets import make_digit_sums, write_merged

# Small enough to train in seconds: 120 stand-in images of 20x84, one epoch.
QUICK = [
    "--arch", "resnet18", "--weights", "none", "--epochs", "1",
    "--stand-in-samples", "300", "--stand-in-shape", "20", "84",
    "--max-samples", "120", "--batch-size", "16", "--seed", "3",
    "--verbose", "0", "--device", "cpu",
]  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    return main(["train", *QUICK, "--out", str(out)]), out


def _quick_test_set():
    """The test images of the QUICK run, cut as the command cuts them."""
    X, y = make_digit_sums(300, image_shape=(20, 84), random_state=3)
    chosen = stratified_subsample(y, 120, random_state=3)
    X, y = X[chosen], y[chosen]
    split = train_val_test_split(y, random_state=3)
    return X[split.test], y[split.test], split


def test_train_writes_every_output(trained):
    status, out = trained
    assert status == 0
    for name in ("loss.png", "accuracy.png", "confusion_matrix.png", "mistakes.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stand_in"] is True and metrics["data_dir"] is None
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 120
    assert (metrics["n_val"], metrics["n_test"]) == (12, 12)
    assert metrics["best_epoch"] == 1 and len(metrics["history"]) == 1
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    report = metrics["classification_report"]
    assert len([k for k in report if k.isdigit()]) == metrics["n_classes"]
    assert {"precision", "recall", "f1-score", "support"} <= set(report["macro avg"])


def test_train_checkpoint_and_model_agree_with_the_metrics(trained):
    _, out = trained
    metrics = json.loads((out / "metrics.json").read_text())
    model = load_model(out / "model")
    X_test, y_test, split = _quick_test_set()
    assert metrics["n_test"] == len(split.test)
    accuracy = float(np.mean(model.predict(X_test) == y_test))
    assert accuracy == pytest.approx(metrics["test_accuracy"])
    assert model.best_score_ == pytest.approx(metrics["val_accuracy"])
    state_dict = torch.load(out / "resnet-step.pth", weights_only=True)
    net = torchvision.models.resnet18(num_classes=len(model.classes_))
    net.load_state_dict(state_dict)


def test_train_says_when_it_uses_stand_in_data(tmp_path, capsys):
    # Too few images to split: the command stops before training, after the note.
    status = main(["train", *QUICK, "--stand-in-samples", "6", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert "STAND-IN" in captured.out
    assert status == 1
    assert "too few" in captured.err


def test_train_reports_unreadable_data(tmp_path, capsys):
    status = main(["train", *QUICK, "--data-dir", str(tmp_path / "nowhere")])
    assert status == 1
    assert "could not load the data" in capsys.readouterr().err


def test_unavailable_weights_exit_2_with_a_hint(tmp_path, monkeypatch, capsys):
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise OSError("no network in this test")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    argv = ["train", *QUICK, "--weights", "DEFAULT", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert calls, "the weights were never asked for"
    err = capsys.readouterr().err
    assert "--weights none" in err and "could not download" in err
    assert not (tmp_path / "o" / "model").exists()


def test_predict_from_npy_files_with_labels(trained, tmp_path, capsys):
    _, out = trained
    X_test, y_test, _ = _quick_test_set()
    np.save(tmp_path / "X.npy", X_test)
    np.save(tmp_path / "y.npy", y_test)
    predictions = tmp_path / "pred.csv"
    argv = ["predict", "--model", str(out / "model"), "--images",
            str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy"),
            "--out", str(predictions), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    expected = load_model(out / "model").predict(X_test)
    with open(predictions, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["predicted"]) for r in rows] == expected.tolist()
    assert [int(r["true"]) for r in rows] == y_test.tolist()
    metrics = json.loads((tmp_path / "pred.metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(np.mean(expected == y_test))
    assert f"accuracy: {metrics['accuracy']:.4f}" in capsys.readouterr().out


def test_predict_from_a_merged_folder_to_npy(trained, tmp_path):
    _, out = trained
    X, y = make_digit_sums(20, image_shape=(20, 84), random_state=9)
    write_merged(tmp_path / "merged", X, y)
    predictions = tmp_path / "pred.npy"
    argv = ["predict", "--model", str(out / "model"), "--data-dir",
            str(tmp_path / "merged"), "--out", str(predictions),
            "--batch-size", "7"]  # fmt: skip
    assert main(argv) == 0
    expected = load_model(out / "model").predict(X)
    assert np.array_equal(np.load(predictions), expected)
    assert (tmp_path / "pred.metrics.json").is_file()


def test_predict_reports_a_model_it_cannot_load(tmp_path, capsys):
    np.save(tmp_path / "X.npy", np.zeros((2, 20, 84), np.uint8))
    argv = ["predict", "--model", str(tmp_path), "--images", str(tmp_path / "X.npy")]
    assert main(argv) == 1
    assert "could not load the model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required: COMMAND"),
        (["fly"], "invalid choice: 'fly'"),
        (["train", "--epochs", "0"], "--epochs: must be an integer >= 1"),
        (["train", "--arch", "vgg16"], "--arch: invalid choice: 'vgg16'"),
        (["train", "--arch", "resnet18", "--weights", "best"], "--weights 'best'"),
        (["train", "--layer-lr-decay", "2"], "--layer-lr-decay must be in [0, 1]"),
        (["train", "--val-size", "0.5", "--test-size", "0.5"], "must leave images"),
        (["train", "--batch-size", "many"], "--batch-size: invalid"),
        (["train", "--scoring", "most_accurate"], "--scoring 'most_accurate'"),
        (["train", "--epochs", "2", "--freeze-epochs", "3"], "--freeze-epochs 3"),
        (["train", "--label-smoothing", "1"], "--label-smoothing: must be in"),
        (["train", "--ema-decay", "1.5"], "--ema-decay: must be in"),
        (["train", "--lora-rank", "0"], "--lora-rank: must be an integer >= 1"),
        (["predict", "--model", "m"], "one of the arguments --data-dir --images"),
        (
            ["predict", "--model", "m", "--data-dir", "d", "--images", "x"],
            "not allowed",
        ),
        (["predict", "--model", "m", "--data-dir", "d", "--labels", "y"], "--labels"),
        (
            ["predict", "--model", "m", "--images", "x", "--out", "p.txt"],
            ".csv or .npy",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err
    assert message in err


def test_accuracy_options_reach_the_estimator(tmp_path, monkeypatch):
    import resnetclf.cli as cli

    seen = {}
    build = cli._classifier

    def spy(args, checkpoint):
        clf = build(args, checkpoint)
        seen.update(clf.get_params())
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_classifier", spy)
    argv = [
        "train", *QUICK, "--out", str(tmp_path / "run"),
        "--class-weight", "balanced", "--scoring", "balanced_accuracy",
        "--freeze-epochs", "1", "--label-smoothing", "0.1",
        "--ema-decay", "0.99", "--lora-rank", "4",
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        main(argv)
    assert seen["class_weight"] == "balanced"
    assert seen["scoring"] == "balanced_accuracy"
    assert (seen["freeze_epochs"], seen["label_smoothing"]) == (1, 0.1)
    assert (seen["ema_decay"], seen["lora_rank"]) == (0.99, 4)


def test_help_from_python_m_and_the_console_script():
    runs = [[sys.executable, "-m", "resnetclf", "train", "--help"]]
    script = shutil.which("resnetclf")
    if script is not None:
        runs.append([script, "predict", "--help"])
    for command in runs:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: resnetclf {command[-2]}")
        assert "(default: " in done.stdout and "examples:" in done.stdout
