"""The family on the report's own label: the sum as a class, as a number, and
which digits appear (multi-label), on the same images, split and budget.

The images are the classifier benchmarks' (``bench_recipes.py``): digit-sum
images from the target half of scikit-learn's handwritten digits, split
80/10/10 with :func:`resnetclf.train_val_test_split`, the backbone started
from the trained stand-in (``standin.py``) or random weights. Each model is
judged on the test part at its best validation epoch:

- ``classifier``: ``ResNetFineTuneClassifier`` with its defaults, the sum as
  one of ``9 * n_digits + 1`` classes;
- ``regressor`` / ``regressor_huber``: ``ResNetFineTuneRegressor`` on the sum
  as a number (``loss="squared_error"`` / ``"huber"``), its predictions
  rounded and clipped to a possible sum for accuracy;
- ``multilabel``: ``ResNetFineTuneClassifier`` on a 10-column indicator of
  which digits appear in the image, judged by per-label and sample-averaged
  F1 (and subset accuracy).

Example::

    python benchmarks/bench_family.py --task sums2 --init standin \\
        --n-samples 2000 --epochs 6 --seeds 3 --threads 1 \\
        --json benchmarks/results/family_standin_sums2_2000x6.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import mean_se_text  # noqa: E402
from bench_recipes import TASKS  # noqa: E402
from standin import CACHE_DIR, StandinConfig, digit_halves, make_standin  # noqa: E402

from resnetclf import (  # noqa: E402
    ResNetFineTuneClassifier,
    ResNetFineTuneRegressor,
    train_val_test_split,
)
from resnetclf.datasets import make_digit_sums  # noqa: E402

METHODS = ("classifier", "regressor", "regressor_huber", "multilabel")


def digits_present(digits: np.ndarray) -> np.ndarray:
    """A ``(n, 10)`` 0/1 matrix: which digits appear in each image."""
    present = np.zeros((len(digits), 10), dtype=np.int64)
    rows = np.repeat(np.arange(len(digits)), digits.shape[1])
    present[rows, digits.ravel()] = 1
    return present


def run_method(method, X, y, present, split, settings, n_digits) -> dict[str, Any]:
    """Fit one method on one seed; its test figures."""
    train, val, test = split.train, split.val, split.test
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "multilabel":
            model = ResNetFineTuneClassifier(**settings)
            model.fit(X[train], present[train], X_val=X[val], y_val=present[val])
            predicted = model.predict(X[test])
            per_label = f1_score(present[test], predicted, average=None)
            figures = {
                "f1_samples": f1_score(present[test], predicted, average="samples"),
                "f1_per_label": per_label.tolist(),
                "f1_macro": float(per_label.mean()),
                "subset_accuracy": float(np.mean((predicted == present[test]).all(1))),
            }
        else:
            if method == "classifier":
                model = ResNetFineTuneClassifier(**settings)
            else:
                loss = "huber" if method == "regressor_huber" else "squared_error"
                model = ResNetFineTuneRegressor(**settings, loss=loss)
            model.fit(X[train], y[train], X_val=X[val], y_val=y[val])
            raw = model.predict(X[test]).astype(np.float64)
            rounded = np.clip(np.rint(raw), 0, 9 * n_digits)
            figures = {
                "accuracy": float(np.mean(rounded == y[test])),
                "mae": float(np.mean(np.abs(raw - y[test]))),
            }
    figures["seconds"] = time.perf_counter() - start
    figures["best_epoch"] = model.best_epoch_
    return figures


def markdown_table(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = [
        "| method | seeds | test accuracy of the sum | MAE | sample F1 | "
        "macro F1 over digits | subset accuracy | s/fit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, seeds in runs.items():

        def cell(key, seeds=seeds):
            return mean_se_text([s.get(key) for s in seeds])

        lines.append(
            f"| {method} | {len(seeds)} | {cell('accuracy')} | {cell('mae')} | "
            f"{cell('f1_samples')} | {cell('f1_macro')} | "
            f"{cell('subset_accuracy')} | "
            f"{statistics.fmean(s['seconds'] for s in seeds):.0f} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("sums2", "sums"), default="sums2")
    parser.add_argument("--init", choices=("standin", "random"), default="standin")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--n-samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--standin-cache", type=Path, default=CACHE_DIR)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--markdown", type=Path, default=None, help="print a saved run's table"
    )
    return parser


def main(argv=None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if args.markdown:
        result = json.loads(args.markdown.read_text())
        print(markdown_table(result))
        return result
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; known {METHODS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    task = TASKS[args.task]
    weights, standin_info, digit_indices = None, None, None
    if args.init == "standin":
        standin = make_standin(
            StandinConfig(arch=args.arch, height=task["height"], width=task["height"]),
            cache_dir=args.standin_cache,
        )
        weights, standin_info = standin.path, standin.info
        # No handwritten image the stand-in saw appears in the task.
        digit_indices = digit_halves()[1]
    runs: dict[str, list] = {method: [] for method in methods}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        X, y, layout = make_digit_sums(
            args.n_samples,
            task["n_digits"],
            (task["height"], task["width"]),
            random_state=seed,
            digit_indices=digit_indices,
            return_layout=True,
        )
        present = digits_present(layout.digits)
        split = train_val_test_split(y, random_state=seed)
        settings = {
            "arch": args.arch,
            "weights": weights,
            "max_iter": args.epochs,
            "batch_size": args.batch_size,
            "random_state": seed,
            "device": "cpu",
        }
        for method in methods:
            figures = run_method(
                method, X, y, present, split, settings, task["n_digits"]
            )
            figures["seed"] = seed
            runs[method].append(figures)
            print(f"  seed {seed} {method:<16} {figures}", file=sys.stderr)
    result = {
        "config": {**vars(args), "json": None, "markdown": None, **task},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "standin": standin_info,
        "runs": runs,
    }
    print(markdown_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
