"""What the scripts of the suite share, on top of ``_harness``.

The configuration of a run (:class:`BenchConfig`) and its command-line
options, the synthetic data, the estimator the scripts fit with the report's
settings, the library's own split and optimizer, the plan that runs each
measurement in a fresh process (``_harness``), and the target checks and
report table. ``resnetclf`` is imported where it is used, not at module
level, so that a worker of ``bench_checkouts.py`` measures the checkout its
``PYTHONPATH`` names.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import _harness
import numpy as np
import torch
from torch import nn

SCHEMA_VERSION = 2  # 1: one bench_fit.py for fit, step, predict and memory

_FULL_DEFAULTS: dict[str, Any] = {
    "arch": "resnet18",
    "height": 40,
    "width": 168,
    "batch_size": 64,
    "n_samples": 512,
    "n_classes": 37,
    "epochs": 1,
    "repeats": 1,
    "step_iters": 8,
    "predict_samples": None,  # n_samples
    "memory_samples": 30_000,
    "variants": (),
}
_QUICK_DEFAULTS: dict[str, Any] = {
    "arch": "resnet18",
    "height": 16,
    "width": 16,
    "batch_size": 8,
    "n_samples": 32,
    "n_classes": 4,
    "epochs": 1,
    "repeats": 1,
    "step_iters": 2,
    "predict_samples": 32,
    "memory_samples": 256,
    "variants": (),
}


@dataclass(frozen=True)
class BenchConfig:
    """Everything a measurement needs; passed to worker processes as JSON.

    Attributes
    ----------
    arch : str
        torchvision ResNet builder, e.g. ``"resnet18"``.
    height, width : int
        Image size in pixels.
    batch_size : int
        Images per optimizer step and per prediction batch.
    n_samples : int
        Images given to ``fit`` (and to the report-style loop); 10% of them
        are held out for validation.
    n_classes : int
        Number of classes of the synthetic labels.
    epochs : int
        Epochs of each timed fit.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    repeats : int
        Timed fits of each kind; rounds of the step and predict timings.
    step_iters : int
        Timed optimizer steps per layout and round.
    predict_samples : int
        Images predicted per timing.
    memory_samples : int
        Images of the memory measurements.
    threads : int or None
        ``torch.set_num_threads`` in each measurement; None keeps torch's
        default.
    omp_wait_policy : {"active", "passive"} or None
        ``OMP_WAIT_POLICY`` of the measurement processes; None inherits the
        environment. On a shared machine with few cores, OpenMP threads that
        spin while waiting can slow a step down severalfold.
    clock : {"wall", "cpu"}
        The clock the speed targets are judged on. Both are always recorded;
        ``"cpu"`` (CPU seconds of the measuring process) is the fairer one on
        a loaded machine, with ``threads=1``.
    seed : int
        Seed of the data, the split and the weights.
    validation_fraction, rotation_degrees, lr, weight_decay : float
        Training settings shared by the library and the report-style loop.
    variants : tuple of str
        Library variants (``bench_fit.VARIANTS``) fitted besides the library.
    """

    arch: str
    height: int
    width: int
    batch_size: int
    n_samples: int
    n_classes: int
    epochs: int
    device: str
    repeats: int
    step_iters: int
    predict_samples: int
    memory_samples: int
    threads: int | None = None
    omp_wait_policy: str | None = None
    clock: str = "wall"
    seed: int = 0
    validation_fraction: float = 0.1
    rotation_degrees: float = 10.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    variants: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BenchConfig:
        """Rebuild a config from :func:`dataclasses.asdict` output."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# ------------------------------------------------- data, estimator, optimizer
