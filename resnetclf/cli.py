"""The ``resnetclf`` command: train on the merged digit-sum dataset, predict.

``resnetclf train`` runs the report's whole procedure (load or make data,
80/10/10 split, fine-tuning with the best epoch kept, figures, metrics, the
saved model); ``resnetclf predict`` applies a saved model to images;
``resnetclf export`` writes a saved model as one ONNX file. Run
``resnetclf train --help`` or ``resnetclf predict --help`` for the options;
``python -m resnetclf`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import classification_report

from resnetclf import (
    DigitSumHead,
    ResNetFineTuneClassifier,
    WeightsUnavailableError,
    __version__,
    load_model,
    save_model,
    stratified_subsample,
    train_val_test_split,
)
from resnetclf._acceleration.devices import resolve_device
from resnetclf._cli_options import (
    EstimatorOptions,
    in_option_terms,
    record_spelling,
    value_from_text,
)
from resnetclf._cli_outputs import (
    save_confusion_matrix,
    save_curves,
    save_mistakes,
    write_json,
    write_prediction_metrics,
    write_predictions,
)
from resnetclf._deployed import INPUT_DTYPES, INPUT_LAYOUTS, resolve_input_layout
from resnetclf._fit_setup import check_before_data
from resnetclf.datasets import load_merged, make_digit_sums, write_merged
from resnetclf.export import export_onnx

__all__ = ["build_parser", "export", "main", "predict", "train"]

CHECKPOINT_NAME = "resnet-step.safetensors"
# The merged dataset's image shape, as make_digit_sums makes it by default.
STAND_IN_SHAPE = inspect.signature(make_digit_sums).parameters["image_shape"].default
MODEL_FOLDER = "model"

# The estimator's parameters are the train command's options (see
# _cli_options); these are the few that are not, or that differ.
ESTIMATOR_OPTIONS = EstimatorOptions(
    ResNetFineTuneClassifier,
    aliases={"max_iter": ["--epochs"], "rotation_degrees": ["--rotation"]},
    excluded={
        "image_shape": "the command's images are 3-D arrays, for which it is unused",
        "validation_fraction": "the command passes its own --val-size split as X_val",
        "checkpoint_path": f"the command writes OUT/{CHECKPOINT_NAME}",
        "random_state": "--seed sets it, with the subsample and the split",
        "warm_start": "each run fits a new estimator: there is nothing to continue",
    },
    command_defaults={
        "verbose": (1, "a command reports each epoch; the estimator is silent"),
    },
    help_texts={
        "class_weight": (
            'Weights of the classes in the loss: "balanced" weights each class '
            "by n_samples / (n_classes * count); none weighs every class alike. "
            "(Weights per label can be given from Python only.)"
        ),
        "scoring": (
            "What picks the best epoch, drives early stopping and the "
            '"plateau" schedule: none is the validation accuracy; otherwise a '
            'scikit-learn scorer name ("balanced_accuracy", "neg_log_loss", '
            '"f1_macro", ...). (A scoring function can be given from Python '
            "only.)"
        ),
        "rotation_degrees": (
            "Training images are rotated by a random angle of up to this many "
            "degrees either way, a batch at a time on the device, corners "
            "filled with black."
        ),
        "head": (
            'What reads the last stage\'s feature map: "linear" is '
            "torchvision's pooled linear layer, one output per class; "
            '"digit-sum" reads each of --digits digits and predicts their sum, '
            "learning the digits from the sums alone. (A head of your own can "
            "be given from Python only.)"
        ),
        "input_size": (
            "The size images enter the network at, resized on the device in "
            "training and prediction: none keeps their own size; an int is the "
            "short side, the aspect ratio kept; HEIGHT,WIDTH is exactly that "
            'size; "auto" is the pretrained weights\' resolution (224).'
        ),
        "augmentation": (
            'Training augmentation, each image its own draw: "rotation" rotates '
            'by up to rotation_degrees; "photo" crops, flips, rotates and '
            "jitters colours (for photographs, not digits); none augments "
            "nothing. (A function of your own can be given from Python only.)"
        ),
        "tta": (
            "Test-time views whose probabilities prediction averages (the "
            'image, its mirror image after augmentation="photo", small '
            "rotations and shifts); none predicts from the image alone."
        ),
        "lora_rank": (
            "An int trains low-rank adapters (LoRA) of that rank on the "
            "convolution weights of the trainable stages, their pretrained "
            "weights frozen (the head and batch norms train in full); none "
            "fine-tunes every weight."
        ),
    },
)

_TRAIN_EPILOG = """\
examples:
  # quick, offline, on stand-in data (a few minutes on a CPU)
  resnetclf train --arch resnet18 --weights none --epochs 3 \\
      --max-samples 600 --out runs/quick

  # the report's recipe on the real files (best on a GPU)
  resnetclf train --data-dir /path/to/merged --out runs/merged

