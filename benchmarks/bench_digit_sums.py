"""Four-digit sums: whole-image classifiers against reading each digit.

The report's task: 40x168 images of four handwritten digits, labelled with
their sum (37 classes). This benchmark trains each method on the same
stand-in images and scores it on one fixed test set built from handwritten
digits that no training image uses:

* ``load_digits`` is split into a source half (the stand-in backbone's
  pretraining, ``benchmarks/standin.py``) and a target half;
* the target half is split again, stratified, into a training pool and a
  test pool: training (and validation) images draw their digits from the
  first, the ``--n-test`` test images from the second, always with the same
  seed;
* each method keeps its best-validation epoch (10% of the training images,
  held out by the estimator or the report loop) and is scored on the test
  set; methods that read digits are scored digit by digit too.

Methods: ``report_loop`` (the report's own loop, ``_report_loop.py``),
``defaults`` (the estimator's defaults), ``digit_sum`` (``head="digit-sum"``);
each from random initialisation (``scratch``) and from the stand-in
(``standin``). Example (the docs' table)::

    python benchmarks/bench_digit_sums.py --methods digit_sum,defaults \\
        --inits scratch,standin --n-train 2000 --epochs 6 --seeds 3 \\
        --json benchmarks/results/digit_sums_2000x6.json

It prints one line per fit and a Markdown table (mean +- standard error
over the seeds).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import mean_se_text  # noqa: E402
from _report_loop import run_report_loop  # noqa: E402
from _suite import BenchConfig  # noqa: E402
from standin import StandinConfig, digit_halves, make_standin  # noqa: E402

from resnetclf import ResNetFineTuneClassifier  # noqa: E402
from resnetclf._acceleration.devices import cpu_has_native_bf16  # noqa: E402
from resnetclf.datasets import make_digit_sums  # noqa: E402


def resnet18_layer4_stride1() -> torchvision.models.ResNet:
    """ResNet18 whose last stage keeps layer3's resolution: at 40x168 the head
    reads a 3x11 map instead of 2x6 (same tensors, so the same weights load)."""
    model = torchvision.models.resnet18()
    block = model.layer4[0]
    block.conv1.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    return model


METHODS = {
    "report_loop": None,
    "defaults": {},
    "digit_sum": {"head": "digit-sum"},
    # The same head over a finer map: does the map's size limit the reading?
    "digit_sum_layer4_stride1": {
        "head": "digit-sum",
        "arch": resnet18_layer4_stride1,
    },
}
TEST_SEED = 12345


def digit_pools(halves_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training and test pools of ``load_digits`` rows: the target half of
    :func:`digit_halves`, split in two, stratified by digit."""
    from sklearn.datasets import load_digits

    _, target = digit_halves(halves_seed)
    labels = load_digits().target[target]
    train, test = train_test_split(
        target, test_size=0.5, stratify=labels, random_state=halves_seed
    )
    return np.sort(train), np.sort(test)


def make_images(n: int, pool: np.ndarray, seed: int, n_digits: int = 4):
    """Images, sums and the digits left to right (for scoring only)."""
    X, y, layout = make_digit_sums(
        n, n_digits=n_digits, random_state=seed, digit_indices=pool,
        return_layout=True,
    )  # fmt: skip
    return X, y, layout.digits


def run_method(method, init, data, test, args, seed, weights) -> dict[str, Any]:
    """Fit one method on one seed; its test accuracy, curve and cost."""
    X, y, _ = data
    X_test, y_test, digits_test = test
    start = time.perf_counter()
    digit_accuracy = None
    if METHODS[method] is None:
        train_idx, val_idx = train_test_split(
            np.arange(len(y)), test_size=0.1, random_state=seed
        )
        X_all = np.concatenate([X, X_test])
        y_all = np.concatenate([y, y_test])
        config = BenchConfig(
            arch=args.arch, height=X.shape[1], width=X.shape[2],
            batch_size=args.batch_size, n_samples=len(y), n_classes=37,
            epochs=args.epochs, device=args.device, repeats=1, step_iters=1,
            predict_samples=1, memory_samples=1, seed=seed,
        )  # fmt: skip
        initial = None
        if weights is not None:
            initial = torch.load(weights, map_location="cpu", weights_only=True)
        report = run_report_loop(
            X_all, y_all, train_idx, val_idx, config, torch.device(args.device),
            args.epochs, test_idx=np.arange(len(y), len(y_all)),
            initial_state=initial, stage_decay=0.5 if initial else None,
        )  # fmt: skip
        curve, test_accuracy = report["val_accuracy"], report["test_accuracy"]
        epoch_seconds = report["epoch_seconds"]
    else:
        settings = {
            "arch": args.arch,
            "weights": weights,
            "max_iter": args.epochs,
            "batch_size": args.batch_size,
            "device": args.device,
            "random_state": seed,
        }
        clf = ResNetFineTuneClassifier(**{**settings, **METHODS[method], **args.set})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X, y)
        curve = [record["val_accuracy"] for record in clf.history_]
        epoch_seconds = [record["seconds"] for record in clf.history_]
        test_accuracy = clf.score(X_test, y_test)
        if hasattr(clf, "predict_digits"):
            read = clf.predict_digits(X_test)
            digit_accuracy = float((read == digits_test).mean())
    seconds = time.perf_counter() - start
    print(
        f"  seed {seed} {init:<8} {method:<12} val {max(curve):.3f} "
        f"test {test_accuracy:.3f}"
        + (f" digits {digit_accuracy:.3f}" if digit_accuracy is not None else "")
        + f" ({seconds:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return {
        "seed": seed,
        "test_accuracy": test_accuracy,
        "digit_accuracy": digit_accuracy,
        "val_accuracy_per_epoch": curve,
        "seconds_per_epoch": float(np.mean(epoch_seconds)),
        "seconds": seconds,
    }


