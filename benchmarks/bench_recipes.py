"""Which fine-tuning recipes beat the report's? Test accuracy, side by side.

Every recipe trains on the same data, split, epochs and seeds and is judged
by the test accuracy of its best-validation epoch, as the report judged its
model. ``--init standin`` starts from a *trained* stand-in backbone
(``standin.py``: a ResNet pretrained here on single handwritten digits from
the other half of ``load_digits``), as a user fine-tunes ImageNet weights;
``--init random`` from random initialisation. A recipe named
``scratch:<recipe>`` runs from random initialisation whatever ``--init``
says, so one run holds the reference at the same budget::

    python benchmarks/bench_recipes.py --task sums2 --init standin \\
        --n-samples 1000 --epochs 4 --seeds 3 \\
        --json benchmarks/results/recipes_standin_sums2.json

Tasks (built by :func:`resnetclf.datasets.make_digit_sums` from
scikit-learn's real handwritten digits, split 80/10/10 with
:func:`resnetclf.train_val_test_split`): ``digits``, one digit per 24x24
image (10 classes); ``sums2``, two digits per 40x168 image labelled with
their sum (19 classes); ``sums``, four (37 classes, the report's task, which
had 30,000 images). From the stand-in, target images are drawn from the
target half of the digits only, so no image the backbone saw in pretraining
appears in a target task (``--digits`` overrides).

Recipes:

- ``report_loop``: the report-style loop (``_report_loop.py``: per-sample
  torchvision transforms, 3 repeated channels, torch's Adam over per-stage
  rates ``lr * report_decay**k`` rising towards the head, the report's
  layer-wise policy), from the same initial weights;
- ``defaults``: ``ResNetFineTuneClassifier`` with its defaults;
- ``defaults+<method>``: the defaults with one setting changed, one of
  :data:`METHODS` (``layer_lr_decay`` 1.0 / 0.25 / 0 (head only),
  ``freeze_epochs`` 1 / 2, ``lora_rank`` 4 / 16, ``label_smoothing``,
  ``ema_decay``, ``class_weight``, ``scoring``, and how the rates move:
  ``lr_schedule="cosine"``, ``batch_size=16`` (twice the steps per epoch),
  ``lr`` 3e-4 / 3e-3; and ``precision`` fp32 / bf16, the arithmetic
  rather than a recipe: against ``defaults``, whose ``"auto"`` is bf16 on
  CPUs that compute it natively);
- ``best``: the defaults with, for each parameter, the method whose mean
  *validation* accuracy beat the defaults' by the most (chosen on
  validation, judged on test).

Each recipe's mean test accuracy is compared, paired over seeds, with the
report loop's, the defaults' and, for ``scratch:`` pairs, its own recipe from
the other initialisation: the mean difference against two standard errors.
The JSON keeps every run's per-epoch validation accuracy, trainable values,
seconds per step and peak memory added by the fit; ``--plot`` draws mean
validation accuracy against epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peak_rss import PeakRSS  # noqa: E402
from _report_loop import run_report_loop  # noqa: E402
from _suite import BenchConfig  # noqa: E402
from standin import CACHE_DIR, StandinConfig, digit_halves, make_standin  # noqa: E402

from resnetclf import ResNetFineTuneClassifier, train_val_test_split  # noqa: E402
from resnetclf._switches import switched  # noqa: E402
from resnetclf.datasets import make_digit_sums  # noqa: E402

TASKS = {
    "digits": {"n_digits": 1, "height": 24, "width": 24, "n_samples": 1500},
    "sums2": {"n_digits": 2, "height": 40, "width": 168, "n_samples": 30_000},
    "sums": {"n_digits": 4, "height": 40, "width": 168, "n_samples": 30_000},
}

# One setting changed from the defaults each; "<parameter>=<value>".
METHODS: dict[str, dict[str, Any]] = {
    "layer_lr_decay=1.0": {"layer_lr_decay": 1.0},
    "layer_lr_decay=0.5": {"layer_lr_decay": 0.5},
    "layer_lr_decay=0.25": {"layer_lr_decay": 0.25},
    "layer_lr_decay=0": {"layer_lr_decay": 0.0},
    "freeze_epochs=1": {"freeze_epochs": 1},
    "freeze_epochs=2": {"freeze_epochs": 2},
    "lora_rank=4": {"lora_rank": 4},
    "lora_rank=8": {"lora_rank": 8},
    "lora_rank=16": {"lora_rank": 16},
    "label_smoothing=0.1": {"label_smoothing": 0.1},
    "ema_decay=0.98": {"ema_decay": 0.98},
    "class_weight=balanced": {"class_weight": "balanced"},
    "scoring=balanced_accuracy": {"scoring": "balanced_accuracy"},
    # How fast and how far the rates move: the report gives no figures.
    "lr_schedule=cosine": {"lr_schedule": "cosine"},
    "batch_size=16": {"batch_size": 16},
    "lr=3e-4": {"lr": 3e-4},
    "lr=3e-3": {"lr": 3e-3},
    # Not a recipe but the arithmetic: does bf16 autocast cost accuracy?
    "precision=fp32": {"precision": "fp32"},
    "precision=bf16": {"precision": "bf16"},
}


# The library with one difference from the report loop taken away, to find
# which one a gap between them comes from: "<recipe>@<variant>[+<variant>]".
# Each variant sets switches of resnetclf._switches, the library's one hook
# for benchmarks.
LIBRARY_VARIANTS: dict[str, dict[str, Any]] = {
    # torch's default Adam implementation over the library's groups.
    "unfused_adam": {"fused_optimizer": False},
    # Weight decay on norms and biases too.
    "decay_all": {"decay_norms_and_biases": True},
    # Rotation by nearest neighbour, as torchvision's RandomRotation samples.
    "nearest_rotation": {"rotation_sampling": "nearest"},
    # Gray images fed to an RGB stem as three repeated channels, as the
    # report loop does, instead of folding the stem to one channel.
    "rgb_stem": {"fold_gray_stem": False},
    # Every weight gradient from oneDNN, none as one product over the batch.
    "onednn_weight_grads": {"batched_weight_grads": False},
}


@contextlib.contextmanager
def library_variants(names: list[str]):
    """Switch the library as the variants ``names`` say for the block."""
    changes: dict[str, Any] = {}
    for name in names:
        changes.update(LIBRARY_VARIANTS[name])
    with switched(**changes):
        yield


def split_variants(name: str) -> tuple[str, list[str]]:
    """``(recipe, variants)`` of a name such as ``defaults@unfused_adam``."""
    recipe, _, variants = name.partition("@")
    return recipe, variants.split("+") if variants else []


DEFAULT_RECIPES = [
    "report_loop",
    "defaults",
    "defaults+layer_lr_decay=1.0",
    "defaults+layer_lr_decay=0.25",
    "defaults+layer_lr_decay=0",
    "defaults+freeze_epochs=1",
    "defaults+freeze_epochs=2",
    "defaults+lora_rank=4",
    "defaults+lora_rank=16",
    "defaults+label_smoothing=0.1",
    "defaults+ema_decay=0.98",
    "defaults+class_weight=balanced",
    "defaults+lr_schedule=cosine",
    "defaults+batch_size=16",
    "defaults+lr=3e-4",
    "defaults+lr=3e-3",
    "best",
    "scratch:report_loop",
    "scratch:defaults",
]


def split_recipe(name: str) -> tuple[bool, str]:
    """``(from_scratch, recipe)`` of a recipe name such as ``scratch:defaults``."""
    if name.startswith("scratch:"):
        return True, name.removeprefix("scratch:")
    return False, name


def recipe_params(name: str, chosen: list[str]) -> dict[str, Any] | None:
    """Estimator parameters of recipe ``name``; None for the report loop."""
    _, name = split_recipe(name)
    name, variants = split_variants(name)
    unknown = [v for v in variants if v not in LIBRARY_VARIANTS]
    if unknown or (variants and name == "report_loop"):
        raise ValueError(f"unknown recipe {name}@{'+'.join(variants)!r}")
    if name == "report_loop":
        return None
    if name == "defaults":
        return {}
    if name == "best":
        params: dict[str, Any] = {}
        for method in chosen:
            params.update(METHODS[method])
        return params
    if name.startswith("defaults+") and name.removeprefix("defaults+") in METHODS:
        return dict(METHODS[name.removeprefix("defaults+")])
    raise ValueError(f"unknown recipe {name!r}")


def choose_best(runs: dict[str, list[dict]]) -> list[str]:
    """For each parameter, the method that beat the defaults on validation most.

    Only recipes from the main initialisation take part; the choice is made
    on mean validation accuracy, never on test accuracy.
    """
    base = statistics.fmean(r["val_accuracy"] for r in runs["defaults"])
    by_parameter: dict[str, tuple[float, str]] = {}
    for name, results in runs.items():
        method = name.removeprefix("defaults+")
        if not name.startswith("defaults+") or not results:
            continue
        if method.startswith("precision="):
            continue  # the arithmetic, not a recipe to choose
        val = statistics.fmean(r["val_accuracy"] for r in results)
        parameter = method.split("=")[0]
        if val > base and val > by_parameter.get(parameter, (-1.0, ""))[0]:
            by_parameter[parameter] = (val, method)
    return [method for _, method in by_parameter.values()]


def _report_config(args, X, y, seed) -> BenchConfig:
    return BenchConfig(
        arch=args.arch,
        height=X.shape[1],
        width=X.shape[2],
        batch_size=args.batch_size,
        n_samples=len(y),
        n_classes=int(y.max()) + 1,
        epochs=args.epochs,
        device=args.device,
        repeats=1,
        step_iters=1,
        predict_samples=1,
        memory_samples=1,
        seed=seed,
    )


def run_recipe(name, params, data, split, args, seed, weights) -> dict[str, Any]:
    """Train one recipe on one seed; its accuracies, cost and curve."""
    X, y = data
    batch_size = (params or {}).get("batch_size", args.batch_size)
    n_steps = args.epochs * math.ceil(len(split.train) / batch_size)
    start = time.perf_counter()
    with PeakRSS() as peak:
        if params is None:
            initial = None
            if weights is not None:
                initial = torch.load(weights, map_location="cpu", weights_only=True)
            report = run_report_loop(
                X, y, split.train, split.val, _report_config(args, X, y, seed),
                torch.device(args.device), args.epochs, test_idx=split.test,
                initial_state=initial, stage_decay=args.report_decay,
            )  # fmt: skip
            curve, test = report["val_accuracy"], report["test_accuracy"]
            n_trainable = None
        else:
            settings = {
                "arch": args.arch,
                "weights": weights,
                "max_iter": args.epochs,
                "batch_size": args.batch_size,
                "device": args.device,
                "random_state": seed,
            }
            clf = ResNetFineTuneClassifier(**{**settings, **params})
            variants = split_variants(split_recipe(name)[1])[1]
            with warnings.catch_warnings(), library_variants(variants):
                warnings.simplefilter("ignore")
                clf.fit(
                    X[split.train],
                    y[split.train],
                    X_val=X[split.val],
                    y_val=y[split.val],
                )
            curve = [record["val_accuracy"] for record in clf.history_]
            test = clf.score(X[split.test], y[split.test])
            n_trainable = clf.n_trainable_params_
    seconds = time.perf_counter() - start
    print(f"  seed {seed} {name:<36} val {max(curve):.3f} test {test:.3f} "
          f"({seconds:.0f} s)", file=sys.stderr)  # fmt: skip
    return {
        "seed": seed,
        "val_accuracy": max(curve),
        "test_accuracy": test,
        "val_accuracy_per_epoch": curve,
        "seconds": seconds,
        # Training and validation passes together, over the training steps.
        "seconds_per_step": seconds / n_steps,
        "n_trainable_params": n_trainable,
        "rss_added_bytes": peak.result.get("rss_added_bytes"),
    }


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean of ``a - b`` over seeds, its standard error, and the verdict."""
    differences = [x - y for x, y in zip(a, b)]  # the seeds both ran
    n = len(differences)
    mean = statistics.fmean(differences)
    se = statistics.stdev(differences) / math.sqrt(n) if n > 1 else math.nan
    verdict = "noise" if not abs(mean) > 2 * se else ("BETTER" if mean > 0 else "WORSE")
    return {"difference": mean, "standard_error": se, "verdict": verdict}