writes to --out: loss.png, accuracy.png, confusion_matrix.png, mistakes.png,
metrics.json, resnet-step.safetensors (best weights, torchvision's layout) and
model/ (the fitted estimator, for resnetclf predict or resnetclf.load_model).

exit status: 0 done; 1 data unreadable or too small to split; 2 bad
arguments, or pretrained weights that cannot be fetched (the message says
how to go on: --weights none, a local file, or torchvision's cache)."""

_PREDICT_EPILOG = """\
examples:
  resnetclf predict --model runs/quick/model --data-dir /path/to/merged
  resnetclf predict --model runs/quick/model --images X.npy --labels y.npy \\
      --out predictions.npy

--out ending in .csv gets one row per image (index, predicted, probability,
and true and correct with labels); .npy gets the predicted labels alone.
With labels, the accuracy is printed and written, with per-class precision
and recall, to a JSON file next to --out (predictions.csv ->
predictions.metrics.json).

exit status: 0 done; 1 images unreadable; 2 bad arguments, or a --model
that cannot be read or is refused (a hostile or damaged model folder)."""

_EXPORT_EPILOG = """\
examples:
  resnetclf export --model runs/quick/model --out model.onnx
  resnetclf export --model runs/quick/model --out model.onnx \\
      --input-layout NCHW --input-dtype float32

The file takes a batch of images (any number) in the layout and dtype given,
and returns the probability of each class (a saved regressor's: its
predicted values, in the targets' units); the classes, the layout and the
image shape are in its metadata (metadata_props). Needs the onnx extra:
pip install "resnetclf[onnx]".

exit status: 0 done; 1 the onnx extra is missing; 2 bad arguments, a --model
that cannot be read, an --out that cannot be written, or a model that cannot
be exported."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help, when it has one; the description
    and the epilog's examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default == "==SUPPRESS==")
        if shown and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _paragraph(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=79)


# ---------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    """The ``resnetclf`` parser with its subcommands.

    Returns
    -------
    parser : argparse.ArgumentParser
        Parses :func:`main`'s arguments.
    """
    parser = _Parser(
        prog="resnetclf",
        description=_paragraph(
            """Fine-tune torchvision ResNets on numpy images (the merged
            digit-sum dataset by default), and predict with the saved model."""
        ),
        epilog="Run 'resnetclf COMMAND --help' for a command's options.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )
    train_parser = commands.add_parser(
        "train",
        help="fine-tune on a merged-dataset folder (or stand-in data)",
        description=_paragraph(
            """Fine-tune a torchvision ResNet on the merged digit-sum dataset
            with the report's recipe (the defaults): 80/10/10 split, best-epoch
            checkpoint, curves, confusion matrix, a gallery of the most
            confident mistakes, metrics.json and the saved model. Without
            --data-dir, stand-in data is generated, and the output says so."""
        ),
        epilog=_TRAIN_EPILOG,
        formatter_class=_HelpFormatter,
    )
    _add_train_arguments(train_parser)
    train_parser.set_defaults(
        run=train, check=_check_train_arguments, command_parser=train_parser
    )
    predict_parser = commands.add_parser(
        "predict",
        help="predict with a model saved by 'resnetclf train'",
        description=_paragraph(
            """Predict the labels of images with a model saved by 'resnetclf
            train' (or resnetclf.save_model); with labels, also report the
            accuracy."""
        ),
        epilog=_PREDICT_EPILOG,
        formatter_class=_HelpFormatter,
    )
    _add_predict_arguments(predict_parser)
    predict_parser.set_defaults(
        run=predict, check=_check_predict_arguments, command_parser=predict_parser
    )
    data_parser = commands.add_parser(
        "make-data",
        help="write stand-in data in the merged dataset's layout",
        description=_paragraph(
            """Make images of handwritten digits side by side, labelled with
            their sum, from scikit-learn's bundled digits (no download), and
            write them as data0.npy.. / lab0.npy.. files that 'resnetclf train
            --data-dir' reads."""
        ),
        epilog="example:\n  resnetclf make-data --out data/merged --n-samples 3000",
        formatter_class=_HelpFormatter,
    )
    _add_make_data_arguments(data_parser)
    data_parser.set_defaults(
        run=make_data,
        check=lambda parser, args: None,
        command_parser=data_parser,
        threads=None,
    )
    export_parser = commands.add_parser(
        "export",
        help="write a saved model as one ONNX file (images in, predictions out)",
        description=_paragraph(
            """Write a model saved by 'resnetclf train' (or
            resnetclf.save_model) as one ONNX graph from raw images to class
            probabilities (a regressor's: its predicted values), with the
            scaling, channel handling and normalisation inside, for
            onnxruntime."""
        ),
        epilog=_EXPORT_EPILOG,
        formatter_class=_HelpFormatter,
    )
    _add_export_arguments(export_parser)
    export_parser.set_defaults(
        run=export,
        check=lambda parser, args: None,
        command_parser=export_parser,
        threads=None,
    )
    return parser


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="folder written by 'resnetclf train' (OUT/model) or save_model",
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="the ONNX file to write"
    )
    parser.add_argument(
        "--input-layout",
        choices=("auto", *INPUT_LAYOUTS),
        default="auto",
        help="layout of the images the file takes: (N, H, W), (N, H, W, C), "
        "(N, C, H, W) or flat rows (N, H*W*C); auto is NHW for a grayscale "
        "model, NHWC for a colour one",
    )
    parser.add_argument(
        "--input-dtype",
        choices=INPUT_DTYPES,
        default="uint8",
        help="dtype of the images the file takes: uint8 is divided by 255, "
        "floats are taken as in [0, 1]",
    )
    parser.add_argument(
        "--opset",
        type=_positive_int,
        metavar="N",
        help="ONNX opset version (default: the exporter's)",
    )


