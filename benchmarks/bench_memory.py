"""Memory ``fit`` and ``predict`` add beyond the data, the model and a batch.

Peak resident memory (``_peak_rss.py``) that one epoch of ``fit`` and one
``predict`` add on ``--memory-samples`` images (default 30,000: the merged
data set's full size), each against a plain loop that, by construction,
holds nothing but the uint8 array, the model and one batch. The overhead
(library minus plain) is compared with the raw uint8 size.

To go through 30,000 images in seconds, a ResNet-shaped network of a few
hundred weights (:class:`StubResNet`) stands in for the ResNet: every line of
the library's data path runs as it does for a real ResNet, and the network's
own share is "model and batch", which the figure excludes anyway.

Each measurement runs in a fresh process, twice: with glibc's default
``malloc`` (what a user sees, heap fragmentation included) and with
``MALLOC_MMAP_THRESHOLD_=131072``, under which every buffer of 128 KiB or
more is returned to the system when freed, so RSS follows live buffers and
shows whether the library *holds* copies. Linux only. Example::

    python benchmarks/bench_memory.py --height 40 --width 168 --threads 1 \\
        --json memory.json
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _harness
import _suite
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from _peak_rss import PeakRSS, reset_peak_rss
from _suite import BenchConfig
from bench_predict import plain_predict_uint8
from torch import nn

from resnetclf._images import random_rotate

# Memory fit and predict add beyond model and batch, in units of the raw uint8
# data size, at most.
MEMORY_TARGET = 1.2
# glibc serves allocations at least this large with mmap and unmaps them when
# freed, so RSS follows live buffers instead of heap fragmentation. The
# environment variable is glibc's own tunable.
FIXED_MMAP_THRESHOLD = 128 * 1024
ALLOCATORS: dict[str, dict[str, str | None]] = {
    "default_malloc": {"MALLOC_MMAP_THRESHOLD_": None},
    "fixed_mmap_threshold": {"MALLOC_MMAP_THRESHOLD_": str(FIXED_MMAP_THRESHOLD)},
}
CALLS = ("fit", "predict")
RATIO_LABELS = {
    "fit_memory_overhead_vs_raw": "fit memory overhead / raw uint8",
    "predict_memory_overhead_vs_raw": "predict memory overhead / raw uint8",
}


class StubResNet(torchvision.models.ResNet):
    """A ResNet-shaped network of a few hundred weights, for memory runs.

    It has ResNet's layout (``conv1``, ``bn1``, ``layer1`` .. ``layer4``,
    ``fc``) and costs next to nothing, so 30,000 images go through ``fit``
    and ``predict`` in seconds while every line of the library's data path
    runs as it does for a real ResNet. ``fit`` builds it through its ``arch``
    parameter, which takes a callable returning a torchvision ResNet; it
    folds the RGB stem to one channel for grayscale images as it would a
    ResNet's.

    Parameters
    ----------
    n_classes : int
        Outputs of ``fc``.
    in_channels : int
        Input channels of ``conv1``.
    """

    def __init__(self, n_classes: int, in_channels: int = 3) -> None:
        # ResNet's own layers are not wanted: only nn.Module's set-up.
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(
            in_channels, 8, kernel_size=3, stride=4, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Identity()
        self.layer2 = nn.Identity()
        self.layer3 = nn.Identity()
        self.layer4 = nn.Identity()
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch ``(N, C, H, W)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _stub(config: BenchConfig, in_channels: int) -> nn.Module:
    torch.manual_seed(config.seed)
    return StubResNet(config.n_classes, in_channels)


def stub_arch(config: BenchConfig) -> Callable[[], nn.Module]:
    """The ``arch`` that makes fit build the stub network, RGB stem and all."""
    return functools.partial(_stub, config, 3)


def _setup(config: BenchConfig) -> tuple[torch.device, np.ndarray, np.ndarray]:
    if not reset_peak_rss():
        raise RuntimeError("memory measurements need Linux's /proc/self/clear_refs")
    X, y = _suite.make_data(config.memory_samples, config)
    return _harness.resolve_device(config.device), X, y


def _result(X: np.ndarray, memory: PeakRSS, seconds: float) -> dict[str, Any]:
    return {
        "raw_bytes": int(X.nbytes),
        "n_images": int(len(X)),
        "seconds": seconds,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        **memory.result,
    }


def measure_fit_library(config: BenchConfig) -> dict[str, Any]:
    """Peak RSS that ``fit`` adds on ``memory_samples`` images, one epoch.

    As in every memory measurement, the process holds the uint8 array before
    the peak is reset, so what is reported is what the call adds on top.
    """
    device, X, y = _setup(config)
    clf = _suite.make_classifier(config, max_iter=1, arch=stub_arch(config))
    with PeakRSS(device) as memory:
        start = time.perf_counter()
        clf.fit(X, y)
        seconds = time.perf_counter() - start
    return _result(X, memory, seconds)


def measure_fit_plain(config: BenchConfig) -> dict[str, Any]:
    """The reference for ``fit``: one epoch of a loop that copies no data.

    The same network and optimizer as fit's, the same split, each batch
    gathered from the uint8 array, rotated, normalised and stepped on, then a
    validation pass: memory holds the array, the model and one batch.
    """
    device, X, y = _setup(config)
    with PeakRSS(device) as memory:
        start = time.perf_counter()
        train_idx, val_idx = _suite.library_split(y, config)
        model = _stub(config, 1).to(device, memory_format=torch.channels_last)
        optimizer = _suite.library_optimizer(
            model, device, config.lr, config.weight_decay
        )
        generator = torch.Generator(device=device).manual_seed(config.seed)
        order = np.random.default_rng(config.seed).permutation(train_idx)
        model.train()
        for i in range(0, len(order), config.batch_size):
            indices = order[i : i + config.batch_size]
            raw = torch.from_numpy(np.take(X, indices, axis=0)).to(device)
            inputs = raw.unsqueeze(1).to(torch.float32) / 255.0
            inputs = random_rotate(inputs, config.rotation_degrees, generator)
            inputs = (inputs * 2.0 - 1.0).contiguous(memory_format=torch.channels_last)
            targets = torch.from_numpy(y[indices]).to(device)
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(val_idx), config.batch_size):
                indices = val_idx[i : i + config.batch_size]
                raw = torch.from_numpy(np.take(X, indices, axis=0)).to(device)
                model(_suite.normalise(raw)).argmax(dim=1)
        seconds = time.perf_counter() - start
    return _result(X, memory, seconds)


def measure_predict_library(config: BenchConfig) -> dict[str, Any]:
    """Peak RSS that ``predict`` adds on ``memory_samples`` images."""
    device, X, y = _setup(config)
    clf = _suite.fitted_classifier(X, y, config, arch=stub_arch(config))
    clf.predict(X[: config.batch_size])  # one-off set-up, as in the reference
    with PeakRSS(device) as memory:
        start = time.perf_counter()
        clf.predict(X)
        seconds = time.perf_counter() - start
    return _result(X, memory, seconds)


def measure_predict_plain(config: BenchConfig) -> dict[str, Any]:
    """The reference for ``predict``: a plain eval loop converting each batch.

    Like the library, it keeps one small tensor per batch (the predicted
    classes) until the end.
    """
    device, X, _ = _setup(config)
    model = _stub(config, 1).to(device, memory_format=torch.channels_last)
    plain_predict_uint8(model, X[: config.batch_size], config.batch_size, device, None)
    with PeakRSS(device) as memory:
        start = time.perf_counter()
        plain_predict_uint8(model, X, config.batch_size, device, None)
        seconds = time.perf_counter() - start
    return _result(X, memory, seconds)


WORKERS: dict[str, _harness.Worker] = {
    "memory-fit-library": measure_fit_library,
    "memory-fit-plain": measure_fit_plain,
    "memory-predict-library": measure_predict_library,
    "memory-predict-plain": measure_predict_plain,
}


def summarise(
    tasks: Sequence[_harness.Task],
    outcomes: Sequence[dict[str, Any]],
    config: BenchConfig,
) -> dict[str, Any]:
    """Library, plain and overhead of each call under each allocator."""
    by_key = {(task.tag, task.kind): outcome for task, outcome in zip(tasks, outcomes)}
    raw_bytes = outcomes[0]["raw_bytes"]
    summary: dict[str, Any] = {
        "network": "stub",
        "n_images": config.memory_samples,
        "image_shape": [config.height, config.width],
        "raw_bytes": raw_bytes,
    }
    for allocator in ALLOCATORS:
        part: dict[str, Any] = {}
        for call in CALLS:
            library = by_key.get((allocator, f"memory-{call}-library"))
            plain = by_key.get((allocator, f"memory-{call}-plain"))
            if library is None or plain is None:
                continue
            overhead = library["rss_added_bytes"] - plain["rss_added_bytes"]
            part[call] = {
                "library": library,
                "plain": plain,
                "overhead_bytes": overhead,
                "overhead_vs_raw": overhead / raw_bytes,
                "library_added_vs_raw": library["rss_added_bytes"] / raw_bytes,
            }
        summary[allocator] = part or None
    return summary


def compute_ratios(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Overhead over the raw uint8 size: live buffers (fixed mmap threshold;
    the default allocator's figure where that was not measured), and with the
    default allocator."""
    memory: dict[str, float | None] = {}
    for call in CALLS:
        default, live = (
            _suite.get(result, "memory", allocator, call, "overhead_vs_raw")
            for allocator in ALLOCATORS
        )
        memory[f"{call}_memory_overhead_vs_raw"] = default if live is None else live
        memory[f"{call}_memory_overhead_vs_raw_default_malloc"] = default
    return {"memory": memory}