def _references(name: str, runs: dict[str, list[dict]]) -> dict[str, str]:
    """Comparison label -> recipe to compare ``name`` with."""
    scratch, recipe = split_recipe(name)
    prefix = "scratch:" if scratch else ""
    references = {
        "vs_report_loop": prefix + "report_loop",
        "vs_defaults": prefix + "defaults",
        # The same recipe from the other initialisation.
        "vs_other_init": recipe if scratch else "scratch:" + recipe,
    }
    return {
        label: other
        for label, other in references.items()
        if other != name and runs.get(other)
    }


def summarise(runs: dict[str, list[dict]]) -> dict[str, Any]:
    summary = {}
    for name, results in runs.items():
        if not results:
            continue
        test = [r["test_accuracy"] for r in results]
        curves = np.array([r["val_accuracy_per_epoch"] for r in results])
        row = {
            "test_mean": statistics.fmean(test),
            "test_standard_error": (
                statistics.stdev(test) / math.sqrt(len(test))
                if len(test) > 1
                else math.nan
            ),
            "val_mean": statistics.fmean(r["val_accuracy"] for r in results),
            "val_accuracy_per_epoch_mean": curves.mean(axis=0).tolist(),
            "seconds_per_step_mean": statistics.fmean(
                r["seconds_per_step"] for r in results
            ),
            "n_trainable_params": results[0]["n_trainable_params"],
            "rss_added_mb_max": _max_mb(r.get("rss_added_bytes") for r in results),
        }
        for label, other in _references(name, runs).items():
            row[label] = paired(test, [r["test_accuracy"] for r in runs[other]])
        summary[name] = row
    return summary