def make_data(
    n_samples: int, config: BenchConfig, seed_offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic uint8 images ``(n_samples, H, W)`` and balanced labels.

    ``seed_offset`` is added to the seed, for a second, different array.
    """
    return _harness.synthetic_images(
        n_samples, config.height, config.width, config.n_classes,
        config.seed + seed_offset,
    )  # fmt: skip


def make_classifier(config: BenchConfig, **overrides: Any):
    """The estimator the benchmarks fit: random weights, the report's settings."""
    from resnetclf import ResNetFineTuneClassifier

    params: dict[str, Any] = {
        "arch": config.arch,
        "weights": None,
        "max_iter": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "validation_fraction": config.validation_fraction,
        "rotation_degrees": config.rotation_degrees,
        "device": config.device,
        "random_state": config.seed,
    }
    params.update(overrides)
    return ResNetFineTuneClassifier(**params)


def warmup_size(config: BenchConfig, n_available: int) -> int:
    """Images of the untimed fit before a timed one: two training batches
    once 10% is held out, and a validation batch."""
    return min(n_available, int(round(2 * config.batch_size / 0.9)) + 1)


def fitted_classifier(
    X: np.ndarray, y: np.ndarray, config: BenchConfig, **overrides: Any
):
    """A classifier after one short epoch, for timing what predict costs.

    The weights do not change predict's cost, so two batches suffice.
    ``overrides`` are further estimator parameters.
    """
    n_fit = min(len(X), 2 * config.batch_size)
    clf = make_classifier(config, max_iter=1, validation_fraction=0.0, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clf.fit(X[:n_fit], y[:n_fit])


def library_split(y: np.ndarray, config: BenchConfig) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation indices ``fit`` itself draws.

    The library's split with the RandomState it uses (random_state=seed,
    first draw), so that other code trains on the same images.
    """
    from resnetclf._split import stratified_holdout

    train_idx, val_idx, _ = stratified_holdout(
        y, config.validation_fraction, np.random.RandomState(config.seed)
    )
    return train_idx, val_idx


def library_optimizer(
    model: nn.Module, device: torch.device, lr: float = 1e-3, weight_decay=1e-4
) -> torch.optim.Optimizer:
    """The optimizer fit builds by default: Adam over the stage parameter
    groups (layer-wise rate decay 0.5), fused where fit fuses it."""
    from resnetclf._param_groups import (
        StageParamGroups,
        make_optimizer,
        stage_learning_rates,
    )

    stage_lrs = stage_learning_rates(lr, 0.5)
    stem_fold = 3 if model.conv1.in_channels == 1 else 1
    groups = StageParamGroups(model, stage_lrs, weight_decay, stem_fold).groups
    # The function fit calls, so the switches of resnetclf._switches hold.
    return make_optimizer("adam", groups, device)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W)`` -> float ``(N, 1, H, W)``, channels_last, mean =
    std = 0.5: what a plain loop does to feed the library's network."""
    batch = images.unsqueeze(1).to(torch.float32)
    return (batch * (2.0 / 255.0) - 1.0).contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------ command line
def _names(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


# Options of BenchConfig's fields: add_argument's keywords. Left unset, a
# field takes the full or the --quick default.
_OPTIONS: dict[str, dict[str, Any]] = {
    "arch": {"help": "torchvision ResNet (default resnet18)"},
    "height": {"type": int, "help": "image height (default 40)"},
    "width": {"type": int, "help": "image width (default 168)"},
    "batch_size": {"type": int, "help": "default 64"},
    "n_samples": {"type": int, "help": "images given to fit (default 512)"},
    "n_classes": {"type": int, "help": "default 37"},
    "epochs": {"type": int, "help": "epochs per timed fit (default 1)"},
    "repeats": {
        "type": int,
        "help": "timed fits of each kind, or rounds of the in-process timings; "
        "medians are reported (default 1)",
    },
    "step_iters": {"type": int, "help": "timed steps per layout and round (default 8)"},
    "predict_samples": {"type": int, "help": "images predicted (default n-samples)"},
    "memory_samples": {
        "type": int,
        "help": "images of the memory measurements (default 30000, the merged "
        "data set's size)",
    },
    "variants": {
        "type": _names,
        "help": "comma-separated library variants to fit besides the library, "
        "each with one speed means off (see bench_fit.VARIANTS)",
    },
    "clock": {
        "choices": _harness.CLOCKS,
        "default": "wall",
        "help": "clock the speed targets are judged on (both are reported): wall "
        "time, or CPU time of the measuring process, fairer on a loaded machine "
        "with --threads 1 (default wall)",
    },
}
_COMMON = ("arch", "height", "width", "batch_size", "n_samples", "n_classes")
_POSITIVE = (
    "height", "width", "batch_size", "n_samples", "n_classes", "epochs", "repeats",
    "step_iters", "predict_samples", "memory_samples",
)  # fmt: skip


def suite_parser(
    description: str, options: Sequence[str], workers: Sequence[str]
) -> argparse.ArgumentParser:
    """The options every script of the suite takes, plus ``options``.

    ``options`` names further fields of :class:`BenchConfig` the script uses
    (``"epochs"``, ``"step_iters"``, ``"clock"``, ...).
    """
    parser = argparse.ArgumentParser(description=description)
    for name in (*_COMMON, *options):
        parser.add_argument("--" + name.replace("_", "-"), **_OPTIONS[name])
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="cpu", help="default cpu"
    )
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--omp-wait-policy",
        choices=("active", "passive"),
        help="OMP_WAIT_POLICY of the measurement processes (default: inherit); "
        "passive helps on shared machines with few cores",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny configuration (resnet18, 16x16, 32 images, batch 8) for smoke "
        "tests; explicit options still win",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run all measurements in this process (faster start; memory peaks "
        "and caches carry over): for smoke tests only",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    _harness.add_worker_arguments(parser, workers)
    return parser


def config_from_args(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None
) -> BenchConfig:
    """Fill the options left unset from ``defaults`` over the full defaults,
    or from the ``--quick`` ones."""
    if args.quick:
        defaults = _QUICK_DEFAULTS
    else:
        defaults = {**_FULL_DEFAULTS, **(defaults or {})}
    values = {
        name: value if (value := getattr(args, name, None)) is not None else default
        for name, default in defaults.items()
    }
    if values["predict_samples"] is None:
        values["predict_samples"] = values["n_samples"]
    config = BenchConfig(
        **values,
        device=args.device,
        threads=args.threads,
        omp_wait_policy=args.omp_wait_policy,
        clock=getattr(args, "clock", "wall"),
        seed=args.seed,
    )
    for name in _POSITIVE:
        if getattr(config, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if config.n_classes < 2 or config.n_samples < 2 * config.n_classes:
        raise SystemExit("need n-classes >= 2 and n-samples >= 2 * n-classes")
    return config


# ---------------------------------------------------------------- running
def run_suite(
    script: Path,
    tasks: Sequence[_harness.Task],
    workers: dict[str, _harness.Worker],
    config: BenchConfig,
    in_process: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the tasks (fresh processes unless ``in_process``); the JSON's frame.

    Returns
    -------
    dict
        ``schema_version``, ``script``, ``config``, ``isolation``, ``machine``
        (with the contention before and after), ``total_seconds`` and ``raw``:
        each worker's results by name, in the order run.
    """
    env = {"OMP_WAIT_POLICY": config.omp_wait_policy} if config.omp_wait_policy else {}
    before = _harness.contention()
    start = time.perf_counter()
    outcomes = _harness.run_tasks(
        script, tasks, workers, config, threads=config.threads,
        in_process=in_process, env=env, log=log,
    )  # fmt: skip
    raw: dict[str, list[dict[str, Any]]] = {}
    for task, outcome in zip(tasks, outcomes):
        raw.setdefault(task.kind, []).append(outcome)
    after = _harness.contention()
    machine = _harness.machine_info(_harness.resolve_device(config.device), env)
    machine.update(
        loadavg_start=before["loadavg"],
        loadavg_end=after["loadavg"],
        cpu_pressure_some_avg10_start=before["cpu_pressure_some_avg10"],
        cpu_pressure_some_avg10_end=after["cpu_pressure_some_avg10"],
        worker_threads=sorted({o["process"]["torch_threads"] for o in outcomes}),
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "script": Path(script).name,
        "config": asdict(config),
        "isolation": "in-process" if in_process else "subprocess per measurement",
        "machine": machine,
        "total_seconds": time.perf_counter() - start,
        "raw": raw,
    }


def median_of(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """The median of each key over runs."""
    return {key: statistics.median(run[key] for run in runs) for key in keys}


# ---------------------------------------------------------- ratios, targets
def get(result: dict[str, Any] | None, *keys: str) -> Any:
    """``result[k1][k2]...``, or None where a level is missing."""
    value: Any = result
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, None when either is missing or zero."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def check_targets(
    ratios: dict[str, dict[str, float | None]],
    rows: Sequence[tuple[str, str, str, float | None, bool]],
) -> list[dict[str, Any]]:
    """PASS, MISS, ``"n/a"`` or ``"not measured"`` for each target row.

    Parameters
    ----------
    ratios : dict
        Ratios by basis (``"wall"``, ``"cpu"``, ``"memory"``), then by name.
    rows : sequence of tuple
        ``(name, basis, op, target, applies)``: ``op`` is ``">="`` or
        ``"<="``; a row that does not apply, or has no target, gets ``"n/a"``
        (its ratio is still shown).
    """
    checks = []
    for name, basis, op, target, applies in rows:
        value = ratios.get(basis, {}).get(name)
        if value is None:
            status = "not measured"
        elif target is None or not applies:
            status = "n/a"
        elif (value >= target) if op == ">=" else (value <= target):
            status = "PASS"
        else:
            status = "MISS"
        checks.append(
            {"name": name, "value": value, "basis": basis, "op": op,
             "target": target, "status": status}
        )  # fmt: skip
    return checks


# ----------------------------------------------------------------- report
def fmt(value: float | None, spec: str = ".1f") -> str:
    """A figure, or ``-`` when there is none."""
    return "-" if value is None else format(value, spec)


def header_lines(result: dict[str, Any], what: str) -> list[str]:
    """What was measured, on which machine, under what contention."""
    m = result["machine"]
    return [
        f"{what}, device {m['device']}",
        f"machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, torch "
        f"{m['torch']}, threads {m['worker_threads']}, OMP_WAIT_POLICY "
        f"{m['worker_env']['OMP_WAIT_POLICY'] or 'unset'}",
        f"contention: load average {m['loadavg_start']} -> {m['loadavg_end']}, "
        f"CPU pressure (some, avg10) {fmt(m['cpu_pressure_some_avg10_start'])}%"
        f" -> {fmt(m['cpu_pressure_some_avg10_end'])}%",
    ]


def throughput_lines(
    result: dict[str, Any], rows: Sequence[tuple[str, str, str]]
) -> list[str]:
    """Median images per second of ``(label, section, name)`` rows."""
    lines = [f"{'throughput (images/s, median)':<48}{'wall':>9}{'per CPU-s':>11}"]
    for label, *keys in rows:
        wall = get(result, *keys, "images_per_second")
        cpu = get(result, *keys, "images_per_cpu_second")
        lines.append(f"  {label:<46}{fmt(wall):>9}{fmt(cpu):>11}")
    return lines


def ratio_lines(result: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Each ratio on its clocks (or the memory basis), target and status."""
    clock = result["config"]["clock"]
    lines = [f"{'ratio':<42}{'wall':>7}{'cpu':>7}{'target':>9}  status ({clock} clock)"]
    checks = {check["name"]: check for check in result["targets"]}
    for name, label in labels.items():
        if "memory" in name:
            values = f"{fmt(result['ratios']['memory'].get(name), '.3f'):>14}"
        else:
            values = "".join(
                f"{fmt(result['ratios'][c].get(name), '.3f'):>7}"
                for c in _harness.CLOCKS
            )
        check = checks.get(name)
        if check is None:
            target, status = "-", "(reference)"
        else:
            target = "-" if check["target"] is None else (
                f"{check['op']} {check['target']:.2f}"
            )  # fmt: skip
            status = check["status"]
        lines.append(f"  {label:<40}{values}{target:>9}  {status}")
    return lines


def main(
    argv: Sequence[str] | None,
    description: str,
    options: Sequence[str],
    workers: dict[str, _harness.Worker],
    run_benchmark: Callable[..., dict[str, Any]],
    format_report: Callable[[dict[str, Any]], str],
) -> dict[str, Any] | None:
    """A script's command line: serve as a worker, or run, print and write.

    Returns the result, or None in a worker process.
    """
    args = suite_parser(description, options, list(workers)).parse_args(argv)
    if _harness.serve_worker(args, workers, BenchConfig.from_dict):
        return None
    result = run_benchmark(config_from_args(args), args.in_process, _harness.log)
    print(format_report(result))
    _harness.write_json(args.json, result)
    return result
