"""Which fine-tuning methods beat the report's recipe? Test accuracy, side by side.

Every recipe trains on the same data, split, epochs and seeds, from random
initialisation (no pretrained weights can be fetched on the machines this
runs on), and is judged by the test accuracy of its best-validation epoch,
as the report judged its model::

    python benchmarks/bench_recipes.py --task digits --seeds 3 --epochs 10 \\
        --json benchmarks/results/recipes_digits.json
    python benchmarks/bench_recipes.py --task sums --n-samples 1500 \\
        --epochs 6 --seeds 3 --json benchmarks/results/recipes_sums_reduced.json

Tasks (both built by :func:`resnetclf.datasets.make_digit_sums` from
scikit-learn's real handwritten digits): ``digits``, one digit per 24x24
image, 10 classes (the CPU proxy of ``bench_accuracy.py``); ``sums``, four
digits per 40x168 image labelled with their sum, 37 classes, the report's
task (the report had 30,000 images; ``--n-samples`` says how many here).
Split 80/10/10 with :func:`resnetclf.train_val_test_split`.

Recipes:

- ``report_loop``: the report-style loop (``_report_loop.py``: per-sample
  torchvision transforms, 3 repeated channels, one Adam learning rate);
- ``defaults``: ``ResNetFineTuneClassifier`` with its defaults (layer-wise
  rates halving per stage below the head);
- ``base``: the defaults with one rate for every stage, as the report loop
  (from random initialisation there are no pretrained stages to protect);
- ``base+<method>``: ``base`` with one method of issue 12 on its own:
  ``class_weight="balanced"``, ``scoring="balanced_accuracy"``,
  ``freeze_epochs=1``, ``label_smoothing=0.1``, ``ema_decay``, ``lora_rank=8``;
- ``best``: ``base`` with every method whose mean validation accuracy beat
  ``base``'s in this run (chosen on validation, judged on test).

Each recipe's mean test accuracy is compared with the report loop's and with
``base``'s over the seeds: the mean paired difference against two standard
errors.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report_loop import run_report_loop  # noqa: E402
from _suite import BenchConfig  # noqa: E402

from resnetclf import ResNetFineTuneClassifier, train_val_test_split  # noqa: E402
from resnetclf.datasets import make_digit_sums  # noqa: E402

TASKS = {
    "digits": {"n_digits": 1, "height": 24, "width": 24, "n_samples": 1500},
    "sums": {"n_digits": 4, "height": 40, "width": 168, "n_samples": 30_000},
}

METHODS = {
    "class_weight": {"class_weight": "balanced"},
    "scoring": {"scoring": "balanced_accuracy"},
    "freeze_epochs": {"freeze_epochs": 1},
    "label_smoothing": {"label_smoothing": 0.1},
    "ema": {"ema_decay": 0.98},
    "lora": {"lora_rank": 8},
}


def recipe_params(name: str, chosen: list[str]) -> dict[str, Any] | None:
    """Estimator parameters of recipe ``name``; None for the report loop."""
    if name == "report_loop":
        return None
    if name == "defaults":
        return {}
    params: dict[str, Any] = {"layer_lr_decay": 1.0}
    if name == "best":
        for method in chosen:
            params.update(METHODS[method])
    elif name.startswith("base+"):
        params.update(METHODS[name.removeprefix("base+")])
    return params


def run_recipe(name, params, data, split, args, seed) -> dict[str, Any]:
    X, y = data
    start = time.perf_counter()
    if params is None:
        config = BenchConfig(
            arch=args.arch,
            height=X.shape[1],
            width=X.shape[2],
            batch_size=args.batch_size,
            n_samples=len(y),
            n_classes=int(y.max()) + 1,
            epochs=args.epochs,
            device="cpu",
            repeats=1,
            step_iters=1,
            predict_samples=1,
            memory_samples=1,
            seed=seed,
        )
        report = run_report_loop(
            X, y, split.train, split.val, config, torch.device("cpu"),
            args.epochs, test_idx=split.test,
        )  # fmt: skip
        val, test = max(report["val_accuracy"]), report["test_accuracy"]
        n_trainable = None
    else:
        clf = ResNetFineTuneClassifier(
            arch=args.arch,
            weights=None,
            max_iter=args.epochs,
            batch_size=args.batch_size,
            device="cpu",
            random_state=seed,
            **params,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(
                X[split.train], y[split.train], X_val=X[split.val], y_val=y[split.val]
            )
        val = max(record["val_accuracy"] for record in clf.history_)
        test = clf.score(X[split.test], y[split.test])
        n_trainable = clf.n_trainable_params_
    seconds = time.perf_counter() - start
    print(f"  seed {seed} {name:<22} val {val:.3f} test {test:.3f} "
          f"({seconds:.0f} s)", file=sys.stderr)  # fmt: skip
    return {
        "val_accuracy": val,
        "test_accuracy": test,
        "seconds": seconds,
        "n_trainable_params": n_trainable,
    }


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean of ``a - b`` over seeds, its standard error, and the verdict."""
    differences = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(differences)
    se = statistics.stdev(differences) / math.sqrt(len(a)) if len(a) > 1 else math.nan
    verdict = "noise" if not abs(mean) > 2 * se else ("BETTER" if mean > 0 else "WORSE")
    return {"difference": mean, "standard_error": se, "verdict": verdict}


