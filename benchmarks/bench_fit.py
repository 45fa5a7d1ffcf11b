"""Training speed of ``ResNetFineTuneClassifier.fit`` against plain PyTorch.

One run measures, on the same synthetic uint8 grayscale images ``(N, H, W)``:

1. **fit**: training images per second of ``fit`` over whole epochs,
   validation pass included;
2. **report-style loop**: the same for a plain PyTorch loop written the way the
   original report did it (``_report_loop.py``), on the same data and split;
3. **model step**: forward + backward + optimizer step on a batch already in
   memory, the bound no input pipeline can beat, for the network ``fit``
   trains, the way it trains it, and, for reference, for the report's step
   (3-channel stem, contiguous memory, default Adam);
4. with ``--variants``, **fit of library variants**, each with one of the
   library's speed means off (:data:`VARIANTS`): what each means is worth
   inside ``fit``, and, on a GPU, what it costs in memory.

Library fits and report-loop fits alternate, each in a fresh process; the
step layouts alternate within one. Every timing is taken on two clocks: wall
time, and the CPU time of the measuring process, which, with ``--threads 1``,
does not count the time other programs held the CPU (see ``--clock``).
Examples::

    python benchmarks/bench_fit.py --arch resnet18 --height 40 --width 168 \\
        --n-samples 640 --epochs 2 --threads 1 --clock cpu --json out.json
    python benchmarks/bench_fit.py --device cuda --arch resnet50 --height 40 \\
        --width 168 --n-samples 4096 --epochs 3 --variants no_cuda_graphs
    python benchmarks/bench_fit.py --quick --in-process   # smoke test

``bench_predict.py`` and ``bench_memory.py`` measure predict and memory; see
``docs/benchmarks.md`` for what each figure means.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import _harness
import _suite
import torch
from _harness import Stopwatch
from _peak_rss import PeakRSS
from _report_loop import report_optimizer, run_report_loop
from _suite import BenchConfig
from torch import nn

from resnetclf._acceleration.conv_weight_grad import gemm_weight_grads
from resnetclf._acceleration.cuda_graphs import CudaGraphedForward
from resnetclf._acceleration.devices import amp_dtype_for
from resnetclf._backbone import build_resnet
from resnetclf._switches import switched
from resnetclf._training import EpochLoop, autocast_context

__all__ = ["VARIANTS", "check_targets", "format_report", "main", "run_benchmark"]

# Targets set for the library's speed, for a 2-core CPU
# and batch_size=64: (arch, height, width) -> (fit / report-style loop,
# fit / model-step bound).
FIT_TARGETS: dict[tuple[str, int, int], tuple[float, float]] = {
    ("resnet18", 40, 168): (1.2, 0.9),
    ("resnet50", 40, 168): (1.4, 0.9),
    ("resnet18", 28, 28): (1.4, 0.9),
}
# The same on a CUDA GPU, ResNet50 at 40x168 in bf16 (the library's automatic
# precision there).
GPU_FIT_TARGETS: dict[tuple[str, int, int], tuple[float, float]] = {
    ("resnet50", 40, 168): (3.0, 0.85),
}
# On a CPU that computes bf16 natively, where fit trains in bf16: (fit /
# report-style loop, in fp32 as the report ran; fit / bf16 model-step bound).
BF16_FIT_TARGETS: dict[tuple[str, int, int], tuple[float, float]] = {
    ("resnet18", 40, 168): (1.8, 0.9),
    ("resnet50", 40, 168): (1.8, 0.9),
}
TARGET_BATCH_SIZE = 64
# The explicit precisions whose model step the CPU's bound is measured at.
STEP_PRECISIONS = ("fp32", "bf16")
RATIO_LABELS = {
    "fit_vs_report_loop": "fit library / report-style loop",
    "fit_vs_step_bound": "fit library / model-step bound",
    "step_folded_vs_plain": "model step folded+CL / 3-ch contiguous",
    "step_bf16_vs_fp32": "model step folded+CL, bf16 / fp32",
}
_FIT_RATES = (
    "images_per_second",
    "images_per_cpu_second",
    "all_epochs_images_per_second",
    "all_epochs_images_per_cpu_second",
    "wall_images_per_second",
)


# The library with one of its speed means off (torch_compile: on): name ->
# (estimator parameters, switches of resnetclf._switches, the library's one
# hook for benchmarks).
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # Batches gathered on the host and copied one at a time (pinned on CUDA),
    # not from a copy of the data on the device.
    "streamed_batches": ({}, {"resident_data": False}),
    "no_cudnn_autotune": ({}, {"cudnn_autotune": False}),
    # Every pass launched kernel by kernel, none replayed from a CUDA graph.
    "no_cuda_graphs": ({}, {"cuda_graphs": False}),
    # Every weight gradient from oneDNN, none as one product over the batch.
    "onednn_weight_grads": ({}, {"batched_weight_grads": False}),
    "fp32": ({"precision": "fp32"}, {}),
    "bf16": ({"precision": "bf16"}, {}),
    # Its first epoch, which compiles, is left out like every first epoch.
    "torch_compile": ({"torch_compile": True}, {}),
    "torch_compile_reduce_overhead": ({"torch_compile": "reduce-overhead"}, {}),
}
# Variants that cannot differ from the library on the other kind of device.
CUDA_ONLY = {"streamed_batches", "no_cudnn_autotune", "no_cuda_graphs"}
CPU_ONLY = {"onednn_weight_grads"}


@contextlib.contextmanager
def library_variant(name: str | None) -> Iterator[dict[str, Any]]:
    """Switch the library for the block as variant ``name`` (None: the
    library itself); yields the variant's estimator parameters."""
    params, changes = VARIANTS[name] if name else ({}, {})
    with switched(**changes):
        yield params