def _max_mb(values) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) / 2**20 if known else None


def describe(result: dict[str, Any]) -> str:
    """What was run, in a line or two, for the table's heading."""
    config = result["config"]
    text = (
        f"task {config['task']}: {config['arch']} {config['height']}x"
        f"{config['width']}, {config['n_samples']} images (80/10/10), "
        f"{config['epochs']} epochs, {config['seeds']} seeds, init "
        f"{config['init']}, {config['device']}; best = defaults + "
        f"{result['best_methods'] or 'nothing'}"
    )
    if result.get("standin"):
        info = result["standin"]
        text += (
            f"\nstand-in backbone (not ImageNet): {info['source_task']}, "
            f"{info['config']['n_samples']} images, {info['config']['epochs']} "
            f"epochs, made in {info['seconds']:.0f} s, source validation "
            f"accuracy {info['best_val_accuracy']:.3f}"
        )
    return text


def merged_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Saved runs of one task as one result, summarised anew (so older files
    get every column too). Runs of a recipe in several files are joined in
    file order: give the files of later seeds after those of earlier ones,
    so that the seeds pair up."""
    first = results[0]
    keys = ("task", "n_samples", "epochs", "height", "width")
    for other in results[1:]:
        if any(other["config"][k] != first["config"][k] for k in keys):
            raise ValueError(f"runs to merge must share {', '.join(keys)}")
    runs: dict[str, list[dict]] = {}
    for result in results:
        for name, recipe_runs in result["runs"].items():
            runs.setdefault(name, []).extend(recipe_runs)
    config = {**first["config"], "seeds": max(len(r) for r in runs.values())}
    return {**first, "config": config, "runs": runs, "summary": summarise(runs)}


def markdown_table(result: dict[str, Any]) -> str:
    """The summary as the docs show it: a Markdown table."""
    lines = [
        "| recipe | test accuracy (mean ± s.e.) | vs report loop | vs defaults "
        "| vs other init | trainable values | s/step | peak RSS added |",
        "|---|---:|---|---|---|---:|---:|---:|",
    ]
    for name, row in result["summary"].items():
        cells = []
        for label in ("vs_report_loop", "vs_defaults", "vs_other_init"):
            cmp = row.get(label)
            if cmp is None:
                cells.append("-")
                continue
            verdict = cmp["verdict"]
            verdict = verdict if verdict == "noise" else f"**{verdict}**"
            cells.append(
                f"{cmp['difference']:+.3f} ± {cmp['standard_error']:.3f} {verdict}"
            )
        n = row["n_trainable_params"]
        trainable = f"{n / 1e6:.2f} M" if n else "all"
        mb = row.get("rss_added_mb_max")
        memory = f"{mb:.0f} MB" if mb is not None else "-"
        lines.append(
            f"| `{name}` | {row['test_mean']:.3f} ± {row['test_standard_error']:.3f} "
            f"| {' | '.join(cells)} | {trainable} "
            f"| {row['seconds_per_step_mean']:.2f} | {memory} |"
        )
    return "\n".join(lines)


def plot_curves(result: dict[str, Any], path: Path) -> Path:
    """Mean validation accuracy against epochs, one line per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab20").colors
    for i, (name, row) in enumerate(result["summary"].items()):
        curve = row["val_accuracy_per_epoch_mean"]
        style = "--" if name.startswith("scratch:") else "-"
        ax.plot(
            range(1, len(curve) + 1), curve, style, marker="o", label=name,
            color=colours[i % len(colours)],
        )  # fmt: skip
    config = result["config"]
    ax.set(
        xlabel="epoch",
        ylabel=f"validation accuracy (mean of {config['seeds']} seeds)",
        title=f"{config['task']}, {config['height']}x{config['width']}, "
        f"{config['n_samples']} images, "
        + ("from the stand-in" if config["init"] == "standin" else "from scratch"),
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--init", choices=("standin", "random"), default="standin")
    parser.add_argument(
        "--digits",
        choices=("target", "all"),
        help="load_digits rows the task draws from (default: the target half "
        "from the stand-in, all from random initialisation)",
    )
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--n-samples", type=int, help="default: the task's")
    parser.add_argument("--height", type=int, help="default: the task's")
    parser.add_argument("--width", type=int, help="default: the task's")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="default: 0")
    parser.add_argument(
        "--report-decay",
        type=float,
        default=0.5,
        help="the report loop's rate ratio between neighbouring stages",
    )
    parser.add_argument("--standin-samples", type=int, default=4000)
    parser.add_argument("--standin-epochs", type=int, default=6)
    parser.add_argument("--standin-width", type=int, help="default: the height")
    parser.add_argument("--standin-cache", type=Path, default=CACHE_DIR)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="where every recipe trains")
    parser.add_argument(
        "--best",
        help="comma-separated methods for the 'best' recipe, chosen elsewhere "
        "(say, on a CPU run's validation); default: chosen in this run",
    )
    parser.add_argument(
        "--recipes",
        help="comma-separated recipe names, in running order (default: every "
        "recipe above; the scratch: references only with --init standin)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="validation curves (PNG)")
    parser.add_argument(
        "--markdown",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print saved runs' table in Markdown (and plot it with --plot); "
        "several files of the same task and seeds are compared as one run; "
        "trains nothing",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if args.markdown:
        result = merged_results([json.loads(p.read_text()) for p in args.markdown])
        print(markdown_table(result))
        if args.plot:
            plot_curves(result, args.plot)
        return result
    task = dict(TASKS[args.task])
    for key in ("n_samples", "height", "width"):
        if getattr(args, key) is not None:
            task[key] = getattr(args, key)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recipes:
        names = args.recipes.split(",")
    else:
        names = [
            name
            for name in DEFAULT_RECIPES
            if args.init == "standin" or not split_recipe(name)[0]
        ]
    given_best = args.best.split(",") if args.best else None
    for name in [*names, *(f"defaults+{m}" for m in given_best or [])]:
        recipe_params(name, [])  # unknown names fail before any training
    standin = None
    if args.init == "standin" and any(not split_recipe(n)[0] for n in names):
        standin = make_standin(
            StandinConfig(
                arch=args.arch,
                height=task["height"],
                width=args.standin_width or task["height"],
                n_samples=args.standin_samples,
                epochs=args.standin_epochs,
            ),
            cache_dir=args.standin_cache,
            device=args.device,
        )
    digits = args.digits or ("target" if args.init == "standin" else "all")
    digit_indices = digit_halves()[1] if digits == "target" else None

    runs: dict[str, list[dict]] = {name: [] for name in names}
    chosen: list[str] = []
    for name in names:
        if split_recipe(name)[1] == "best":
            chosen = given_best if given_best is not None else choose_best(runs)
        from_scratch = split_recipe(name)[0] or standin is None
        weights = None if from_scratch else standin.path
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            X, y = make_digit_sums(
                task["n_samples"],
                task["n_digits"],
                (task["height"], task["width"]),
                random_state=seed,
                digit_indices=digit_indices,
            )
            split = train_val_test_split(y, random_state=seed)
            params = recipe_params(name, chosen)
            runs[name].append(
                run_recipe(name, params, (X, y), split, args, seed, weights)
            )
    result = {
        "config": {**vars(args), **task, "digits": digits, "json": None, "plot": None},
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "methods": METHODS,
        "best_methods": chosen,
        "standin": standin.info if standin else None,
        "runs": runs,
        "summary": summarise(runs),
    }
    print(describe(result))
    print(markdown_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.plot:
        plot_curves(result, args.plot)
    return result


if __name__ == "__main__":
    main()