def summarise(runs: dict[str, list[dict]]) -> dict[str, Any]:
    summary = {}
    for name, results in runs.items():
        test = [r["test_accuracy"] for r in results]
        row = {
            "test_mean": statistics.fmean(test),
            "test_standard_error": (
                statistics.stdev(test) / math.sqrt(len(test))
                if len(test) > 1
                else math.nan
            ),
            "val_mean": statistics.fmean(r["val_accuracy"] for r in results),
        }
        for reference in ("report_loop", "base"):
            if reference in runs and name != reference:
                other = [r["test_accuracy"] for r in runs[reference]]
                row[f"vs_{reference}"] = paired(test, other)
        summary[name] = row
    return summary


def format_table(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"task {config['task']}: {config['arch']} {config['height']}x"
        f"{config['width']}, {config['n_samples']} images (80/10/10), "
        f"{config['epochs']} epochs, seeds {config['seeds']}, random init, CPU",
        f"{'recipe':<24}{'test (mean +- se)':>20}{'vs report loop':>22}{'vs base':>22}",
    ]
    for name, row in result["summary"].items():
        cells = []
        for reference in ("report_loop", "base"):
            cmp = row.get(f"vs_{reference}")
            cells.append(
                f"{cmp['difference']:+.3f}+-{cmp['standard_error']:.3f} "
                f"{cmp['verdict']}"
                if cmp
                else "-"
            )
        lines.append(
            f"{name:<24}{row['test_mean']:>11.3f} +- "
            f"{row['test_standard_error']:.3f}{cells[0]:>22}{cells[1]:>22}"
        )
    lines.append(f"best = base + {result['best_methods'] or 'nothing'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--n-samples", type=int, help="default: the task's")
    parser.add_argument("--height", type=int, help="default: the task's")
    parser.add_argument("--width", type=int, help="default: the task's")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..seeds-1")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument(
        "--recipes",
        default="report_loop,defaults,base,"
        + ",".join(f"base+{m}" for m in METHODS)
        + ",best",
        help="comma-separated recipe names, in running order",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    task = dict(TASKS[args.task])
    for key in ("n_samples", "height", "width"):
        if getattr(args, key) is not None:
            task[key] = getattr(args, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.recipes.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    chosen: list[str] = []
    for name in names:
        if name == "best":
            base_val = statistics.fmean(r["val_accuracy"] for r in runs["base"])
            chosen = [
                method
                for method in METHODS
                if f"base+{method}" in runs
                and statistics.fmean(r["val_accuracy"] for r in runs[f"base+{method}"])
                > base_val
            ]
        for seed in range(args.seeds):
            X, y = make_digit_sums(
                task["n_samples"],
                task["n_digits"],
                (task["height"], task["width"]),
                random_state=seed,
            )
            split = train_val_test_split(y, random_state=seed)
            params = recipe_params(name, chosen)
            runs[name].append(run_recipe(name, params, (X, y), split, args, seed))
    result = {
        "config": {**vars(args), **task, "json": None},
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "methods": METHODS,
        "best_methods": chosen,
        "runs": runs,
        "summary": summarise(runs),
    }
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
