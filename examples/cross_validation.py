"""Cross-validate a preprocessing + ResNet pipeline with ``cross_val_score``.

:class:`resnetclf.ResNetFineTuneClassifier` is a scikit-learn classifier, so it
can be the last step of a :class:`~sklearn.pipeline.Pipeline` and be scored by
:func:`~sklearn.model_selection.cross_val_score` like any other. Here the
pipeline is

1. a :class:`~sklearn.preprocessing.FunctionTransformer` that scales the
   ``uint8`` images to floats in [0, 1] and flattens each to one row, as a
   tabular preprocessing step would hand them on;
2. the classifier, told the shape of the images behind the rows with
   ``image_shape=(height, width)``.

The data is stand-in data made with :func:`resnetclf.datasets.make_digit_sums`:
small images of handwritten digits labelled with the sum of their digits. By
default each 16x16 image holds one digit (so the label is the digit, 10
classes), a task a ResNet18 from random weights picks up within a few epochs on
a CPU; ``--n-digits 2 --image-size 16 40`` gives the sums of two digits (19
classes), which needs far more training than a quick run. Each fold fine-tunes
a ResNet18 (random weights by default) for a few epochs and keeps the last
epoch (``validation_fraction=0``, so every training image is used), then is
scored on the held-out fold. The same folds scored with a most-frequent-class
baseline are printed for comparison.

Examples
--------
A few minutes on a 2-core CPU, offline::

    python examples/cross_validation.py

With pretrained ImageNet weights (downloaded once into torchvision's cache)::

    python examples/cross_validation.py --weights DEFAULT
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.dummy import DummyClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from resnetclf import ResNetFineTuneClassifier, WeightsUnavailableError
from resnetclf.datasets import make_digit_sums


def scale_and_flatten(X: np.ndarray) -> np.ndarray:
    """Scale ``uint8`` images to [0, 1] and flatten each to one row.

    Parameters
    ----------
    X : ndarray of shape (n_samples, height, width)
        ``uint8`` images.

    Returns
    -------
    rows : ndarray of shape (n_samples, height * width), dtype float32
        The pixels of each image, row-major, in [0, 1].
    """
    X = np.asarray(X)
    return (X.reshape(len(X), -1) / 255.0).astype(np.float32)


def make_pipeline(args: argparse.Namespace, image_shape: tuple[int, int]) -> Pipeline:
    """The preprocessing step followed by the ResNet classifier.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments.
    image_shape : tuple of int
        ``(height, width)`` of the images behind each flattened row.

    Returns
    -------
    pipeline : Pipeline
        Not fitted.
    """
    return Pipeline(
        [
            ("scale_flatten", FunctionTransformer(scale_and_flatten)),
            (
                "resnet",
                ResNetFineTuneClassifier(
                    arch=args.arch,
                    weights=args.weights,
                    max_iter=args.epochs,
                    batch_size=args.batch_size,
                    layer_lr_decay=args.layer_lr_decay,
                    image_shape=image_shape,
                    validation_fraction=0.0,
                    device=args.device,
                    random_state=args.seed,
                ),
            ),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line.

    Returns
    -------
    parser : argparse.ArgumentParser
        The parser of :func:`main`'s arguments.
    """
    parser = argparse.ArgumentParser(
        prog="python examples/cross_validation.py",
        description="cross_val_score of a Pipeline ending in ResNetFineTuneClassifier "
        "on stand-in digit-sum data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n-samples", type=int, default=600, help="stand-in images")
    parser.add_argument(
        "--n-digits",
        type=int,
        default=1,
        help="digits per stand-in image; the label is their sum (2 is a much "
        "harder task for a few epochs from random weights)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        default=(16, 16),
        help="stand-in image shape, at least 8 by 8 * n_digits",
    )
    parser.add_argument("--cv", type=int, default=3, help="number of folds")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument(
        "--weights",
        default="none",
        help="'none' (random initialisation), a torchvision weights name such as "
        "DEFAULT, or a path to a state dict file",
    )
    parser.add_argument(
        "--layer-lr-decay",
        type=float,
        default=1.0,
        help="learning-rate factor per stage below the head: 1 (one rate for all "
        "stages) suits random weights, < 1 pretrained ones",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 can be much "
        "faster on a machine shared with other busy processes",
    )
    parser.add_argument("--n-jobs", type=int, default=None, help="folds in parallel")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Cross-validate the pipeline and print the fold scores.

    Parameters
    ----------
    argv : sequence of str, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 2 if pretrained weights cannot be had.
    """
    args = build_parser().parse_args(argv)
    if args.weights.lower() == "none":
        args.weights = None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    X, y = make_digit_sums(
        args.n_samples,
        n_digits=args.n_digits,
        image_shape=tuple(args.image_size),
        random_state=args.seed,
    )
    print(
        f"stand-in data: {len(X)} images of shape {X.shape[1:]}, {args.n_digits} "
        f"digit(s) each, labelled with their sum ({len(np.unique(y))} classes)"
    )
    cv = StratifiedKFold(n_splits=args.cv, shuffle=True, random_state=args.seed)
    pipeline = make_pipeline(args, X.shape[1:])
    print(pipeline)
    start = time.perf_counter()
    try:
        scores = cross_val_score(
            pipeline, X, y, cv=cv, n_jobs=args.n_jobs, error_score="raise"
        )
    except WeightsUnavailableError as exc:
        print(
            f"error: {exc}\nOn this command line: --weights none, or --weights "
            "/path/to/state_dict.pth.",
            file=sys.stderr,
        )
        return 2
    seconds = time.perf_counter() - start
    baseline = cross_val_score(DummyClassifier(), X, y, cv=cv)

    print(f"\n{args.cv}-fold accuracy of the pipeline ({seconds:.0f} s):")
    for fold, score in enumerate(scores, start=1):
        print(f"  fold {fold}: {score:.4f}")
    print(f"  mean {scores.mean():.4f} +/- {scores.std():.4f}")
    print(
        f"most-frequent-class baseline: {baseline.mean():.4f} +/- {baseline.std():.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