def _add_make_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder to write the files to"
    )
    parser.add_argument(
        "--n-samples",
        type=_positive_int,
        required=True,
        metavar="N",
        help="number of images in all",
    )
    parser.add_argument(
        "--n-digits",
        type=_positive_int,
        default=4,
        metavar="N",
        help="digits per image",
    )
    parser.add_argument(
        "--shape",
        type=_positive_int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        default=STAND_IN_SHAPE,
        help="image shape",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--n-subsets",
        type=_positive_int,
        default=3,
        metavar="N",
        help="number of data{i}.npy / lab{i}.npy file pairs",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace files that already exist"
    )


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with data0.npy.. and lab0.npy..; without it, stand-in data "
        "is made with resnetclf.datasets.make_digit_sums",
    )
    data.add_argument(
        "--stand-in-samples",
        type=_positive_int,
        default=3000,
        metavar="N",
        help="number of stand-in images when no --data-dir is given",
    )
    data.add_argument(
        "--stand-in-shape",
        type=_positive_int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        default=STAND_IN_SHAPE,
        help="shape of the stand-in images (four digits each; at least 8 32)",
    )
    data.add_argument(
        "--max-samples",
        type=_positive_int,
        metavar="N",
        help="keep a stratified random subsample of this many images",
    )
    data.add_argument(
        "--val-size",
        type=_fraction,
        default=0.1,
        metavar="SHARE",
        help="share of the images held out to pick the best epoch",
    )
    data.add_argument(
        "--test-size",
        type=_fraction,
        default=0.1,
        metavar="SHARE",
        help="share of the images held out to test the best model",
    )
    data.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the subsample, the split and the training (random_state)",
    )
    estimator = parser.add_argument_group(
        "estimator", "ResNetFineTuneClassifier's parameters, as options"
    )
    ESTIMATOR_OPTIONS.add_arguments(estimator)
    estimator.add_argument(
        "--digits",
        type=_positive_int,
        default=4,
        metavar="N",
        help="digits per image: the stand-in images hold N digits, and "
        "--head digit-sum reads N",
    )
    estimator.add_argument(
        "--patience",
        action=_Patience,
        metavar="N",
        help="stop after N epochs without a better validation score: "
        "--early-stopping --n-iter-no-change N",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        default="runs/merged",
        metavar="DIR",
        help="folder for the figures, metrics, checkpoint and model",
    )
    _add_threads_argument(parser)