def epoch_rates(
    n_train: int, epoch_seconds: Sequence[float], epoch_cpu_seconds: Sequence[float]
) -> dict[str, Any]:
    """Training images per second (wall and CPU) from per-epoch seconds.

    With two epochs or more, ``images_per_second`` and ``images_per_cpu_second``
    leave out the first epoch: a fresh model's first optimizer steps allocate
    and first touch gradients and optimizer state, which a long fit (422 steps
    an epoch on the merged data set) amortises but a short benchmark epoch does
    not. ``all_epochs_*`` keep every epoch; ``basis`` says which epochs count.
    """
    skip = 1 if len(epoch_seconds) >= 2 else 0
    kept = len(epoch_seconds) - skip
    n_all = n_train * len(epoch_seconds)
    return {
        "images_per_second": n_train * kept / sum(epoch_seconds[skip:]),
        "images_per_cpu_second": n_train * kept / sum(epoch_cpu_seconds[skip:]),
        "all_epochs_images_per_second": n_all / sum(epoch_seconds),
        "all_epochs_images_per_cpu_second": n_all / sum(epoch_cpu_seconds),
        "basis": f"epochs 2..{len(epoch_seconds)}" if skip else "all epochs",
    }


@contextlib.contextmanager
def _record_epoch_cpu_seconds(record: list[float]):
    """Append the process CPU seconds of each library epoch to ``record``."""
    original = EpochLoop.run_epoch

    def run_epoch(self, *args, **kwargs):
        start = time.process_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            record.append(time.process_time() - start)

    with mock.patch.object(EpochLoop, "run_epoch", run_epoch):
        yield


def _fit_result(
    run: dict[str, Any], n_train: int, n_val: int, watch: Stopwatch
) -> dict[str, Any]:
    n_images = n_train * len(run["epoch_seconds"])
    return {
        **epoch_rates(n_train, run["epoch_seconds"], run["epoch_cpu_seconds"]),
        **run,
        "wall_images_per_second": n_images / watch.wall,
        "fit_seconds": watch.wall,
        "fit_cpu_seconds": watch.cpu,
        "n_train": n_train,
        "n_val": n_val,
    }


