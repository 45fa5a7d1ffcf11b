"""Does the library learn as well as the report's loop after the same epochs?

Speed is only worth having if accuracy does not pay for it. The library
differs from the report-style loop of ``bench_fit.py`` in how it computes,
not in what: batched rotation on the device (bilinear) instead of per-sample
``RandomRotation`` (nearest neighbour), grayscale folded into ``conv1``
instead of repeated, channels_last, fused Adam, no weight decay on norms and
biases. This script trains both on the same real handwriting
(:func:`resnetclf.datasets.make_digit_sums`, built from scikit-learn's
digits), with the same split, architecture, random initialisation seed,
learning rate (no layer-wise decay, as the loop has none), weight decay,
rotation, batch size and epochs, for several seeds, and compares their
validation accuracy::

    python benchmarks/bench_accuracy.py --seeds 3 --epochs 5 --json acc.json

The verdict: the mean difference (library - loop) against its standard
error over seeds; "same within noise" when it is inside two standard errors.

``--library-variant`` removes one of the differences above from the library
for the run, to find which one matters: ``nearest_rotation`` (rotate with
nearest-neighbour sampling, as torchvision does), ``decay_all`` (weight decay
on norms and biases too), ``unfused_adam`` (torch's default Adam
implementation).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report_loop import run_report_loop  # noqa: E402
from _suite import BenchConfig  # noqa: E402

from resnetclf import ResNetFineTuneClassifier  # noqa: E402
from resnetclf._param_groups import StageParamGroups  # noqa: E402
from resnetclf._split import stratified_holdout  # noqa: E402
from resnetclf.datasets import make_digit_sums  # noqa: E402

LIBRARY_VARIANTS = ("default", "nearest_rotation", "decay_all", "unfused_adam")


@contextlib.contextmanager
def library_variant(name: str) -> Iterator[None]:
    """Patch the library, for the duration, to go without one of its choices."""
    if name == "nearest_rotation":
        grid_sample = F.grid_sample

        def nearest(*args, **kwargs):
            return grid_sample(*args, **{**kwargs, "mode": "nearest"})

        with mock.patch.object(F, "grid_sample", nearest):
            yield
    elif name == "decay_all":
        build_groups = StageParamGroups.__init__

        def decay_all(self, model, stage_lrs, weight_decay, stem_fold=1):
            build_groups(self, model, stage_lrs, weight_decay, stem_fold)
            for group in self.groups:
                group["weight_decay"] = group["weight_decay"] or weight_decay

        with mock.patch.object(StageParamGroups, "__init__", decay_all):
            yield
    elif name == "unfused_adam":
        with mock.patch(
            "resnetclf._estimator._make_optimizer",
            lambda name, groups, device: torch.optim.Adam(groups),
        ):
            yield
    else:
        yield


def compare_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train both on the data of ``seed``; their per-epoch validation accuracy."""
    X, y = make_digit_sums(
        args.n_samples, args.n_digits, (args.height, args.width), random_state=seed
    )
    train_idx, val_idx, _ = stratified_holdout(y, 0.1, np.random.RandomState(seed))
    config = BenchConfig(
        arch=args.arch,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        n_samples=args.n_samples,
        n_classes=9 * args.n_digits + 1,
        epochs=args.epochs,
        device=args.device,
        repeats=1,
        step_iters=1,
        predict_samples=1,
        memory_samples=1,
        seed=seed,
    )
    device = torch.device(args.device)
    start = time.perf_counter()
    report = run_report_loop(X, y, train_idx, val_idx, config, device, args.epochs)
    report_seconds = time.perf_counter() - start

    clf = ResNetFineTuneClassifier(
        arch=args.arch,
        weights=None,
        max_iter=args.epochs,
        batch_size=args.batch_size,
        lr=config.lr,
        layer_lr_decay=1.0,
        weight_decay=config.weight_decay,
        rotation_degrees=config.rotation_degrees,
        device=args.device,
        random_state=seed,
    )
    start = time.perf_counter()
    with warnings.catch_warnings(), library_variant(args.library_variant):
        warnings.simplefilter("ignore")
        clf.fit(X[train_idx], y[train_idx], X_val=X[val_idx], y_val=y[val_idx])
    library_seconds = time.perf_counter() - start
    library = [record["val_accuracy"] for record in clf.history_]
    return {
        "seed": seed,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "library_val_accuracy": library,
        "report_loop_val_accuracy": report["val_accuracy"],
        "library_seconds": library_seconds,
        "report_loop_seconds": report_seconds,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean final and best accuracies, and the difference against its noise."""
    summary: dict[str, Any] = {}
    for which, pick in (("final", lambda a: a[-1]), ("best", max)):
        library = [pick(r["library_val_accuracy"]) for r in runs]
        loop = [pick(r["report_loop_val_accuracy"]) for r in runs]
        differences = [a - b for a, b in zip(library, loop)]
        mean = statistics.fmean(differences)
        if len(differences) > 1:
            standard_error = statistics.stdev(differences) / math.sqrt(len(runs))
        else:
            # One seed: the binomial noise of two accuracies on n_val images.
            n_val = runs[0]["n_val"]
            standard_error = math.sqrt(
                sum(p * (1 - p) for p in (library[0], loop[0])) / n_val
            )
        summary[which] = {
            "library_mean": statistics.fmean(library),
            "report_loop_mean": statistics.fmean(loop),
            "mean_difference": mean,
            "standard_error": standard_error,
            "same_within_noise": abs(mean) <= 2 * standard_error,
        }
    return summary


def format_table(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"{config['arch']} {config['height']}x{config['width']}, "
        f"{config['n_digits']}-digit sums, {config['n_samples']} images, "
        f"{config['epochs']} epochs, {len(result['runs'])} seed(s), "
        f"device {config['device']}, library variant {config['library_variant']}",
        f"{'seed':>4} {'library final/best':>20} {'report loop final/best':>24}",
    ]
    for run in result["runs"]:
        lib, loop = run["library_val_accuracy"], run["report_loop_val_accuracy"]
        lines.append(
            f"{run['seed']:>4} {lib[-1]:>12.3f} / {max(lib):.3f}"
            f" {loop[-1]:>16.3f} / {max(loop):.3f}"
        )
    for which, row in result["summary"].items():
        verdict = "same within noise" if row["same_within_noise"] else "DIFFERENT"
        lines.append(
            f"{which}: library {row['library_mean']:.3f}, loop "
            f"{row['report_loop_mean']:.3f}, difference "
            f"{row['mean_difference']:+.3f} +- {row['standard_error']:.3f} "
            f"(standard error): {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--height", type=int, default=24)
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--n-digits", type=int, default=1)
    parser.add_argument("--n-samples", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..seeds-1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument(
        "--library-variant", choices=LIBRARY_VARIANTS, default="default"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for seed in range(args.seeds):
        runs.append(compare_seed(args, seed))
        print(f"  seed {seed} done", file=sys.stderr)
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "torch": torch.__version__,
        "runs": runs,
        "summary": summarise(runs),
    }
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
