"""Did a change cost anything? fit and predict of two checkouts, in turns.

Each measurement runs in a fresh process whose ``PYTHONPATH`` puts one
checkout's ``resnetclf`` first (the worker checks that it imported that one).
It fits ``ResNetFineTuneClassifier`` on synthetic uint8 images after a 2-batch
warm-up fit, then predicts. The checkouts take turns, in the order A B, B A,
A B, ... so that neither always runs first, for ``--rounds`` rounds; medians
are reported on the wall clock and on the CPU clock of the measuring process
(fairer on a busy machine), and the ratio of the second checkout to the
first. Only public API is used, so any two commits compare. Example::

    git worktree add /tmp/before HEAD~1
    python benchmarks/bench_checkouts.py /tmp/before . --arch resnet18 \\
        --height 28 --width 28 --n-samples 704 --epochs 2 --rounds 4 --threads 2
    git worktree remove /tmp/before
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import _harness
import numpy as np


@dataclass(frozen=True)
class CheckoutConfig:
    """What one fit-and-predict measurement needs (see the options)."""

    arch: str
    height: int
    width: int
    batch_size: int
    n_samples: int
    n_classes: int
    epochs: int
    predict_samples: int
    threads: int | None
    checkout: str = ""
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CheckoutConfig:
        """Rebuild a config from :func:`dataclasses.asdict` output."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def measure_fit_predict(config: CheckoutConfig) -> dict[str, Any]:
    """Fit, then predict, with the ``resnetclf`` this process imported."""
    import resnetclf
    from resnetclf import ResNetFineTuneClassifier
    from resnetclf._split import stratified_holdout

    package = Path(resnetclf.__file__).resolve().parent
    if config.checkout and package.parent != Path(config.checkout).resolve():
        raise RuntimeError(f"imported {package}, not the checkout {config.checkout}")
    X, y = _harness.synthetic_images(
        config.n_samples, config.height, config.width, config.n_classes, config.seed
    )
    X_new, _ = _harness.synthetic_images(
        config.predict_samples, config.height, config.width, 2, config.seed + 1
    )
    params = {
        "arch": config.arch,
        "weights": None,
        "batch_size": config.batch_size,
        "validation_fraction": 0.1,
        "rotation_degrees": 10.0,
        "device": "cpu",
        "random_state": config.seed,
    }
    n_warm = min(len(X), int(round(2 * config.batch_size / 0.9)) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ResNetFineTuneClassifier(**params, max_iter=1).fit(X[:n_warm], y[:n_warm])
        clf = ResNetFineTuneClassifier(**params, max_iter=config.epochs)
        with _harness.Stopwatch() as fit_watch:
            clf.fit(X, y)
        clf.predict(X_new[: config.batch_size])  # one-off set-up
        with _harness.Stopwatch() as predict_watch:
            clf.predict(X_new)
    # The library's own split (its first draw of RandomState(seed)); epochs
    # 2.. leave out a fresh model's first optimizer steps.
    train_idx, _, _ = stratified_holdout(y, 0.1, np.random.RandomState(config.seed))
    n_train = len(train_idx)
    epochs = [record["seconds"] for record in clf.history_]
    kept = epochs[1:] if len(epochs) >= 2 else epochs
    return {
        "resnetclf": str(package),
        "fit_images_per_second": n_train * len(kept) / sum(kept),
        # The whole call on the CPU clock: every epoch, model building and
        # validation included, and not the time other programs held the CPU.
        "fit_call_images_per_cpu_second": n_train * len(epochs) / fit_watch.cpu,
        "fit_call_seconds": fit_watch.wall,
        "fit_call_cpu_seconds": fit_watch.cpu,
        "epoch_seconds": epochs,
        "predict_images_per_second": len(X_new) / predict_watch.wall,
        "predict_images_per_cpu_second": len(X_new) / predict_watch.cpu,
    }


WORKERS = {"fit-predict": measure_fit_predict}
FIGURES = {
    "fit_images_per_second": "fit, epochs 2.., wall",
    "fit_call_images_per_cpu_second": "fit, whole call, CPU",
    "predict_images_per_second": "predict, wall",
    "predict_images_per_cpu_second": "predict, CPU",
}


def _commit(checkout: str) -> str | None:
    """The checkout's commit, and ``+changes`` if its work tree differs."""
    git = ["git", "-C", checkout]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "resnetclf"])
    return head.stdout.strip() + (" +changes" if dirty.returncode else "")