def measure_fit_library(
    config: BenchConfig, variant: str | None = None
) -> dict[str, Any]:
    """Time ``ResNetFineTuneClassifier.fit`` on ``n_samples`` images, as the
    library is or as one of its :data:`VARIANTS`.

    The throughput is training images per second over whole epochs: the number
    of training images (validation part excluded) times the epochs, divided by
    the sum of ``history_[i]["seconds"]``, which covers each epoch's training
    and validation passes (``images_per_second``), or by the process CPU
    seconds of the same epochs (``images_per_cpu_second``). ``fit_seconds``
    (everything ``fit`` does, model building and best-weight copies included)
    gives ``wall_images_per_second``. ``memory`` is the peak RSS added over the
    warm-up and the timed fit together: model, optimizer state, best-weight
    copy and batch activations (on a GPU, also the allocator's peak).
    """
    device = _harness.resolve_device(config.device)
    X, y = _suite.make_data(config.n_samples, config)
    train_idx, val_idx = _suite.library_split(y, config)
    with PeakRSS(device) as memory, library_variant(variant) as params:
        # A 2-batch untimed fit of the same code path first: oneDNN
        # primitives and allocator growth are not charged to the epochs.
        n_warm = _suite.warmup_size(config, len(X))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warm = _suite.make_classifier(config, max_iter=1, **params)
            warm.fit(X[:n_warm], y[:n_warm])
        clf = _suite.make_classifier(config, **params)
        epoch_cpu_seconds: list[float] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _record_epoch_cpu_seconds(epoch_cpu_seconds), Stopwatch() as watch:
                clf.fit(X, y)
    run = {
        "epoch_seconds": [float(record["seconds"]) for record in clf.history_],
        "epoch_cpu_seconds": epoch_cpu_seconds,
        "val_accuracy": [record["val_accuracy"] for record in clf.history_],
    }
    return {
        **_fit_result(run, len(train_idx), len(val_idx), watch),
        "variant": variant or "library",
        "device": str(clf.device_),
        "warnings": sorted({str(w.message) for w in caught}),
        "memory": memory.result,
    }


def measure_fit_report(config: BenchConfig) -> dict[str, Any]:
    """Time the report-style loop on the data and split of the library's fit.

    Figures as in :func:`measure_fit_library`.
    """
    device = _harness.resolve_device(config.device)
    X, y = _suite.make_data(config.n_samples, config)
    train_idx, val_idx = _suite.library_split(y, config)
    with PeakRSS(device) as memory:
        bs = config.batch_size
        run_report_loop(X, y, train_idx[: 2 * bs], val_idx[:bs], config, device, 1)
        with Stopwatch() as watch:
            run = run_report_loop(
                X, y, train_idx, val_idx, config, device, config.epochs
            )
    return {
        **_fit_result(run, len(train_idx), len(val_idx), watch),
        "device": str(device),
        "memory": memory.result,
    }


# ------------------------------------------------------------ model-step bound
def measure_step(config: BenchConfig) -> dict[str, Any]:
    """Forward + backward + optimizer step on a batch already on the device.

    ``folded_channels_last``: the network fit trains, the way fit trains it
    (grayscale folded into a 1-channel ``conv1``, channels_last memory, the
    library's Adam parameter groups and fused Adam where fit uses it, its
    autocast dtype; on the CPU its single-product weight gradients for small
    maps, on CUDA its graphed forward and backward);
    ``folded_channels_last_fp32`` and ``folded_channels_last_bf16``, on the
    CPU: the same at each explicit precision (one of them is the step fit
    takes), the bound of a fit at that precision; ``plain_contiguous``: the
    same network with the RGB stem on the gray channel repeated three times,
    contiguous memory, eager, in float32, with the report loop's optimizer
    (one group, torch's default Adam). The layouts alternate, ``step_iters``
    steps each per round, after two untimed warm-up steps each.
    """
    device = _harness.resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    X, y = _suite.make_data(config.batch_size, config)
    gray = _suite.normalise(torch.from_numpy(X)).to(device)
    targets = torch.from_numpy(y).to(device)
    layouts: dict[str, tuple[Callable, torch.optim.Optimizer, torch.Tensor]] = {}
    models: dict[str, nn.Module] = {}
    amp_dtypes: dict[str, torch.dtype | None] = {}
    plans = [
        ("folded_channels_last", 1, torch.channels_last, "auto"),
        ("plain_contiguous", 3, torch.contiguous_format, "fp32"),
    ]
    if device.type == "cpu":
        plans[1:1] = [
            (f"folded_channels_last_{p}", 1, torch.channels_last, p)
            for p in STEP_PRECISIONS
        ]
    for name, channels, memory_format, precision in plans:
        amp_dtypes[name] = amp_dtype_for(device, precision)
        torch.manual_seed(config.seed)
        model = build_resnet(config.arch, None, config.n_classes, channels)
        model = model.to(device, memory_format=memory_format).train()
        inputs = gray.expand(-1, channels, -1, -1).contiguous(
            memory_format=memory_format
        )
        forward: Callable = model
        if name.startswith("folded_channels_last"):
            if device.type == "cuda":
                forward = CudaGraphedForward(model, device, config.batch_size)
            optimizer = _suite.library_optimizer(
                model, device, config.lr, config.weight_decay
            )
        else:
            optimizer = report_optimizer(model, config)
        models[name] = model
        layouts[name] = (forward, optimizer, inputs)

    def step(name: str) -> None:
        forward, optimizer, inputs = layouts[name]
        autocast = autocast_context(device, amp_dtypes[name])
        _harness.train_step(forward, optimizer, inputs, targets, autocast)

    def library_switch(name: str) -> Callable[[], contextlib.AbstractContextManager]:
        # The network fit trains takes fit's weight gradients; the reference
        # is the plain torchvision step.
        enabled = name.startswith("folded_channels_last")
        return lambda: gemm_weight_grads(models[name], enabled=enabled)

    around = {name: library_switch(name) for name in layouts}
    for name in layouts:
        with around[name]():
            for _ in range(2):
                step(name)
    _harness.synchronize(device)

    def steps(name: str) -> Callable[[], None]:
        return lambda: [step(name) for _ in range(config.step_iters)]

    rounds = _harness.alternate(
        {name: steps(name) for name in layouts},
        config.repeats,
        device,
        around,
    )
    n_images = config.batch_size * config.step_iters
    result: dict[str, Any] = {
        name: _harness.rates(n_images, w) for name, w in rounds.items()
    }
    result["precision"] = _precision_name(amp_dtypes["folded_channels_last"])
    return result