def run_benchmark(
    config: BenchConfig,
    in_process: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every memory measurement in a fresh process; the JSON (``memory``, ...).

    ``in_process`` keeps the default allocator only: it cannot be switched
    inside a running process.
    """
    allocators = ["default_malloc"] if in_process else list(ALLOCATORS)
    tasks = [
        _harness.Task(
            f"memory-{call}-{kind}", {} if in_process else ALLOCATORS[alloc], alloc
        )
        for alloc in allocators
        for call in CALLS
        for kind in ("library", "plain")
    ]
    result = _suite.run_suite(Path(__file__), tasks, WORKERS, config, in_process, log)
    raw = result.pop("raw")
    outcomes = [raw[task.kind].pop(0) for task in tasks]
    for task, outcome in zip(tasks, outcomes):
        outcome["allocator"] = task.tag
    result["memory"] = summarise(tasks, outcomes, config)
    result["ratios"] = compute_ratios(result)
    result["targets"] = _suite.check_targets(
        result["ratios"],
        [(name, "memory", "<=", MEMORY_TARGET, True) for name in RATIO_LABELS],
    )
    return result


def format_report(result: dict[str, Any]) -> str:
    """Peak RSS added by each call, the overheads and target checks."""
    c = BenchConfig.from_dict(result["config"])
    memory = result["memory"]

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value / 2**20:.1f}"

    what = (
        f"peak RSS added (MiB): {memory['n_images']} images {c.height}x{c.width}, "
        f"stub network, raw uint8 {mib(memory['raw_bytes'])}"
    )
    lines = _suite.header_lines(result, what) + [
        "",
        f"  {'':<38}{'library':>9}{'plain':>9}{'overhead':>10}{'/raw':>8}",
    ]
    for allocator, label in (
        ("fixed_mmap_threshold", "live (fixed mmap threshold)"),
        ("default_malloc", "default malloc"),
    ):
        for call in CALLS:
            part = _suite.get(memory, allocator, call)
            if part is None:
                continue
            lines.append(
                f"  {call + ', ' + label:<38}"
                f"{mib(part['library']['rss_added_bytes']):>9}"
                f"{mib(part['plain']['rss_added_bytes']):>9}"
                f"{mib(part['overhead_bytes']):>10}"
                f"{_suite.fmt(part['overhead_vs_raw'], '.3f'):>8}"
            )
    lines.append("")
    return "\n".join(lines + _suite.ratio_lines(result, RATIO_LABELS))


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry point; the result (None in a worker process)."""
    return _suite.main(
        argv,
        "Memory ResNetFineTuneClassifier's fit and predict add beyond the data, "
        "the model and a batch.",
        ["memory_samples"],
        WORKERS,
        run_benchmark,
        format_report,
    )


if __name__ == "__main__":
    main()