class _Patience(argparse.Action):
    """``--patience N``: early stopping after N epochs without a gain."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.early_stopping = True
        constraints = ResNetFineTuneClassifier._parameter_constraints
        namespace.n_iter_no_change = value_from_text(
            values, constraints["n_iter_no_change"]
        )
        record_spelling(namespace, "n_iter_no_change", option_string)


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="folder written by 'resnetclf train' (OUT/model) or save_model",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-dir",
        metavar="DIR",
        help="merged-dataset folder (data0.npy.., lab0.npy..)",
    )
    source.add_argument(
        "--images",
        metavar="FILE",
        help=".npy file of images in any layout the model accepts",
    )
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help=".npy file of the true labels of --images (optional)",
    )
    parser.add_argument(
        "--out",
        default="predictions.csv",
        metavar="FILE",
        help="where to write the predictions (.csv or .npy)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help="images per prediction batch (default: the model's)",
    )
    parser.add_argument(
        "--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda'"
    )
    _add_threads_argument(parser)


def _add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("runtime").add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="CPU threads for torch (default: torch's choice); 1 can be much "
        "faster on a machine shared with other busy processes",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1); got {text}")
    return value


def _check_train_arguments(parser: argparse.ArgumentParser, args) -> None:
    """What argparse cannot see alone: the estimator's parameters, checked by
    the estimator before any data is read; errors exit with status 2."""
    if args.val_size + args.test_size >= 1:
        parser.error("--val-size and --test-size must leave images for training")
    clf = _classifier(args, Path(args.out) / CHECKPOINT_NAME)
    try:
        # The command's images are grayscale: the network can be checked too.
        check_before_data(clf, image_channels=1)
    except (ValueError, TypeError, OSError) as exc:
        options = {**ESTIMATOR_OPTIONS.option_names(args), "random_state": "--seed"}
        parser.error(in_option_terms(str(exc), options))


def _check_predict_arguments(parser: argparse.ArgumentParser, args) -> None:
    if args.labels is not None and args.images is None:
        parser.error("--labels goes with --images (a --data-dir has its labels)")
    if Path(args.out).suffix not in (".csv", ".npy"):
        parser.error(f"--out must end in .csv or .npy; got {args.out!r}")
    try:
        resolve_device(args.device)  # as predict will, before the model is read
    except ValueError as exc:
        parser.error(in_option_terms(str(exc), {"device": "--device"}))


# --------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``resnetclf train``, ``predict``, ``make-data`` or ``export``.

    Parameters
    ----------
    argv : sequence of str, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success; 1 if the data or the model cannot be read, or the
        data is too small to split; 2 if the pretrained weights cannot be had
        (bad arguments exit with status 2 through ``SystemExit``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.check(args.command_parser, args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args.run(args)


def _error(message: str) -> None:
    print(f"resnetclf: error: {message}", file=sys.stderr)


# ---------------------------------------------------------------- make-data
def make_data(args: argparse.Namespace) -> int:
    """The ``make-data`` subcommand; see ``resnetclf make-data -h``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of ``make-data``.

    Returns
    -------
    status : int
        0 on success, 1 if the files cannot be written (for instance because
        they exist and ``--overwrite`` was not given).
    """
    try:
        X, y = make_digit_sums(
            args.n_samples,
            n_digits=args.n_digits,
            image_shape=tuple(args.shape),
            random_state=args.seed,
        )
    except (TypeError, ValueError) as exc:
        options = {"n_digits": "--n-digits", "image_shape": "--shape"}
        args.command_parser.error(in_option_terms(str(exc), options))
    try:
        paths = write_merged(args.out, X, y, args.n_subsets, overwrite=args.overwrite)
    except (OSError, ValueError) as exc:
        _error(str(exc))
        return 1
    for path in paths:
        array = np.load(path, mmap_mode="r")
        print(f"wrote {path}  shape={array.shape} dtype={array.dtype}")
    height, width = args.shape
    print(
        f"{len(X)} images of {height}x{width} with {args.n_digits} digits, "
        f"labels {y.min()}..{y.max()} ({len(np.unique(y))} distinct), "
        f"in {args.n_subsets} subsets under {args.out}"
    )
    return 0


# -------------------------------------------------------------------- train
def train(args: argparse.Namespace) -> int:
    """The ``train`` subcommand on parsed arguments; see ``resnetclf train -h``.

    Parameters
    ----------
    args : argparse.Namespace
        Checked arguments of ``train``.

    Returns
    -------
    status : int
        As :func:`main`'s.
    """
    start = time.perf_counter()
    if importlib.util.find_spec("matplotlib") is None:
        # Checked first: the figures come after the training.
        _error(
            "resnetclf train draws figures with matplotlib: "
            "pip install 'resnetclf[plot]' (or pip install matplotlib)"
        )
        return 1
    try:
        X, y, stand_in = _training_data(args)
    except (OSError, ValueError) as exc:
        _error(f"could not load the data: {exc}")
        return 1
    if args.max_samples is not None and args.max_samples < len(y):
        chosen = stratified_subsample(y, args.max_samples, random_state=args.seed)
        X, y = X[chosen], y[chosen]
        print(f"kept a stratified random subsample of {len(y)} images")
    split = train_val_test_split(
        y, val_size=args.val_size, test_size=args.test_size, random_state=args.seed
    )
    if len(split.val) == 0 or len(split.test) == 0:
        _error(
            f"{len(y)} images are too few for a split with non-empty validation "
            "and test sets"
        )
        return 1
    print(f"split: {split.summary()}; {len(np.unique(y))} classes")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clf = _classifier(args, out / CHECKPOINT_NAME)
    fit_start = time.perf_counter()
    try:
        clf.fit(X[split.train], y[split.train], X_val=X[split.val], y_val=y[split.val])
    except WeightsUnavailableError as exc:
        _error(f"{exc}\n{_weights_hint(args.weights)}")
        return 2
    fit_seconds = time.perf_counter() - fit_start

    X_test, y_test = X[split.test], y[split.test]
    proba = clf.predict_proba(X_test)
    y_pred = clf.classes_[proba.argmax(axis=1)]
    paths = save_curves(clf, out)
    paths.append(save_confusion_matrix(y_test, y_pred, clf.classes_, out))
    paths.append(save_mistakes(clf, X_test, y_test, proba, out))
    paths.append(save_model(clf, out / MODEL_FOLDER))
    metrics = _train_metrics(args, clf, split, y_test, y_pred, stand_in)
    metrics.update(seconds=fit_seconds, total_seconds=time.perf_counter() - start)
    paths += [write_json(out / "metrics.json", metrics), out / CHECKPOINT_NAME]
    _print_train_summary(clf, metrics, stand_in, paths)
    return 0


def _training_data(args) -> tuple[np.ndarray, np.ndarray, bool]:
    """The merged dataset, or stand-in data (and a note) without --data-dir."""
    if args.data_dir is not None:
        X, y = load_merged(args.data_dir)
        print(f"loaded {len(X)} images of shape {X.shape[1:]} from {args.data_dir}")
        return X, y, False
    X, y = make_digit_sums(
        args.stand_in_samples,
        n_digits=args.digits,
        image_shape=tuple(args.stand_in_shape),
        random_state=args.seed,
    )
    print(
        f"NOTE: no --data-dir given, so this run uses {len(X)} STAND-IN images "
        f"of shape {X.shape[1:]} made by resnetclf.datasets.make_digit_sums from "
        "scikit-learn's digits, not the report's data; its accuracies are not "
        "comparable with the report's. Pass --data-dir for the real files."
    )
    return X, y, True


def _classifier(args, checkpoint: Path) -> ResNetFineTuneClassifier:
    """The estimator as the options set it, writing its checkpoint there."""
    params = ESTIMATOR_OPTIONS.params(args)
    if params.get("head") == "digit-sum":
        params["head"] = DigitSumHead(n_digits=args.digits)
    return ResNetFineTuneClassifier(
        **params,
        checkpoint_path=str(checkpoint),
        random_state=args.seed,
    )


def _weights_hint(weights: str) -> str:
    """How to go on without pretrained weights, in this command's options."""
    return (
        "On this command line: --weights none (random initialisation), or "
        "--weights /path/to/weights.safetensors (or .pth; a state dict in "
        "torchvision's layout), or "
        f"fill torchvision's cache as said above and rerun with --weights {weights}."
    )


