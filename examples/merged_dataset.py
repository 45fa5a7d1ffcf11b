"""Fine-tune a ResNet on the merged digit-sum dataset, as the report did.

The *merged dataset* holds 40x168 grayscale ``uint8`` images of four handwritten
digits, labelled with the sum of the digits (0..36, 37 classes), stored as
``data0.npy`` .. ``data2.npy`` and ``lab0.npy`` .. ``lab2.npy``. This script
runs the report's whole procedure through :class:`resnetclf.ResNetFineTuneClassifier`:

1. load and merge the subsets (:func:`resnetclf.datasets.load_merged`), or,
   without ``--data-dir``, make *stand-in* data of the same layout from
   scikit-learn's bundled digits (:func:`resnetclf.datasets.make_digit_sums`);
   the output then says so, and ``metrics.json`` records ``"stand_in": true``;
2. optionally keep a stratified, seeded subsample (``--max-samples``);
3. split 80/10/10 into training, validation and test sets, stratified by label
   (see "Rare classes" below);
4. fine-tune with the report's recipe, which the defaults reproduce: pretrained
   ResNet50 (``--weights DEFAULT``), a new 37-way head, the grayscale channel
   used as if repeated to three, random rotation, normalisation with
   mean = std = 0.5, cross-entropy, Adam with weight decay, learning rates that
   grow towards the head (``--layer-lr-decay`` < 1: the stage ``k`` steps below
   the head trains at ``lr * decay**k``), 50 epochs of batches of 64, one line
   per epoch, and the weights written to ``OUT/resnet-step.pth`` whenever the
   validation accuracy improves;
5. report the validation accuracy of the best epoch and the test accuracy of
   that model, and write to ``--out``:

   ``loss.png``
       training and validation loss per epoch (the report's Figure 1);
   ``accuracy.png``
       training and validation accuracy per epoch (Figure 2);
   ``confusion_matrix.png``
       the best model's confusion matrix on the test set;
   ``metrics.json``
       accuracies, best epoch, split sizes, settings, timings and the history;
   ``resnet-step.pth``
       the best weights, in torchvision's layout:
       ``torchvision.models.resnet50(num_classes=37).load_state_dict(
       torch.load(path, weights_only=True))`` loads them.

Rare classes
------------
Sums near 0 and 36 are rare (one image in ten thousand sums to 0), and
``train_test_split(..., stratify=y)`` refuses classes with a single member and
splits smaller than the number of classes. Each split here therefore (a) keeps
the members of a class with fewer than two samples in the larger part
(training; for ``--max-samples``, the part left out), (b) stratifies the other
samples when the smaller part can hold one sample of each of their classes and
otherwise draws it at random, and (c) never leaves a validation or test sample
whose class has no training sample (such a sample is moved to training). What
happened is printed and recorded in ``metrics.json`` under ``"split"``.

Pretrained weights
------------------
``--weights DEFAULT`` (or another torchvision weights name) downloads the
ImageNet weights into torchvision's cache (``TORCH_HOME``) on first use. Without
a network and an empty cache the script stops at once with exit status 2 and
says how to go on: ``--weights none`` (random initialisation),
``--weights /path/to/state_dict.pth``, or copying the weights file into the
cache. It never falls back to other weights on its own.

Examples
--------
A quick offline run on stand-in data (a few minutes on a 2-core CPU)::

    python examples/merged_dataset.py --arch resnet18 --weights none \\
        --epochs 3 --max-samples 600 --out runs/quick

On a machine busy with other processes, ``--threads 1`` is often much faster
(torch's threads then spend their time waiting for each other).

The full recipe on the real files, best on a GPU (the defaults are the
report's settings)::

    python examples/merged_dataset.py --data-dir /path/to/merged --out runs/merged
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torchvision
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay
from sklearn.model_selection import train_test_split

from resnetclf import ResNetFineTuneClassifier, WeightsUnavailableError, plot_history
from resnetclf.datasets import load_merged, make_digit_sums

#: Shares of all samples held out for validation and for testing (80/10/10).
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
CHECKPOINT_NAME = "resnet-step.pth"


# ---------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    """The command line; the defaults are the report's recipe.

    Returns
    -------
    parser : argparse.ArgumentParser
        The parser of :func:`main`'s arguments.
    """
    parser = argparse.ArgumentParser(
        prog="python examples/merged_dataset.py",
        description=(
            "Fine-tune a torchvision ResNet on the merged digit-sum dataset "
            "(80/10/10 split, best-epoch checkpoint, loss/accuracy curves, "
            "confusion matrix, metrics.json). Without --data-dir, stand-in data "
            "is generated."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        default=None,
        help="folder with data0.npy.. and lab0.npy..; without it, stand-in data "
        "is made with resnetclf.datasets.make_digit_sums",
    )
    data.add_argument(
        "--stand-in-samples",
        type=_positive_int,
        default=3000,
        help="number of stand-in images when no --data-dir is given",
    )
    data.add_argument(
        "--stand-in-shape",
        type=_positive_int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        default=(40, 168),
        help="shape of the stand-in images (four digits each; at least 8 32)",
    )
    data.add_argument(
        "--max-samples",
        type=_positive_int,
        default=None,
        help="keep a stratified random subsample of this many images",
    )
    data.add_argument(
        "--seed", type=int, default=0, help="seeds subsample, split and training"
    )
    model = parser.add_argument_group("model and training")
    model.add_argument(
        "--arch", default="resnet50", help="torchvision ResNet builder, e.g. resnet18"
    )
    model.add_argument(
        "--weights",
        default="DEFAULT",
        help="torchvision weights name (DEFAULT, IMAGENET1K_V1, ...), a path to a "
        "state dict file, or 'none' for random initialisation",
    )
    model.add_argument("--epochs", type=_positive_int, default=50)
    model.add_argument("--batch-size", type=_positive_int, default=64)
    model.add_argument(
        "--lr", type=_positive_float, default=1e-3, help="learning rate of the head"
    )
    model.add_argument(
        "--layer-lr-decay",
        type=float,
        default=0.5,
        help="each stage below the head trains at this factor of the stage above "
        "(< 1: rates increase towards the head; 1: one rate for all)",
    )
    model.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    model.add_argument("--weight-decay", type=float, default=1e-4)
    model.add_argument(
        "--rotation",
        type=float,
        default=10.0,
        help="random rotation range in degrees; 0 turns augmentation off",
    )
    model.add_argument(
        "--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda'"
    )
    model.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 can be much "
        "faster on a machine shared with other busy processes",
    )
    parser.add_argument(
        "--out", default="runs/merged", help="folder for figures, metrics, weights"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; exit with status 2 on bad ones.

    Parameters
    ----------
    argv : sequence of str, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    args : argparse.Namespace
        The arguments; ``args.weights`` is None for ``none``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        names = list(torchvision.models.get_model_weights(args.arch).__members__)
    except ValueError:
        parser.error(f"--arch {args.arch!r} is not a torchvision model")
    if not 0.0 <= args.layer_lr_decay <= 1.0:
        parser.error("--layer-lr-decay must be in [0, 1]")
    if args.weights.lower() == "none":
        args.weights = None
    elif args.weights not in names and not Path(args.weights).is_file():
        parser.error(
            f"--weights {args.weights!r} is neither a weights name of {args.arch} "
            f"({', '.join(names)}), an existing file, nor 'none'"
        )
    return args


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {text}")
    return value


# --------------------------------------------------------------------- data
def load_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, bool]:
    """Load the merged dataset, or make stand-in data without ``--data-dir``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments.

    Returns
    -------
    X : ndarray of shape (n_samples, height, width)
        The images.
    y : ndarray of shape (n_samples,)
        The digit sums.
    stand_in : bool
        Whether the data is generated stand-in data.
    """
    if args.data_dir is not None:
        X, y = load_merged(args.data_dir)
        print(f"loaded {len(X)} images of shape {X.shape[1:]} from {args.data_dir}")
        return X, y, False
    X, y = make_digit_sums(
        args.stand_in_samples,
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


def split_off(
    indices: np.ndarray,
    y: np.ndarray,
    n_held: int,
    seed: int,
    *,
    keep_classes: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Split ``n_held`` samples off ``indices``, stratified by ``y`` if possible.

    Samples of classes with fewer than two members among ``indices`` always
    stay in the remaining part (``train_test_split`` cannot stratify them). The
    others are split with ``train_test_split(stratify=...)`` when both parts
    can hold one sample of each of their classes, else at random.

    Parameters
    ----------
    indices : ndarray of int
        Sample indices to split.
    y : ndarray
        Labels of all samples (indexed by ``indices``).
    n_held : int
        Number of samples to split off; fewer when the rare classes or
        ``keep_classes`` leave fewer available.
    seed : int
        Seeds the split.
    keep_classes : bool, default=True
        Move back held-out samples whose class has no member left in the
        remaining part, so that every class held out is also trained on.

    Returns
    -------
    rest, held : ndarray of int
        Sorted, disjoint indices that together are ``indices``.
    info : dict
        ``stratified`` (bool), ``rare_classes`` (labels that stayed whole in
        ``rest``) and ``moved_back`` (samples returned to ``rest``).
    """
    indices = np.asarray(indices)
    classes, counts = np.unique(y[indices], return_counts=True)
    rare_classes = classes[counts < 2]
    rare = np.isin(y[indices], rare_classes)
    pool, kept = indices[~rare], indices[rare]
    info = {"stratified": False, "rare_classes": rare_classes.tolist(), "moved_back": 0}
    n_held = min(int(n_held), len(pool) - 1)
    if n_held < 1:
        return np.sort(indices), np.array([], dtype=indices.dtype), info

    n_classes = len(np.unique(y[pool]))
    info["stratified"] = n_classes <= min(n_held, len(pool) - n_held)
    rest, held = train_test_split(
        pool,
        test_size=n_held,
        stratify=y[pool] if info["stratified"] else None,
        random_state=seed,
    )
    rest = np.concatenate([kept, rest])
    if keep_classes:
        orphan = ~np.isin(y[held], y[rest])
        info["moved_back"] = int(orphan.sum())
        rest, held = np.concatenate([rest, held[orphan]]), held[~orphan]
    return np.sort(rest), np.sort(held), info


