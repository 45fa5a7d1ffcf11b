"""What each speed means of ``fit`` is worth: the library with one means off.

``bench_fit.py`` compares the library with code outside it; this script
compares the library with itself. Each variant fits the same data with the
same settings and differs in one thing:

- ``library``: everything on (the default);
- ``streamed_batches``: batches gathered on the host and copied one at a time
  (pinned on CUDA) instead of from a copy of the data kept on the device;
- ``no_cudnn_autotune``: cuDNN's heuristic algorithm choice, no timing;
- ``no_cuda_graphs``: every pass launched kernel by kernel, none replayed
  from a CUDA graph (``resnetclf._acceleration.cuda_graphs``);
- ``onednn_weight_grads``: every convolution's weight gradient from oneDNN,
  none from the single product over the batch that small maps get on the CPU
  (``resnetclf._acceleration.conv_weight_grad``);
- ``fp32``: ``precision="fp32"`` instead of the automatic mixed precision;
- ``torch_compile``: ``torch_compile=True`` (its first epoch, which compiles,
  is left out like every first epoch);
- ``torch_compile_reduce_overhead``: ``torch_compile="reduce-overhead"``,
  compiled and replayed as CUDA graphs.

Variants that cannot differ on the chosen device (residency, cuDNN and CUDA
graphs on a CPU, the CPU weight gradients on CUDA) are skipped. Throughput is
training images per second over epochs 2..``--epochs``, validation included, the
median over ``--repeats`` rounds (variants alternate within a round). Example::

    python benchmarks/bench_means.py --device cuda --arch resnet50 \\
        --height 40 --width 168 --n-samples 8192 --epochs 3 --json means.json
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import _harness
import numpy as np
import torch

from resnetclf import ResNetFineTuneClassifier
from resnetclf._split import stratified_holdout

VARIANTS = (
    "library",
    "streamed_batches",
    "no_cudnn_autotune",
    "no_cuda_graphs",
    "onednn_weight_grads",
    "fp32",
    "torch_compile",
    "torch_compile_reduce_overhead",
)
CUDA_ONLY = {"streamed_batches", "no_cudnn_autotune", "no_cuda_graphs"}
CPU_ONLY = {"onednn_weight_grads"}


@contextlib.contextmanager
def _variant_patches(name: str) -> Iterator[None]:
    """Switch off, for the duration, the means the variant goes without."""
    if name == "streamed_batches":
        with mock.patch("resnetclf._images._fits_on_device", return_value=False):
            yield
    elif name == "no_cudnn_autotune":
        with mock.patch(
            "resnetclf._estimator.cudnn_autotuned",
            lambda device: contextlib.nullcontext(),
        ):
            yield
    elif name == "no_cuda_graphs":
        with mock.patch("resnetclf._acceleration.cuda_graphs.MIN_REPLAYS", 10**9):
            yield
    elif name == "onednn_weight_grads":
        with mock.patch(
            "resnetclf._estimator.gemm_weight_grads",
            lambda model, enabled=True: contextlib.nullcontext(),
        ):
            yield
    else:
        yield


def _variant_params(name: str) -> dict[str, Any]:
    if name == "fp32":
        return {"precision": "fp32"}
    if name == "torch_compile":
        return {"torch_compile": True}
    if name == "torch_compile_reduce_overhead":
        return {"torch_compile": "reduce-overhead"}
    return {}


def time_fit(
    name: str, X: np.ndarray, y: np.ndarray, base_params: dict[str, Any]
) -> float:
    """Training images per second of one fit, epochs 2.. only."""
    params = {**base_params, **_variant_params(name)}
    clf = ResNetFineTuneClassifier(**params)
    with _variant_patches(name), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    # The library's own split: the first draw of RandomState(random_state).
    rng = np.random.RandomState(params["random_state"])
    train_idx, _, _ = stratified_holdout(y, params["validation_fraction"], rng)
    n_train = len(train_idx)
    seconds = [record["seconds"] for record in clf.history_[1:]]
    return n_train * len(seconds) / sum(seconds)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = _harness.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [
        name
        for name in args.variants.split(",")
        if name not in (CPU_ONLY if device.type == "cuda" else CUDA_ONLY)
    ]
    X, y = _harness.synthetic_images(
        args.n_samples, args.height, args.width, args.n_classes, 0
    )
    base_params = {
        "arch": args.arch,
        "weights": None,
        "max_iter": args.epochs,
        "batch_size": args.batch_size,
        "validation_fraction": 0.1,
        "device": str(device),
        "random_state": 0,
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    start = time.perf_counter()
    for _ in range(args.repeats):
        for name in variants:
            rates[name].append(time_fit(name, X, y, base_params))
            print(f"  {name}: {rates[name][-1]:.1f} img/s", file=sys.stderr)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    reference = medians.get("library")
    return {
        "config": vars(args) | {"json": str(args.json) if args.json else None},
        "machine": {
            **_harness.machine_info(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
        "images_per_second": rates,
        "median_images_per_second": medians,
        "library_vs_variant": {
            name: (reference / value if reference else None)
            for name, value in medians.items()
        },
        "total_seconds": time.perf_counter() - start,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"device: {result['machine']['device_name']} ({result['machine']['device']})",
        f"{'variant':<30} {'img/s':>10} {'library / variant':>18}",
    ]
    for name, rate in result["median_images_per_second"].items():
        ratio = result["library_vs_variant"][name]
        lines.append(f"{name:<30} {rate:>10.1f} {ratio:>18.2f}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--height", type=int, default=40)
    parser.add_argument("--width", type=int, default=168)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=1024)
    parser.add_argument("--n-classes", type=int, default=37)
    parser.add_argument("--epochs", type=int, default=3, help="at least 2")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; pick from {VARIANTS}")
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2: the first epoch is not timed")
    if args.n_samples < 2 * args.n_classes:
        raise SystemExit("need --n-samples >= 2 * --n-classes")
    result = run(args)
    print(format_table(result))
    _harness.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