def _train_metrics(args, clf, split, y_test, y_pred, stand_in: bool) -> dict:
    return {
        "val_accuracy": clf.best_score_,
        "test_accuracy": float(np.mean(y_pred == y_test)),
        "best_epoch": clf.best_epoch_,
        "n_iter": clf.n_iter_,
        "arch": args.arch,
        "weights": "none" if args.weights is None else args.weights,
        "stand_in": stand_in,
        "data_dir": args.data_dir,
        "seed": args.seed,
        "device": str(clf.device_),
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "n_classes": len(clf.classes_),
        "image_shape": list(clf.image_shape_),
        "split": {
            "summary": split.summary(),
            "classes_only_in_train": split.info.classes_only_in_train,
            "max_samples": args.max_samples,
        },
        "classification_report": classification_report(
            y_test,
            y_pred,
            labels=clf.classes_,
            output_dict=True,
            zero_division=0,
        ),
        "params": {
            k: v
            for k, v in clf.get_params().items()
            if isinstance(v, (str, int, float, bool, tuple, type(None)))
        },
        "checkpoint": str(Path(args.out) / CHECKPOINT_NAME),
        "model": str(Path(args.out) / MODEL_FOLDER),
        "history": clf.history_,
    }


def _print_train_summary(clf, metrics: dict, stand_in: bool, paths) -> None:
    if stand_in:
        print("(stand-in data, see the NOTE above)")
    if clf.best_score_ is not None:
        print(
            f"best epoch {clf.best_epoch_} of {clf.n_iter_}: validation accuracy "
            f"{clf.best_score_:.4f}"
        )
    print(
        f"test accuracy of the best model: {metrics['test_accuracy']:.4f} "
        f"({metrics['n_test']} images)"
    )
    print(
        f"training took {metrics['seconds']:.0f} s; wrote " + ", ".join(map(str, paths))
    )