def subsample(y: np.ndarray, n_samples: int, seed: int) -> tuple[np.ndarray, dict]:
    """Indices of a stratified random subsample of ``n_samples`` samples.

    Parameters
    ----------
    y : ndarray of shape (n_total,)
        Labels.
    n_samples : int
        Subsample size; all samples when it is not below ``len(y)``.
    seed : int
        Seeds the choice.

    Returns
    -------
    indices : ndarray of int
        Sorted indices of the subsample.
    info : dict
        As :func:`split_off`'s; classes with a single member are left out.
    """
    if n_samples >= len(y):
        return np.arange(len(y)), {"stratified": None, "rare_classes": []}
    _, chosen, info = split_off(
        np.arange(len(y)), y, n_samples, seed, keep_classes=False
    )
    info.pop("moved_back")
    return chosen, info


@dataclass
class Split:
    """Indices of the training, validation and test sets, and how they were cut."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_info: dict
    val_info: dict


def train_val_test_split(y: np.ndarray, seed: int) -> Split:
    """Split 80/10/10, stratified, with ``train_test_split`` twice.

    First the test set (10 % of all samples) is split off, then the validation
    set (10 % of all samples) from the rest; see :func:`split_off` for rare
    classes.

    Parameters
    ----------
    y : ndarray of shape (n_samples,)
        Labels.
    seed : int
        Seeds both splits.

    Returns
    -------
    split : Split
        The three index sets.
    """
    n_samples = len(y)
    rest, test, test_info = split_off(
        np.arange(n_samples), y, round(TEST_FRACTION * n_samples), seed
    )
    train, val, val_info = split_off(rest, y, round(VAL_FRACTION * n_samples), seed)
    return Split(train, val, test, test_info, val_info)


def describe_split(name: str, info: dict) -> str:
    """One line saying how a split was made."""
    how = "stratified" if info["stratified"] else "random (too few samples to stratify)"
    text = f"{name}: {how}"
    if info["rare_classes"]:
        text += f"; classes with < 2 samples kept out of it: {info['rare_classes']}"
    if info.get("moved_back"):
        text += (
            f"; {info['moved_back']} sample(s) of classes absent from the "
            "training part moved to it"
        )
    return text


# ----------------------------------------------------------------- training
def make_classifier(
    args: argparse.Namespace, checkpoint: Path
) -> ResNetFineTuneClassifier:
    """The estimator with the report's recipe, as the arguments set it.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments.
    checkpoint : Path
        Where the best weights are written.

    Returns
    -------
    clf : ResNetFineTuneClassifier
        Not fitted.
    """
    return ResNetFineTuneClassifier(
        arch=args.arch,
        weights=args.weights,
        max_iter=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        layer_lr_decay=args.layer_lr_decay,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        rotation_degrees=args.rotation,
        normalization=(0.5, 0.5),
        checkpoint_path=str(checkpoint),
        device=args.device,
        random_state=args.seed,
        verbose=1,
    )


def weights_hint(weights: str) -> str:
    """How to go on without pretrained weights, in this script's flags."""
    return (
        "On this command line: --weights none (random initialisation), or "
        "--weights /path/to/state_dict.pth (a file in torchvision's layout), or "
        f"fill torchvision's cache as said above and rerun with --weights {weights}."
    )


