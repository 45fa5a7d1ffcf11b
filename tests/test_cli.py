"""The ``resnetclf`` command: train and predict in-process, usage errors, --help."""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision

import resnetclf.cli as cli
from resnetclf import (
    ResNetFineTuneClassifier,
    load_model,
    stratified_subsample,
    train_val_test_split,
)
from resnetclf._cli_options import in_option_terms, parameter_docs
from resnetclf.cli import ESTIMATOR_OPTIONS, build_parser, main
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
    report = metrics["classification_report"]
    assert metrics["test_accuracy"] == pytest.approx(report["accuracy"])
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
    state_dict = safetensors.torch.load_file(out / "resnet-step.safetensors")
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
    assert main(argv) == 2
    assert "could not load the model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required: COMMAND"),
        (["fly"], "invalid choice: 'fly'"),
        (["train", "--epochs", "0"], "--epochs must be an int in the range [1, inf)"),
        (["train", "--max-iter", "0"], "--max-iter must be an int in the range"),
        (["train", "--arch", "vgg16"], "--arch must be one of resnet18, "),
        (["train", "--arch", "resnet18", "--weights", "best"], "--weights 'best'"),
        (["train", "--layer-lr-decay", "2"], "--layer-lr-decay must be a str among"),
        (["train", "--val-size", "0.5", "--test-size", "0.5"], "must leave images"),
        (["train", "--batch-size", "many"], "--batch-size must be an int"),
        (["train", "--scoring", "most_accurate"], "got 'most_accurate'"),
        (
            ["train", "--epochs", "2", "--freeze-epochs", "3"],
            "--freeze-epochs 3 is more than --epochs 2",
        ),
        (["train", "--label-smoothing", "1"], "--label-smoothing must be a float in"),
        (["train", "--ema-decay", "1.5"], "--ema-decay must be a float in"),
        (["train", "--lora-rank", "0"], "--lora-rank must be an int in the range"),
        (
            ["train", "--optimizer", "rmsprop"],
            "{'adam', 'adamw', 'sgd'}; got 'rmsprop'",
        ),
        (["train", "--patience", "0"], "--patience must be an int"),
        (["train", "--normalization", "0.5,0"], "--normalization needs finite"),
        (["train", "--torch-compile", "yes"], "--torch-compile must be"),
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
        (
            ["predict", "--model", "m", "--images", "x", "--device", "gpu"],
            "--device must be 'auto', 'cpu'",
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


# ------------------------------------------- options from the estimator itself
PARAMETERS = list(inspect.signature(ResNetFineTuneClassifier).parameters)


def _train_actions() -> dict[str, object]:
    """The train command's actions by destination."""
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    return {action.dest: action for action in commands.choices["train"]._actions}


@pytest.mark.parametrize("name", PARAMETERS)
def test_every_parameter_is_an_option_or_excluded_with_a_reason(name):
    actions = _train_actions()
    if name in ESTIMATOR_OPTIONS.excluded:
        assert ESTIMATOR_OPTIONS.excluded[name].strip()
        assert name not in actions
        return
    option = "--" + name.replace("_", "-")
    assert option in actions[name].option_strings
    if name in ESTIMATOR_OPTIONS.help_texts:  # written for a shell
        assert (
            actions[name].help.split()[:3]
            == (ESTIMATOR_OPTIONS.help_texts[name].split()[:3])
        )
        return
    # Help is the docstring's, so it says what the docstring says first.
    description = parameter_docs(ResNetFineTuneClassifier)[name][1]
    first_words = " ".join(description.replace("``", "").split()[:2])
    assert actions[name].help.startswith(first_words)


def test_no_exclusion_or_command_default_names_a_missing_parameter():
    assert set(ESTIMATOR_OPTIONS.excluded) <= set(PARAMETERS)
    assert set(ESTIMATOR_OPTIONS.command_defaults) <= set(PARAMETERS)
    assert set(ESTIMATOR_OPTIONS.help_texts) <= set(ESTIMATOR_OPTIONS.parameters)
    assert not set(ESTIMATOR_OPTIONS.excluded) & set(ESTIMATOR_OPTIONS.command_defaults)


@pytest.mark.parametrize("name", ESTIMATOR_OPTIONS.parameters)
def test_option_defaults_are_the_estimators(name):
    default = inspect.signature(ResNetFineTuneClassifier).parameters[name].default
    parsed = vars(build_parser().parse_args(["train"]))[name]
    if name in ESTIMATOR_OPTIONS.command_defaults:
        command_default, reason = ESTIMATOR_OPTIONS.command_defaults[name]
        assert parsed == command_default != default and reason.strip()
    else:
        assert parsed == default and type(parsed) is type(default)


def _as_text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


@pytest.mark.parametrize("name", ESTIMATOR_OPTIONS.parameters)
def test_each_default_can_be_typed_back(name):
    """Reading an option's default as text gives the default: every value
    the estimator starts from is one a command line can give."""
    action = _train_actions()[name]
    default = action.default
    if isinstance(action, argparse.BooleanOptionalAction):
        words = [f"--{'' if default else 'no-'}{name.replace('_', '-')}"]
    else:
        words = [action.option_strings[0], _as_text(default)]
    parsed = vars(build_parser().parse_args(["train", *words]))[name]
    assert parsed == default and type(parsed) is type(default)


def test_text_becomes_the_values_the_constraints_allow():
    args = build_parser().parse_args(
        ["train", "--weights", "none", "--ema-decay", "0.99", "--lora-rank",
         "none", "--layer-lr-decay", "0.5", "--normalization", "imagenet",
         "--torch-compile", "true", "--class-weight", "balanced",
         "--scoring", "none", "--epochs", "7", "--rotation", "15"]
    )  # fmt: skip
    params = ESTIMATOR_OPTIONS.params(args)
    assert params["weights"] is None and params["scoring"] is None
    assert params["ema_decay"] == 0.99 and params["lora_rank"] is None
    assert params["layer_lr_decay"] == 0.5 and params["torch_compile"] is True
    assert (params["normalization"], params["class_weight"]) == (
        "imagenet", "balanced"
    )  # fmt: skip
    assert (params["max_iter"], params["rotation_degrees"]) == (7, 15.0)
    assert type(params["max_iter"]) is int
    args = build_parser().parse_args(["train", "--normalization", "0.4,0.2"])
    assert ESTIMATOR_OPTIONS.params(args)["normalization"] == (0.4, 0.2)


def test_patience_turns_on_early_stopping():
    params = ESTIMATOR_OPTIONS.params(
        build_parser().parse_args(["train", "--patience", "3"])
    )
    assert params["early_stopping"] is True and params["n_iter_no_change"] == 3
    params = ESTIMATOR_OPTIONS.params(build_parser().parse_args(["train"]))
    assert params["early_stopping"] is False


@pytest.mark.parametrize("option", ["--rotation-degrees", "--rotation"])
def test_bad_value_exits_2_naming_the_option_before_any_work(
    option, tmp_path, monkeypatch, capsys
):
    """The estimator's own bound (at most 180 degrees), under the spelling
    typed, before any data is read or any training starts."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(ResNetFineTuneClassifier, "fit", refuse)
    monkeypatch.setattr(cli, "make_digit_sums", refuse)
    monkeypatch.setattr(cli, "load_merged", refuse)
    with pytest.raises(SystemExit) as stop:
        main(["train", *QUICK, option, "200", "--out", str(tmp_path / "run")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        f"error: {option} must be a float in the range [0.0, 180.0]; got 200.0" in err
    )
    assert not (tmp_path / "run").exists()


def test_a_lora_rank_too_large_for_the_network_exits_2_before_any_work(
    tmp_path, monkeypatch, capsys
):
    """The network's checks (needing no data for grayscale images) run with
    the other pre-data checks: one line, exit status 2, no data read."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(ResNetFineTuneClassifier, "fit", refuse)
    monkeypatch.setattr(cli, "make_digit_sums", refuse)
    monkeypatch.setattr(cli, "load_merged", refuse)
    argv = ["train", "--arch", "resnet18", "--weights", "none", "--lora-rank"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "100", "--epochs", "1", "--out", str(tmp_path / "run")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "error: --lora-rank 100 is larger than the convolution 'conv1'" in err
    assert "Pass --lora-rank <= 49" in err
    assert not (tmp_path / "run").exists()


def test_option_help_reads_for_a_shell():
    """No Python values or parameter names in the train options' help; what
    only Python can pass is said to be so."""
    text = " ".join(
        build_parser().parse_args(["train"]).command_parser.format_help().split()
    )
    for python in ("None", "True", "False", "dict", "callable", r"\w+_\w+="):
        assert not re.search(rf"\b{python}\b", text), python
    for name in ("layer_lr_decay", "freeze_epochs", "rotation_degrees"):
        assert name not in text
    assert "--weights none" in text and "none fine-tunes every weight" in text
    assert "from Python only" in text


def test_messages_in_option_terms():
    options = {"max_iter": "--epochs", "freeze_epochs": "--freeze-epochs",
               "arch": "--arch", "lr": "--lr"}  # fmt: skip
    sklearn_message = (
        "The 'max_iter' parameter of ResNetFineTuneClassifier must be an int "
        "in the range [1, inf). Got 0 instead."
    )
    assert in_option_terms(sklearn_message, options) == (
        "--epochs must be an int in the range [1, inf); got 0"
    )
    assert (
        in_option_terms(
            "freeze_epochs=3 is more than\n max_iter=2: the arch is fine", options
        )
        == "--freeze-epochs 3 is more than --epochs 2: the arch is fine"
    )
    # Plain words are names only where they start the message or take "=".
    assert in_option_terms("arch must be set; slr and lr_x stay", options) == (
        "--arch must be set; slr and lr_x stay"
    )
