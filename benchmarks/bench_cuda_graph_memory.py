"""What CUDA graphs add to fit's GPU memory.

One epoch of ``fit`` on the stub network of ``bench_memory.py`` (a few hundred
weights, so only the library's own memory shows), with and without CUDA
graphs, in one process; the peak of ``torch.cuda.max_memory_allocated``
above what was allocated before the call. The data set itself (kept on the
GPU as uint8 when it fits) is in both rows. Example::

    python benchmarks/bench_cuda_graph_memory.py --n-samples 30000
    CUBLAS_WORKSPACE_CONFIG=:4096:1 python benchmarks/bench_cuda_graph_memory.py

On a machine without CUDA the fits still run (neither row has graphs there)
and the memory columns are empty.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import _harness
import numpy as np
import torch
from bench_memory import StubResNet

import resnetclf._estimator
from resnetclf import ResNetFineTuneClassifier

VARIANTS = ("cuda_graphs", "no_cuda_graphs")
MIB = 2**20


def _patches(variant: str) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(
        mock.patch.object(
            resnetclf._estimator,
            "build_resnet",
            lambda arch, weights, n_classes, in_channels: StubResNet(
                n_classes, in_channels
            ),
        )
    )
    if variant == "no_cuda_graphs":
        stack.enter_context(
            mock.patch("resnetclf._acceleration.cuda_graphs.MIN_REPLAYS", 10**9)
        )
    return stack


def fit_peak(
    X: np.ndarray, y: np.ndarray, variant: str, args: argparse.Namespace
) -> float | None:
    """MiB that one epoch of fit allocates on the GPU at its peak; None off CUDA."""
    device = _harness.resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    clf = ResNetFineTuneClassifier(
        arch="resnet18",
        weights=None,
        max_iter=1,
        batch_size=args.batch_size,
        rotation_degrees=10,
        device=device,
        random_state=0,
    )
    with _patches(variant), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    if not cuda:
        return None
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / MIB


def run(args: argparse.Namespace) -> dict[str, Any]:
    X, y = _harness.synthetic_images(args.n_samples, args.height, args.width, 37, 0)
    fit_peak(X[: 4 * args.batch_size], y[: 4 * args.batch_size], VARIANTS[0], args)
    peaks = {variant: fit_peak(X, y, variant, args) for variant in VARIANTS}
    device = _harness.resolve_device(args.device)
    return {
        "config": vars(args),
        "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        ),
        "torch": torch.__version__,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "raw_mib": X.nbytes / MIB,
        "fit_peak_mib": peaks,
    }


def format_table(result: dict[str, Any]) -> str:
    peaks = result["fit_peak_mib"]
    lines = [
        f"device: {result['device']}, torch {result['torch']}, "
        f"CUBLAS_WORKSPACE_CONFIG={result['cublas_workspace_config']}",
        f"raw uint8 data: {result['raw_mib']:.1f} MiB",
        f"{'variant':<18}{'fit peak above start (MiB)':>28}",
    ]
    for variant, peak in peaks.items():
        lines.append(f"{variant:<18}{'n/a' if peak is None else f'{peak:.1f}':>28}")
    if None not in peaks.values():
        extra = peaks["cuda_graphs"] - peaks["no_cuda_graphs"]
        lines.append(f"added by CUDA graphs: {extra:.1f} MiB")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-samples", type=int, default=30000)
    parser.add_argument("--height", type=int, default=40)
    parser.add_argument("--width", type=int, default=168)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args)
    print(format_table(result))
    _harness.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
