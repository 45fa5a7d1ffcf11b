"""Tune the head's learning rate and the layer-wise decay with ``GridSearchCV``.

:class:`resnetclf.ResNetFineTuneClassifier` trains the head (``fc``) at ``lr``
and the stage ``k`` steps below it at ``lr * layer_lr_decay**k``: a decay
below 1 gives learning rates that grow from the stem towards the head, as in
the merged-digits report, and 1 trains every stage at the same rate. Both are
ordinary estimator parameters, so
:class:`~sklearn.model_selection.GridSearchCV` can search them.

The data is stand-in data made with :func:`resnetclf.datasets.make_digit_sums`:
by default 16x16 images of one handwritten digit each (``--n-digits 2
--image-size 16 40`` for sums of two digits, a much harder task for a quick
run). Each candidate fine-tunes a ResNet18 (random weights by default) for a
few epochs on every training fold, keeping the last epoch
(``validation_fraction=0``), and is scored on the held-out fold; the best
candidate is refitted on all the data. The script prints ``best_params_`` and
a table of the candidates. From random weights every stage has everything to
learn, so a decay of 1 (one rate for all stages) is the natural reference;
with pretrained weights (``--weights DEFAULT``) smaller decays keep the early
stages close to what they learned on ImageNet. Two epochs on a few hundred
images only hint at the differences; raise ``--epochs`` and ``--n-samples``
for a real comparison.

Examples
--------
A few minutes on a 2-core CPU, offline::

    python examples/grid_search.py

A wider grid::

    python examples/grid_search.py --lr 3e-4 1e-3 3e-3 --layer-lr-decay 0.3 0.6 1.0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from resnetclf import ResNetFineTuneClassifier, WeightsUnavailableError
from resnetclf.datasets import make_digit_sums


def build_parser() -> argparse.ArgumentParser:
    """The command line.

    Returns
    -------
    parser : argparse.ArgumentParser
        The parser of :func:`main`'s arguments.
    """
    parser = argparse.ArgumentParser(
        prog="python examples/grid_search.py",
        description="GridSearchCV over lr and layer_lr_decay of "
        "ResNetFineTuneClassifier on stand-in digit-sum data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--lr", type=float, nargs="+", default=[1e-3, 3e-3], help="values to try"
    )
    parser.add_argument(
        "--layer-lr-decay",
        type=float,
        nargs="+",
        default=[0.5, 1.0],
        help="values to try, each in [0, 1]",
    )
    parser.add_argument("--n-samples", type=int, default=300, help="stand-in images")
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
    parser.add_argument("--cv", type=int, default=2, help="number of folds")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument(
        "--weights",
        default="none",
        help="'none' (random initialisation), a torchvision weights name such as "
        "DEFAULT, or a path to a state dict file",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 can be much "
        "faster on a machine shared with other busy processes",
    )
    parser.add_argument("--n-jobs", type=int, default=None, help="fits in parallel")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def make_search(args: argparse.Namespace) -> GridSearchCV:
    """The grid search over ``lr`` and ``layer_lr_decay``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments.

    Returns
    -------
    search : GridSearchCV
        Not fitted.
    """
    estimator = ResNetFineTuneClassifier(
        arch=args.arch,
        weights=args.weights,
        max_iter=args.epochs,
        batch_size=args.batch_size,
        validation_fraction=0.0,
        device=args.device,
        random_state=args.seed,
    )
    return GridSearchCV(
        estimator,
        param_grid={"lr": args.lr, "layer_lr_decay": args.layer_lr_decay},
        cv=StratifiedKFold(n_splits=args.cv, shuffle=True, random_state=args.seed),
        n_jobs=args.n_jobs,
        error_score="raise",
    )


def results_table(cv_results: dict) -> str:
    """The candidates as a text table, best first.

    Parameters
    ----------
    cv_results : dict
        ``GridSearchCV.cv_results_``.

    Returns
    -------
    table : str
        One line per candidate: rank, parameters, mean and std of the fold
        accuracies, mean fit time.
    """
    header = f"{'rank':>4}  {'lr':>8}  {'layer_lr_decay':>14}  {'accuracy':>16}  fit"
    lines = [header, "-" * len(header)]
    for i in np.argsort(cv_results["rank_test_score"], kind="stable"):
        lines.append(
            f"{cv_results['rank_test_score'][i]:>4}  "
            f"{cv_results['param_lr'][i]:>8.2g}  "
            f"{cv_results['param_layer_lr_decay'][i]:>14.2g}  "
            f"{cv_results['mean_test_score'][i]:>7.4f} +/- "
            f"{cv_results['std_test_score'][i]:.4f}  "
            f"{cv_results['mean_fit_time'][i]:.1f} s"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid search and print the best parameters and the results.

    Parameters
    ----------
    argv : sequence of str, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 2 if pretrained weights cannot be had.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(not 0.0 <= d <= 1.0 for d in args.layer_lr_decay):
        parser.error("each --layer-lr-decay must be in [0, 1]")
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
    search = make_search(args)
    n_candidates = len(args.lr) * len(args.layer_lr_decay)
    print(
        f"stand-in data: {len(X)} images of shape {X.shape[1:]}, "
        f"{len(np.unique(y))} classes; {n_candidates} candidates x {args.cv} folds "
        f"+ 1 refit = {n_candidates * args.cv + 1} fits of {args.epochs} epoch(s)"
    )
    start = time.perf_counter()
    try:
        search.fit(X, y)
    except WeightsUnavailableError as exc:
        print(
            f"error: {exc}\nOn this command line: --weights none, or --weights "
            "/path/to/state_dict.pth.",
            file=sys.stderr,
        )
        return 2
    print(f"\nsearch took {time.perf_counter() - start:.0f} s")
    print(f"best_params_: {search.best_params_}")
    print(f"best_score_ (mean fold accuracy): {search.best_score_:.4f}\n")
    print(results_table(search.cv_results_))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