# ------------------------------------------------------------------ predict
def predict(args: argparse.Namespace) -> int:
    """The ``predict`` subcommand on parsed arguments; see ``resnetclf predict -h``.

    Parameters
    ----------
    args : argparse.Namespace
        Checked arguments of ``predict``.

    Returns
    -------
    status : int
        As :func:`main`'s.
    """
    try:
        clf = load_model(args.model)
    except (OSError, ValueError) as exc:
        # A model that cannot be read is a bad --model, as a bad option is.
        _error(f"could not load the model: {exc}")
        return 2
    clf.set_params(device=args.device)
    if args.batch_size is not None:
        clf.set_params(batch_size=args.batch_size)
    try:
        X, y = _prediction_data(args)
        proba = clf.predict_proba(X)
    except (OSError, ValueError) as exc:
        _error(f"could not predict the images: {exc}")
        return 1
    y_pred = clf.classes_[proba.argmax(axis=1)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, y_pred, proba.max(axis=1), y)
    print(f"predicted {len(y_pred)} images; wrote {out}")
    if y is not None:
        metrics_path = write_prediction_metrics(out, y, y_pred, clf.classes_)
        accuracy = float(np.mean(y_pred == y))
        print(f"accuracy: {accuracy:.4f} ({len(y)} images); wrote {metrics_path}")
    return 0


def _prediction_data(args) -> tuple[np.ndarray, np.ndarray | None]:
    if args.data_dir is not None:
        return load_merged(args.data_dir)
    X = np.load(args.images, allow_pickle=False, mmap_mode="r")
    if args.labels is None:
        return X, None
    y = np.load(args.labels, allow_pickle=False)
    if y.shape != (len(X),):
        raise ValueError(
            f"--labels holds an array of shape {y.shape}; expected ({len(X)},), "
            "one label per image of --images"
        )
    return X, y


# ------------------------------------------------------------------- export
def export(args: argparse.Namespace) -> int:
    """The ``export`` subcommand on parsed arguments; see ``resnetclf export -h``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of ``export``.

    Returns
    -------
    status : int
        0 on success, 1 without the onnx extra, 2 for a model that cannot be
        read or exported or a file that cannot be written.
    """
    try:
        clf = load_model(args.model)
    except (OSError, ValueError) as exc:
        _error(f"could not load the model: {exc}")
        return 2
    try:
        path = export_onnx(
            clf,
            args.out,
            input_layout=args.input_layout,
            input_dtype=args.input_dtype,
            opset_version=args.opset,
        )
    except ImportError as exc:
        _error(str(exc))
        return 1
    except ValueError as exc:
        _error(f"could not export the model: {exc}")
        return 2
    layout = resolve_input_layout(args.input_layout, clf.image_shape_[2])
    megabytes = path.stat().st_size / 1e6
    if hasattr(clf, "classes_"):
        outputs = f"probabilities of {len(clf.classes_)} classes"
    else:  # a regressor saved with save_model
        outputs = f"values of {clf.n_outputs_} output(s)"
    print(
        f"wrote {path} ({megabytes:.1f} MB): images {layout} {args.input_dtype} "
        f"of {clf.image_shape_[0]}x{clf.image_shape_[1]} -> {outputs}"
    )
    return 0