# ------------------------------------------------------------------ outputs
def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (files only)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_curves(clf: ResNetFineTuneClassifier, out: Path) -> list[Path]:
    """Write ``loss.png`` (Figure 1) and ``accuracy.png`` (Figure 2).

    Parameters
    ----------
    clf : ResNetFineTuneClassifier
        Fitted.
    out : Path
        Output folder.

    Returns
    -------
    paths : list of Path
        The two files.
    """
    plt = _pyplot()
    loss_fig, loss_ax = plt.subplots(figsize=(6, 4), layout="constrained")
    acc_fig, acc_ax = plt.subplots(figsize=(6, 4), layout="constrained")
    plot_history(clf, axes=(loss_ax, acc_ax))
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    paths = [out / "loss.png", out / "accuracy.png"]
    for figure, path in zip((loss_fig, acc_fig), paths):
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return paths


def save_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> Path:
    """Write the test set's confusion matrix.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (n_samples,)
        True and predicted labels.
    path : Path
        The PNG file.

    Returns
    -------
    path : Path
        ``path``.
    """
    plt = _pyplot()
    n_labels = len(np.union1d(y_true, y_pred))
    side = min(14.0, max(5.0, 0.35 * n_labels))
    figure, ax = plt.subplots(figsize=(side, side), layout="constrained")
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        ax=ax,
        colorbar=False,
        text_kw={"fontsize": 6 if n_labels > 20 else 9},
    )
    ax.set_title("Confusion matrix, test set")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the procedure; see the module docstring.

    Parameters
    ----------
    argv : sequence of str, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success; 1 if the data cannot be read or is too small to split;
        2 if the pretrained weights cannot be had (and, through argparse's
        ``SystemExit``, on bad arguments).
    """
    start = time.perf_counter()
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        X, y, stand_in = load_data(args)
    except (OSError, ValueError) as exc:
        print(f"error: could not read the data: {exc}", file=sys.stderr)
        return 1

    sample_info = None
    if args.max_samples is not None and args.max_samples < len(y):
        chosen, sample_info = subsample(y, args.max_samples, args.seed)
        X, y = X[chosen], y[chosen]
        print(describe_split(f"subsample of {len(y)} images", sample_info))
    split = train_val_test_split(y, args.seed)
    if len(split.val) == 0 or len(split.test) == 0:
        print(
            f"error: {len(y)} images are too few for an 80/10/10 split with "
            "non-empty validation and test sets",
            file=sys.stderr,
        )
        return 1
    print(
        f"split: {len(split.train)} training, {len(split.val)} validation, "
        f"{len(split.test)} test images; {len(np.unique(y))} classes"
    )
    print("  " + describe_split("test split", split.test_info))
    print("  " + describe_split("validation split", split.val_info))

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    clf = make_classifier(args, checkpoint)
    fit_start = time.perf_counter()
    try:
        clf.fit(X[split.train], y[split.train], X_val=X[split.val], y_val=y[split.val])
    except WeightsUnavailableError as exc:
        print(f"error: {exc}\n{weights_hint(args.weights)}", file=sys.stderr)
        return 2
    fit_seconds = time.perf_counter() - fit_start

    y_pred = clf.predict(X[split.test])
    test_accuracy = float(np.mean(y_pred == y[split.test]))
    paths = save_curves(clf, out)
    paths.append(
        save_confusion_matrix(y[split.test], y_pred, out / "confusion_matrix.png")
    )
    metrics = {
        "val_accuracy": clf.best_score_,
        "test_accuracy": test_accuracy,
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
            "subsample": sample_info,
            "test": split.test_info,
            "validation": split.val_info,
        },
        "params": {
            k: v
            for k, v in clf.get_params().items()
            if isinstance(v, (str, int, float, bool, tuple, type(None)))
        },
        "checkpoint": str(checkpoint),
        "seconds": fit_seconds,
        "total_seconds": time.perf_counter() - start,
        "history": clf.history_,
    }
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, default=_jsonable) + "\n")
    paths += [metrics_path, checkpoint]

    if stand_in:
        print("(stand-in data, see the NOTE above)")
    print(
        f"best epoch {clf.best_epoch_} of {clf.n_iter_}: validation accuracy "
        f"{clf.best_score_:.4f}"
    )
    print(
        f"test accuracy of the best model: {test_accuracy:.4f} "
        f"({len(split.test)} images)"
    )
    print(f"training took {fit_seconds:.0f} s; wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