def run(
    checkouts: Sequence[Path], config: CheckoutConfig, rounds: int, env: dict
) -> dict[str, Any]:
    """Alternate the checkouts over ``rounds``; medians and ratios."""
    names = [str(path.resolve()) for path in checkouts]
    tasks, configs = [], []
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            tasks.append(_harness.Task("fit-predict", {"PYTHONPATH": name}, name))
            configs.append(replace(config, checkout=name))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for i, (task, task_config) in enumerate(zip(tasks, configs), 1):
        _harness.log(f"[{i}/{len(tasks)}] {task.tag}")
        outcome = _harness.measure_in_subprocess(Path(__file__), task, task_config, env)
        runs[task.tag].append(outcome)
    medians = {
        name: {k: statistics.median(r[k] for r in runs[name]) for k in FIGURES}
        for name in names
    }
    first, second = names
    return {
        "config": asdict(config),
        "rounds": rounds,
        "checkouts": names,
        "commits": {name: _commit(name) for name in names},
        "machine": _harness.machine_info(_harness.resolve_device("cpu"), env),
        "runs": runs,
        "medians": medians,
        "second_over_first": {
            k: medians[second][k] / medians[first][k] for k in FIGURES
        },
        "rounds_second_over_first": {
            k: [b[k] / a[k] for a, b in zip(runs[first], runs[second])] for k in FIGURES
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """Medians of each checkout and the ratio, one line a figure."""
    c = result["config"]
    first, second = result["checkouts"]
    lines = [
        f"{c['arch']} {c['height']}x{c['width']}, batch {c['batch_size']}, "
        f"{c['n_samples']} images, {c['epochs']} epochs, {c['threads']} thread(s), "
        f"{result['rounds']} rounds; medians",
        f"  first:  {first} ({result['commits'][first]})",
        f"  second: {second} ({result['commits'][second]})",
        f"{'images/s':<28}{'first':>10}{'second':>10}{'second/first':>14}"
        "  (each round)",
    ]
    for key, label in FIGURES.items():
        per_round = " ".join(
            f"{r:.2f}" for r in result["rounds_second_over_first"][key]
        )
        lines.append(
            f"{label:<28}{result['medians'][first][key]:>10.1f}"
            f"{result['medians'][second][key]:>10.1f}"
            f"{result['second_over_first'][key]:>14.3f}  ({per_round})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry point; the result (None in a worker process)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, nargs="?", help="checkout A")
    parser.add_argument("second", type=Path, nargs="?", help="checkout B")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--height", type=int, default=28)
    parser.add_argument("--width", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=704)
    parser.add_argument("--n-classes", type=int, default=37)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--predict-samples", type=int, help="images predicted (default n-samples)"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument(
        "--omp-wait-policy",
        choices=("active", "passive"),
        help="OMP_WAIT_POLICY of the measuring processes (default: inherit)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    _harness.add_worker_arguments(parser, WORKERS)
    args = parser.parse_args(argv)
    if _harness.serve_worker(args, WORKERS, CheckoutConfig.from_dict):
        return None
    if args.first is None or args.second is None:
        parser.error("give two checkouts")
    for path in (args.first, args.second):
        if not (path / "resnetclf" / "__init__.py").is_file():
            parser.error(f"{path} is not a checkout of resnetclf")
    if args.rounds < 1 or args.epochs < 1 or args.n_samples < 2 * args.n_classes:
        parser.error("need --rounds, --epochs >= 1, --n-samples >= 2 * --n-classes")
    config = CheckoutConfig(
        arch=args.arch,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        n_samples=args.n_samples,
        n_classes=args.n_classes,
        epochs=args.epochs,
        predict_samples=args.predict_samples or args.n_samples,
        threads=args.threads,
    )
    env = {"OMP_WAIT_POLICY": args.omp_wait_policy} if args.omp_wait_policy else {}
    result = run([args.first, args.second], config, args.rounds, env)
    print(format_table(result))
    _harness.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