def markdown_table(result: dict[str, Any]) -> str:
    """The table of the docs: one row per method and start."""
    lines = [
        "| method | start | images x epochs | seeds | test accuracy (sum) "
        "| digits read | s/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, runs in result["runs"].items():
        init, method, size = _key_parts(key, result)
        lines.append(
            f"| {method} | {init} | {size} | {len(runs)} | "
            f"{mean_se_text([r['test_accuracy'] for r in runs])} | "
            f"{mean_se_text([r['digit_accuracy'] for r in runs])} | "
            f"{np.mean([r['seconds_per_epoch'] for r in runs]):.0f} |"
        )
    return "\n".join(lines)


def _key_parts(key: str, result: dict[str, Any]) -> tuple[str, str, str]:
    """``init:method[@size]`` -> init, method, "images x epochs"."""
    name, _, size = key.partition("@")
    init, method = name.split(":")
    if not size:
        size = f"{result.get('n_train')}x{result.get('epochs')}"
    return init, method, size.replace("x", " x ")


def plot_curves(result: dict[str, Any], path: Path) -> Path:
    """Validation accuracy against epochs, mean over seeds, one line a method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    for key, runs in result["runs"].items():
        init, method, size = _key_parts(key, result)
        curves = [run["val_accuracy_per_epoch"] for run in runs]
        length = min(len(curve) for curve in curves)
        mean = np.mean([curve[:length] for curve in curves], axis=0)
        label = f"{method}, {init}, {size}"
        ax.plot(range(1, length + 1), mean, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (sum)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="center right")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _parameter(text: str) -> tuple[str, Any]:
    name, _, value = text.partition("=")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a bare string


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--methods", default="report_loop,defaults,digit_sum")
    parser.add_argument("--inits", default="scratch,standin")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an estimator parameter for the library's methods, VALUE as JSON "
        "(e.g. --set batch_size=16 --set lr_schedule='\"cosine\"')",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="with --markdown: draw each method's validation accuracy per epoch",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print the table of saved results (runs of several files joined, "
        "e.g. seeds run apart); trains nothing",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    args.set = dict(_parameter(text) for text in args.set)
    if args.markdown:
        saved = [json.loads(path.read_text()) for path in args.markdown]
        result = {"runs": {}}
        for one in saved:
            size = f"{one['n_train']}x{one['epochs']}"
            for key, runs in one["runs"].items():
                result["runs"].setdefault(f"{key}@{size}", []).extend(runs)
        print(markdown_table(result))
        if args.plot is not None:
            plot_curves(result, args.plot)
        return result
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    inits = args.inits.split(",")
    unknown = sorted(set(methods) - set(METHODS)) + sorted(
        set(inits) - {"scratch", "standin"}
    )
    if unknown:
        raise SystemExit(f"unknown methods or inits: {unknown}")
    train_pool, test_pool = digit_pools()
    test = make_images(args.n_test, test_pool, TEST_SEED)
    weights = {"scratch": None}
    if "standin" in inits:
        standin = make_standin(StandinConfig(arch=args.arch))
        weights["standin"] = str(standin.path)
    runs: dict[str, list] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        data = make_images(args.n_train, train_pool, seed)
        for init in inits:
            for method in methods:
                run = run_method(method, init, data, test, args, seed, weights[init])
                runs.setdefault(f"{init}:{method}", []).append(run)
    result = {
        "script": "benchmarks/bench_digit_sums.py",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        # The library's methods train at precision="auto"; the report loop in
        # fp32, as the report ran.
        "library_precision": "bf16" if cpu_has_native_bf16() else "fp32",
        "n_train": args.n_train,
        "n_test": args.n_test,
        "epochs": args.epochs,
        "params": args.set,
        "runs": runs,
    }
    print(markdown_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
