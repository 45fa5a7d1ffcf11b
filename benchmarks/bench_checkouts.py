"""Did a change cost anything? fit and predict of two checkouts, in turns.

Each measurement runs in a fresh process whose ``PYTHONPATH`` puts one
checkout's ``resnetclf`` first (the worker checks that it imported that one).
It fits ``ResNetFineTuneClassifier`` on synthetic uint8 images after a 2-batch
warm-up fit, then predicts. The checkouts take turns, in the order A B, B A,
A B, ... so that neither always runs first, for ``--rounds`` rounds; medians
are reported on the wall clock and on the CPU clock of the measuring process
(fairer on a busy machine), and the ratio of the second checkout to the
first. The public API and the library's split (``resnetclf._split``, to
count the training images) are all it uses, so any two commits since the
split compare. Example::

    git worktree add /tmp/before HEAD~1
    python benchmarks/bench_checkouts.py /tmp/before . --arch resnet18 \\
        --height 28 --width 28 --n-samples 704 --epochs 2 --rounds 4 --threads 2
    git worktree remove /tmp/before
"""

from __future__ import annotations

import os
import statistics
import subprocess
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import _harness
import _suite
from _suite import BenchConfig

# Where they differ from the suite's full defaults: a size that trains an
# epoch in seconds on a CPU.
DEFAULTS = {"height": 28, "width": 28, "n_samples": 704, "epochs": 2}
FIGURES = {
    "fit_images_per_second": "fit, epochs 2.., wall",
    "fit_call_images_per_cpu_second": "fit, whole call, CPU",
    "predict_images_per_second": "predict, wall",
    "predict_images_per_cpu_second": "predict, CPU",
}


def measure_fit_predict(config: BenchConfig) -> dict[str, Any]:
    """Fit, then predict, with the ``resnetclf`` this process imported.

    It must be the checkout that ``PYTHONPATH`` names first, where it names
    one.
    """
    import resnetclf

    package = Path(resnetclf.__file__).resolve().parent
    wanted = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    if wanted and package.parent != Path(wanted).resolve():
        raise RuntimeError(f"imported {package}, not the checkout {wanted}")
    X, y = _suite.make_data(config.n_samples, config)
    X_new, _ = _suite.make_data(config.predict_samples, config, seed_offset=1)
    n_warm = _suite.warmup_size(config, len(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _suite.make_classifier(config, max_iter=1).fit(X[:n_warm], y[:n_warm])
        clf = _suite.make_classifier(config)
        with _harness.Stopwatch() as fit_watch:
            clf.fit(X, y)
        clf.predict(X_new[: config.batch_size])  # one-off set-up
        with _harness.Stopwatch() as predict_watch:
            clf.predict(X_new)
    # Epochs 2.. leave out a fresh model's first optimizer steps.
    n_train = len(_suite.library_split(y, config)[0])
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


def _commit(checkout: str) -> str | None:
    """The checkout's commit, and ``+changes`` if its work tree differs."""
    git = ["git", "-C", checkout]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "resnetclf"])
    return head.stdout.strip() + (" +changes" if dirty.returncode else "")


def run(checkouts: Sequence[Path], config: BenchConfig, rounds: int) -> dict[str, Any]:
    """Alternate the checkouts over ``rounds``; medians and ratios.

    Runs and medians are keyed ``first`` and ``second``, so that a checkout
    compared with itself shows the noise of the machine.
    """
    paths = dict(zip(("first", "second"), (str(p.resolve()) for p in checkouts)))
    env = {"OMP_WAIT_POLICY": config.omp_wait_policy} if config.omp_wait_policy else {}
    runs: dict[str, list[dict[str, Any]]] = {which: [] for which in paths}
    for round_index in range(rounds):
        for which in list(paths)[:: 1 if round_index % 2 == 0 else -1]:
            _harness.log(f"[round {round_index + 1}/{rounds}] {which}: {paths[which]}")
            task = _harness.Task("fit-predict", {"PYTHONPATH": paths[which]}, which)
            runs[which].append(
                _harness.measure_in_subprocess(Path(__file__), task, config, env)
            )
    medians = {
        which: {k: statistics.median(r[k] for r in runs[which]) for k in FIGURES}
        for which in paths
    }
    return {
        "script": Path(__file__).name,
        "config": asdict(config),
        "rounds": rounds,
        "checkouts": paths,
        "commits": {which: _commit(path) for which, path in paths.items()},
        "machine": _harness.machine_info(_harness.resolve_device(config.device), env),
        "runs": runs,
        "medians": medians,
        "second_over_first": {
            k: medians["second"][k] / medians["first"][k] for k in FIGURES
        },
        "rounds_second_over_first": {
            k: [b[k] / a[k] for a, b in zip(runs["first"], runs["second"])]
            for k in FIGURES
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """Medians of each checkout and the ratio, one line a figure."""
    c, paths, medians = result["config"], result["checkouts"], result["medians"]
    lines = [
        f"{c['arch']} {c['height']}x{c['width']}, batch {c['batch_size']}, "
        f"{c['n_samples']} images, {c['epochs']} epochs, {c['threads']} thread(s), "
        f"{result['rounds']} rounds; medians",
        f"  first:  {paths['first']} ({result['commits']['first']})",
        f"  second: {paths['second']} ({result['commits']['second']})",
        f"{'images/s':<28}{'first':>10}{'second':>10}{'second/first':>14}"
        "  (each round)",
    ]
    for key, label in FIGURES.items():
        per_round = " ".join(
            f"{r:.2f}" for r in result["rounds_second_over_first"][key]
        )
        lines.append(
            f"{label:<28}{medians['first'][key]:>10.1f}"
            f"{medians['second'][key]:>10.1f}"
            f"{result['second_over_first'][key]:>14.3f}  ({per_round})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry point; the result (None in a worker process)."""
    parser = _suite.suite_parser(
        __doc__.split("\n\n")[0], ["epochs", "predict_samples"], WORKERS
    )
    parser.add_argument("first", type=Path, nargs="?", help="checkout A")
    parser.add_argument("second", type=Path, nargs="?", help="checkout B")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    if _harness.serve_worker(args, WORKERS, BenchConfig.from_dict):
        return None
    if args.first is None or args.second is None:
        parser.error("give two checkouts")
    for path in (args.first, args.second):
        if not (path / "resnetclf" / "__init__.py").is_file():
            parser.error(f"{path} is not a checkout of resnetclf")
    if args.in_process:
        parser.error("--in-process: each checkout needs a process of its own")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    config = _suite.config_from_args(args, DEFAULTS)
    result = run([args.first, args.second], config, args.rounds)
    print(format_table(result))
    _harness.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