def _precision_name(amp_dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


WORKERS: dict[str, _harness.Worker] = {
    "fit-library": measure_fit_library,
    "fit-report": measure_fit_report,
    "step": measure_step,
    **{f"fit-{v}": functools.partial(measure_fit_library, variant=v) for v in VARIANTS},
}


# ----------------------------------------------------------- ratios, report
def ratio_labels(result: dict[str, Any]) -> dict[str, str]:
    """:data:`RATIO_LABELS`, and fit library / each variant fitted."""
    variants = [name for name in result["fit"] if name in VARIANTS]
    return {**RATIO_LABELS, **{f"fit_vs_{v}": f"fit library / {v}" for v in variants}}


def compute_ratios(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """fit / report loop, fit / step bound, the two step layouts and fit /
    each variant, by clock."""
    get, ratios = _suite.get, {}
    for clock in _harness.CLOCKS:
        key = "images_per_second" if clock == "wall" else "images_per_cpu_second"
        fit = get(result, "fit", "library", key)
        step = get(result, "step", "folded_channels_last", key)
        ratios[clock] = {
            "fit_vs_report_loop": _suite.ratio(
                fit, get(result, "fit", "report_loop", key)
            ),
            "fit_vs_step_bound": _suite.ratio(fit, step),
            "step_folded_vs_plain": _suite.ratio(
                step, get(result, "step", "plain_contiguous", key)
            ),
            "step_bf16_vs_fp32": _suite.ratio(
                get(result, "step", "folded_channels_last_bf16", key),
                get(result, "step", "folded_channels_last_fp32", key),
            ),
            **{
                f"fit_vs_{name}": _suite.ratio(fit, get(result, "fit", name, key))
                for name in result["fit"]
                if name in VARIANTS
            },
        }
    return ratios


def check_targets(
    ratios: dict[str, dict[str, float | None]], config: BenchConfig
) -> list[dict[str, Any]]:
    """PASS/MISS of the fit targets, judged on ``config.clock``.

    They are stated at batch size 64 for three configurations on a 2-core CPU
    and for one on a CUDA GPU; elsewhere their status is ``"n/a"`` (the ratio
    is still shown).
    """
    key = (config.arch, config.height, config.width)
    on_gpu = config.device.startswith("cuda") or (
        config.device == "auto" and torch.cuda.is_available()
    )
    if on_gpu:
        table = GPU_FIT_TARGETS
    elif amp_dtype_for(torch.device("cpu"), "auto") == torch.bfloat16:
        table = BF16_FIT_TARGETS
    else:
        table = FIT_TARGETS
    targets = table.get(key)
    applies = targets is not None and config.batch_size == TARGET_BATCH_SIZE
    report_target, bound_target = targets or (None, None)
    return _suite.check_targets(
        ratios,
        [
            ("fit_vs_report_loop", config.clock, ">=", report_target, applies),
            ("fit_vs_step_bound", config.clock, ">=", bound_target, applies),
        ],
    )


def run_benchmark(
    config: BenchConfig,
    in_process: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Alternate library, report-loop and variant fits, then time the step;
    the JSON.

    Variants that cannot differ on the device (:data:`CUDA_ONLY`,
    :data:`CPU_ONLY`) are not fitted and listed in ``variants_skipped``.

    Returns
    -------
    dict
        The frame of :func:`_suite.run_suite` without ``raw``, ``fit``
        (``library``, ``report_loop`` and each variant: medians over the fits,
        and ``runs``), ``variants_skipped``, ``step``, ``ratios`` and
        ``targets``.
    """
    unknown = sorted(set(config.variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; pick from {', '.join(VARIANTS)}")
    device = _harness.resolve_device(config.device)
    skip = CPU_ONLY if device.type == "cuda" else CUDA_ONLY
    variants = [name for name in config.variants if name not in skip]
    fits = {"fit-library": "library", "fit-report": "report_loop"}
    fits.update({f"fit-{name}": name for name in variants})
    tasks = [_harness.Task(kind) for kind in fits] * config.repeats
    tasks.append(_harness.Task("step"))
    result = _suite.run_suite(Path(__file__), tasks, WORKERS, config, in_process, log)
    raw = result.pop("raw")
    result["fit"] = {}
    result["variants_skipped"] = [name for name in config.variants if name in skip]
    for kind, name in fits.items():
        runs = raw[kind]
        result["fit"][name] = {
            **_suite.median_of(runs, _FIT_RATES),
            "basis": runs[0]["basis"],
            "runs": runs,
        }
    result["step"] = raw["step"][0]
    result["ratios"] = compute_ratios(result)
    result["targets"] = check_targets(result["ratios"], config)
    return result


def format_report(result: dict[str, Any]) -> str:
    """The figures, ratios and target checks as a plain-text table."""
    c = BenchConfig.from_dict(result["config"])
    first = result["fit"]["library"]["runs"][0]
    library, report = result["fit"]["library"], result["fit"]["report_loop"]
    what = (
        f"{c.arch} {c.height}x{c.width}, batch {c.batch_size}, {c.n_samples} "
        f"images ({first['n_train']} train / {first['n_val']} val), {c.epochs} "
        f"epoch(s), {c.repeats} repeat(s)"
    )
    lines = _suite.header_lines(result, what) + [""]
    variants = [name for name in result["fit"] if name in VARIANTS]
    lines += _suite.throughput_lines(
        result,
        [
            ("fit: library, whole epochs incl. validation", "fit", "library"),
            ("fit: report-style loop, same data, same epochs", "fit", "report_loop"),
            *((f"fit: variant {name}", "fit", name) for name in variants),
            ("model step: folded stem, CL, as fit "
             f"({result['step'].get('precision', '?')})", "step",
             "folded_channels_last"),
            *((f"model step: folded stem, CL, {p}", "step",
               f"folded_channels_last_{p}")
              for p in STEP_PRECISIONS
              if f"folded_channels_last_{p}" in result["step"]),
            ("model step: 3-ch stem, contiguous (reference)", "step",
             "plain_contiguous"),
        ],
    )  # fmt: skip
    lines += [
        f"  (fit figures cover {library['basis']}; all epochs, wall: library "
        f"{_suite.fmt(library['all_epochs_images_per_second'])}, report loop "
        f"{_suite.fmt(report['all_epochs_images_per_second'])};",
        "   whole fit call, model build included, wall: library "
        f"{_suite.fmt(library['wall_images_per_second'])}, report loop "
        f"{_suite.fmt(report['wall_images_per_second'])})",
    ]
    gpu_peaks = {
        name: fit["runs"][0]["memory"].get("cuda_peak_allocated_bytes")
        for name, fit in result["fit"].items()
    }
    if None not in gpu_peaks.values():
        peaks = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in gpu_peaks.items())
        lines.append(f"  GPU memory, peak allocated in the first fits (MiB): {peaks}")
    if result["variants_skipped"]:
        skipped = ", ".join(result["variants_skipped"])
        lines.append(f"  (variants that cannot differ on this device: {skipped})")
    lines.append("")
    return "\n".join(lines + _suite.ratio_lines(result, ratio_labels(result)))


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry point; the result (None in a worker process)."""
    return _suite.main(
        argv,
        "Training speed of ResNetFineTuneClassifier against a plain PyTorch "
        "loop and the model-step bound.",
        ["epochs", "repeats", "step_iters", "variants", "clock"],
        WORKERS,
        run_benchmark,
        format_report,
    )


if __name__ == "__main__":
    main()
