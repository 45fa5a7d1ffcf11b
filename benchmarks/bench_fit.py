"""Speed and memory of ``ResNetFineTuneClassifier`` against plain PyTorch.

One run measures, on the same synthetic uint8 grayscale images ``(N, H, W)``:

1. **fit**: training images per second of ``ResNetFineTuneClassifier.fit``
   over whole epochs, validation pass included;
2. **report-style loop**: the same for a plain PyTorch loop written the way the
   original report did it (a ``Dataset`` with per-sample torchvision transforms,
   a ``DataLoader``, a 3-channel fp32 ResNet in the default memory format,
   Adam with weight decay, a validation pass each epoch);
3. **model step**: forward + backward + optimizer step on a batch already in
   memory: the bound no input pipeline can beat, for the layout the library
   uses (grayscale folded into a 1-channel stem, channels_last) and, for
   reference, for the plain 3-channel contiguous layout;
4. **predict**: images per second of ``predict`` against a plain
   ``model.eval()`` loop under ``torch.inference_mode()``, over pre-built float
   batches and over the uint8 array converted a batch at a time;
5. **memory**: peak resident memory that ``fit`` and ``predict`` add on data of
   the merged data set's full size (30,000 images), beyond what a plain loop
   that holds nothing but the uint8 array, the model and one batch needs.

Every measurement runs in a fresh Python process (the script re-invokes itself),
so memory peaks and allocator state do not leak from one into the next. Each
timing is taken on two clocks: wall time, and the CPU time of the measuring
process, which, with ``--threads 1``, does not count the time other programs
held the CPU (see ``--clock``). Examples::

    python benchmarks/bench_fit.py --arch resnet18 --height 40 --width 168 \\
        --n-samples 640 --epochs 2 --threads 1 --clock cpu --json out.json
    python benchmarks/bench_fit.py --quick --in-process   # smoke test, ~10 s

See ``docs/benchmarks.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import resnetclf
import resnetclf._estimator
from resnetclf import ResNetFineTuneClassifier
from resnetclf._acceleration.conv_weight_grad import gemm_weight_grads
from resnetclf._acceleration.cuda_graphs import CudaGraphedForward
from resnetclf._acceleration.devices import amp_dtype_for
from resnetclf._backbone import build_resnet
from resnetclf._images import random_rotate
from resnetclf._param_groups import StageParamGroups, stage_learning_rates
from resnetclf._split import stratified_holdout
from resnetclf._training import EpochLoop, autocast_context

__all__ = ["BenchConfig", "format_report", "main", "run_benchmark"]

SCHEMA_VERSION = 1

MEASUREMENTS = ("fit", "step", "predict", "memory")

# Targets of the issue "Speed and memory: a benchmark suite", for a 2-core CPU
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
TARGET_BATCH_SIZE = 64
# predict / plain eval loop, at least.
PREDICT_TARGET = 1.0
# Memory fit and predict add beyond model and batch, in units of the raw uint8
# data size, at most.
MEMORY_TARGET = 1.2
CLOCKS = ("wall", "cpu")
# glibc serves allocations at least this large with mmap and unmaps them when
# freed, so RSS follows live buffers instead of heap fragmentation (see
# measure_memory_*). The environment variable is glibc's own tunable.
FIXED_MMAP_THRESHOLD = 128 * 1024
ALLOCATORS = {
    "default_malloc": {},
    "fixed_mmap_threshold": {"MALLOC_MMAP_THRESHOLD_": str(FIXED_MMAP_THRESHOLD)},
}

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
}


# ---------------------------------------------------------------- configuration
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
    memory_network : str
        ``"stub"``: a ResNet-shaped network of a few hundred weights stands in
        for the ResNet in the memory measurements, so that 30,000 images go
        through fit and predict in seconds; ``"real"``: the real ``arch``.
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
    warmup : bool
        Run a short untimed fit (2 batches) of the same code path before each
        timed fit, so one-off setup (oneDNN primitives, allocator growth) is
        not charged to the epochs.
    seed : int
        Seed of the data, the split and the weights.
    validation_fraction, rotation_degrees, lr, weight_decay : float
        Training settings shared by the library and the report-style loop.
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
    memory_network: str = "stub"
    threads: int | None = None
    omp_wait_policy: str | None = None
    clock: str = "wall"
    warmup: bool = True
    seed: int = 0
    validation_fraction: float = 0.1
    rotation_degrees: float = 10.0
    lr: float = 1e-3
    weight_decay: float = 1e-4

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BenchConfig:
        """Rebuild a config from :func:`dataclasses.asdict` output."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    return device


def make_data(
    n_samples: int, config: BenchConfig, seed_offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic uint8 grayscale images ``(N, H, W)`` and balanced labels.

    Parameters
    ----------
    n_samples : int
        Number of images.
    config : BenchConfig
        Gives the image size, the number of classes and the seed.
    seed_offset : int, default=0
        Added to the seed, for a second, different array.

    Returns
    -------
    X : ndarray of shape (n_samples, height, width), dtype uint8
        Uniform random pixels; every page is written, so the array is resident.
    y : ndarray of shape (n_samples,), dtype int64
        Labels ``0 .. n_classes - 1`` in equal shares, shuffled.
    """
    rng = np.random.default_rng(config.seed + seed_offset)
    X = rng.integers(
        0, 256, size=(n_samples, config.height, config.width), dtype=np.uint8
    )
    y = np.arange(n_samples, dtype=np.int64) % config.n_classes
    rng.shuffle(y)
    return X, y


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall and process-CPU seconds of a block (CUDA synchronised at both ends).

    Parameters
    ----------
    device : torch.device, default=None
        Synchronised before reading the clocks when it is a GPU.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Stopwatch:
        if self.device is not None:
            _sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.device is not None:
            _sync(self.device)
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def _rates(n_images: int, watches: Sequence[Stopwatch]) -> dict[str, Any]:
    wall = [n_images / w.wall for w in watches]
    cpu = [n_images / w.cpu if w.cpu > 0 else float("nan") for w in watches]
    return {
        "images_per_second": statistics.median(wall),
        "images_per_cpu_second": statistics.median(cpu),
        "rounds_images_per_second": wall,
        "rounds_images_per_cpu_second": cpu,
    }


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W)`` -> float ``(N, 1, H, W)`` with mean = std = 0.5."""
    batch = images.unsqueeze(1).to(torch.float32)
    return (batch * (2.0 / 255.0) - 1.0).contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------ peak memory
def _proc_status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _current_rss() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS (``VmHWM``) of this process; True if it could."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") is not None


class PeakRSS:
    """Peak resident set size of this process while a block runs.

    On Linux the kernel's high-water mark ``VmHWM`` is reset on entry (by
    writing 5 to ``/proc/self/clear_refs``) and read on exit: exact, no
    sampling. Where that is not possible, a thread samples ``/proc/self/statm``
    every millisecond; without ``/proc``, ``ru_maxrss`` (a lifetime peak) is
    used. CUDA memory peaks are recorded too when ``device`` is a GPU.

    Parameters
    ----------
    device : torch.device
        The device whose allocator peak is read as well, when it is CUDA.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.result: dict[str, Any] = {}
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _current_rss()
            if rss is not None:
                self._sampled = max(self._sampled, rss)
            time.sleep(0.001)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.before = _current_rss()
        if self.before is None:
            self.method = "ru_maxrss (lifetime peak, not reset)"
        elif _reset_peak_rss():
            self.method = "VmHWM reset via /proc/self/clear_refs"
        else:
            self.method = "sampling /proc/self/statm every 1 ms"
            self._sampled = self.before
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_before = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._sampled, _current_rss() or 0)
        elif self.before is None:
            scale = 1 if sys.platform == "darwin" else 1024
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        else:
            peak = _proc_status_bytes("VmHWM") or 0
        before = self.before or 0
        self.result = {
            "rss_before_bytes": before,
            "rss_peak_bytes": peak,
            "rss_added_bytes": peak - before,
            "method": self.method,
        }
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.result["cuda_allocated_before_bytes"] = self._cuda_before
            self.result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(
                self.device
            )


# ------------------------------------------------------------------ the library
def make_classifier(config: BenchConfig, **overrides: Any) -> ResNetFineTuneClassifier:
    """The estimator the benchmark fits: random weights, the report's settings."""
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


def _split(y: np.ndarray, config: BenchConfig) -> tuple[np.ndarray, np.ndarray]:
    # The library's own split with the RandomState it uses (random_state=seed,
    # first draw): the same training and validation images for both fits.
    train_idx, val_idx, _ = stratified_holdout(
        y, config.validation_fraction, np.random.RandomState(config.seed)
    )
    return train_idx, val_idx


def _warmup_size(config: BenchConfig, n_available: int) -> int:
    # Two training batches once 10% is held out, and a validation batch.
    return min(n_available, int(round(2 * config.batch_size / 0.9)) + 1)


def epoch_rates(
    n_train: int, epoch_seconds: Sequence[float], epoch_cpu_seconds: Sequence[float]
) -> dict[str, Any]:
    """Training images per second (wall and CPU) from per-epoch seconds.

    With two epochs or more, ``images_per_second`` and ``images_per_cpu_second``
    leave out the first epoch: a fresh model's first optimizer steps allocate
    and first touch gradients and optimizer state, which a long fit (422 steps
    an epoch on the merged data set) amortises but a short benchmark epoch does
    not. ``all_epochs_*`` keep every epoch.

    Parameters
    ----------
    n_train : int
        Training images per epoch.
    epoch_seconds, epoch_cpu_seconds : sequence of float
        Wall and CPU seconds of each epoch, training and validation passes.

    Returns
    -------
    rates : dict
        The rates and ``basis``, which epochs they cover.
    """
    skip = 1 if len(epoch_seconds) >= 2 else 0
    kept = len(epoch_seconds) - skip
    return {
        "images_per_second": n_train * kept / sum(epoch_seconds[skip:]),
        "images_per_cpu_second": n_train * kept / sum(epoch_cpu_seconds[skip:]),
        "all_epochs_images_per_second": n_train
        * len(epoch_seconds)
        / sum(epoch_seconds),
        "all_epochs_images_per_cpu_second": n_train
        * len(epoch_cpu_seconds)
        / sum(epoch_cpu_seconds),
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


def measure_fit_library(config: BenchConfig) -> dict[str, Any]:
    """Time ``ResNetFineTuneClassifier.fit`` on ``n_samples`` images.

    The throughput is training images per second over whole epochs: the number
    of training images (validation part excluded) times the epochs, divided by
    the sum of ``history_[i]["seconds"]``, which covers each epoch's training
    and validation passes (``images_per_second``), or by the process CPU
    seconds of the same epochs (``images_per_cpu_second``). ``fit_seconds``
    (everything ``fit`` does, model building and best-weight copies included)
    gives ``wall_images_per_second``. ``memory`` is the peak RSS added over the
    warm-up and the timed fit together: model, optimizer state, best-weight
    copy and batch activations.
    """
    device = resolve_device(config.device)
    X, y = make_data(config.n_samples, config)
    train_idx, val_idx = _split(y, config)
    with PeakRSS(device) as memory:
        if config.warmup:
            n_warm = _warmup_size(config, len(X))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make_classifier(config, max_iter=1).fit(X[:n_warm], y[:n_warm])
        clf = make_classifier(config)
        epoch_cpu_seconds: list[float] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _record_epoch_cpu_seconds(epoch_cpu_seconds), Stopwatch() as watch:
                clf.fit(X, y)
    epoch_seconds = [float(record["seconds"]) for record in clf.history_]
    n_images = len(train_idx) * len(epoch_seconds)
    return {
        **epoch_rates(len(train_idx), epoch_seconds, epoch_cpu_seconds),
        "wall_images_per_second": n_images / watch.wall,
        "epoch_seconds": epoch_seconds,
        "epoch_cpu_seconds": epoch_cpu_seconds,
        "fit_seconds": watch.wall,
        "fit_cpu_seconds": watch.cpu,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "val_accuracy": [record["val_accuracy"] for record in clf.history_],
        "device": str(clf.device_),
        "warnings": sorted({str(w.message) for w in caught}),
        "memory": memory.result,
    }


# ---------------------------------------------------------- report-style loop
def _three_channels(image: torch.Tensor) -> torch.Tensor:
    return image.repeat(3, 1, 1)


class ReportStyleDataset(Dataset):
    """Images transformed one at a time, as the report's ``Dataset`` did.

    Parameters
    ----------
    images : ndarray of shape (n_samples, height, width), dtype uint8
        Grayscale images.
    labels : ndarray of shape (n_samples,)
        Class indices.
    transform : callable
        Applied to each image (an ``(H, W)`` uint8 array).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[np.ndarray], torch.Tensor],
    ) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


def report_transforms(rotation_degrees: float) -> tuple[Callable, Callable]:
    """The report's per-sample training and validation transforms."""
    normalize = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    to_rgb = transforms.Lambda(_three_channels)
    train = transforms.Compose(
        [
            transforms.ToTensor(),
            to_rgb,
            transforms.RandomRotation(rotation_degrees),
            normalize,
        ]
    )
    val = transforms.Compose([transforms.ToTensor(), to_rgb, normalize])
    return train, val


def run_report_loop(
    X: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: BenchConfig,
    device: torch.device,
    epochs: int,
) -> dict[str, Any]:
    """Train as the report did; return per-epoch seconds and accuracies.

    Each epoch's time covers its training pass and its validation pass, like
    the library's ``history_[i]["seconds"]``; the copy of the best weights
    after it is not timed (nor is it in the library's figure).
    """
    train_tf, val_tf = report_transforms(config.rotation_degrees)
    train_loader = DataLoader(
        ReportStyleDataset(X[train_idx], y[train_idx], train_tf),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=0,
    )
    val_loader = DataLoader(
        ReportStyleDataset(X[val_idx], y[val_idx], val_tf),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=0,
    )
    torch.manual_seed(config.seed)
    model = getattr(torchvision.models, config.arch)(weights=None)
    model.fc = nn.Linear(model.fc.in_features, config.n_classes)
    model = model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    best_accuracy, best_state = -1.0, None
    epoch_seconds, epoch_cpu_seconds, accuracies = [], [], []
    for _ in range(epochs):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.train()
        running_loss = 0.0
        for inputs, targets in train_loader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * inputs.size(0)
        model.eval()
        correct = 0
        with torch.no_grad():
            for inputs, targets in val_loader:
                inputs, targets = inputs.to(device), targets.to(device)
                correct += (model(inputs).argmax(dim=1) == targets).sum().item()
        epoch_seconds.append(time.perf_counter() - start)
        epoch_cpu_seconds.append(time.process_time() - cpu_start)
        accuracy = correct / max(1, len(val_idx))
        accuracies.append(accuracy)
        if accuracy > best_accuracy:
            best_accuracy, best_state = accuracy, copy.deepcopy(model.state_dict())
    del best_state
    return {
        "epoch_seconds": epoch_seconds,
        "epoch_cpu_seconds": epoch_cpu_seconds,
        "val_accuracy": accuracies,
    }


def measure_fit_report(config: BenchConfig) -> dict[str, Any]:
    """Time the report-style loop on the data and split of the library's fit.

    Figures as in :func:`measure_fit_library`.
    """
    device = resolve_device(config.device)
    X, y = make_data(config.n_samples, config)
    train_idx, val_idx = _split(y, config)
    with PeakRSS(device) as memory:
        if config.warmup:
            bs = config.batch_size
            run_report_loop(X, y, train_idx[: 2 * bs], val_idx[:bs], config, device, 1)
        with Stopwatch() as watch:
            run = run_report_loop(
                X, y, train_idx, val_idx, config, device, config.epochs
            )
    n_images = len(train_idx) * config.epochs
    return {
        **epoch_rates(len(train_idx), run["epoch_seconds"], run["epoch_cpu_seconds"]),
        "wall_images_per_second": n_images / watch.wall,
        "epoch_seconds": run["epoch_seconds"],
        "epoch_cpu_seconds": run["epoch_cpu_seconds"],
        "fit_seconds": watch.wall,
        "fit_cpu_seconds": watch.cpu,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "val_accuracy": run["val_accuracy"],
        "device": str(device),
        "memory": memory.result,
    }


# ------------------------------------------------------------ model-step bound
def _library_optimizer(
    model: nn.Module, config: BenchConfig, device: torch.device
) -> torch.optim.Optimizer:
    # The optimizer fit builds: Adam over the library's stage parameter
    # groups, fused wherever fit fuses it.
    stage_lrs = stage_learning_rates(config.lr, 0.5)
    stem_fold = 3 if model.conv1.in_channels == 1 else 1
    groups = StageParamGroups(model, stage_lrs, config.weight_decay, stem_fold).groups
    return resnetclf._estimator._make_optimizer("adam", groups, device)


def _report_optimizer(model: nn.Module, config: BenchConfig) -> torch.optim.Adam:
    # The report loop's: one group, torch's default Adam implementation.
    return torch.optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )


def measure_step(config: BenchConfig) -> dict[str, Any]:
    """Forward + backward + optimizer step on a batch already on the device.

    ``folded_channels_last``: the network fit trains, the way fit trains it
    (grayscale folded into a 1-channel ``conv1``, channels_last memory, the
    library's Adam parameter groups and fused Adam where fit uses it, its
    autocast dtype; on the CPU its single-product weight gradients for small
    maps, on CUDA its graphed forward and backward); ``plain_contiguous``:
    the same network with the RGB stem on the gray channel repeated three
    times, contiguous memory, eager, with the report loop's optimizer (one
    group, torch's default Adam). The two layouts alternate, ``step_iters``
    steps each per round, after two untimed warm-up steps each.
    """
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    amp_dtype = amp_dtype_for(device, "auto")
    X, y = make_data(config.batch_size, config)
    gray = _normalise(torch.from_numpy(X)).to(device)
    targets = torch.from_numpy(y).to(device)
    layouts: dict[str, tuple[Callable, torch.optim.Optimizer, torch.Tensor]] = {}
    models: dict[str, nn.Module] = {}
    for name, channels, memory_format in (
        ("folded_channels_last", 1, torch.channels_last),
        ("plain_contiguous", 3, torch.contiguous_format),
    ):
        torch.manual_seed(config.seed)
        model = build_resnet(config.arch, None, config.n_classes, channels)
        model = model.to(device, memory_format=memory_format).train()
        inputs = gray.expand(-1, channels, -1, -1).contiguous(
            memory_format=memory_format
        )
        forward: Callable = model
        if name == "folded_channels_last" and device.type == "cuda":
            forward = CudaGraphedForward(model, device, config.batch_size)
        models[name] = model
        if name == "folded_channels_last":
            optimizer = _library_optimizer(model, config, device)
        else:
            optimizer = _report_optimizer(model, config)
        layouts[name] = (forward, optimizer, inputs)

    def step(forward: Callable, optimizer: torch.optim.Optimizer, inputs) -> None:
        with autocast_context(device, amp_dtype):
            loss = F.cross_entropy(forward(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for name, (forward, optimizer, inputs) in layouts.items():
        with gemm_weight_grads(models[name], enabled=name == "folded_channels_last"):
            for _ in range(2):
                step(forward, optimizer, inputs)
    _sync(device)
    rounds: dict[str, list[Stopwatch]] = {name: [] for name in layouts}
    for _ in range(config.repeats):
        for name, (forward, optimizer, inputs) in layouts.items():
            # The network fit trains takes fit's weight gradients; the
            # reference is the plain torchvision step.
            library = name == "folded_channels_last"
            with (
                gemm_weight_grads(models[name], enabled=library),
                Stopwatch(device) as watch,
            ):
                for _ in range(config.step_iters):
                    step(forward, optimizer, inputs)
            rounds[name].append(watch)
    n_images = config.batch_size * config.step_iters
    return {name: _rates(n_images, watches) for name, watches in rounds.items()}


# ---------------------------------------------------------------------- predict
def _fitted_classifier(
    X: np.ndarray, y: np.ndarray, config: BenchConfig
) -> ResNetFineTuneClassifier:
    # One short epoch: only the predict path is timed; the weights do not
    # change its cost.
    n_fit = min(len(X), 2 * config.batch_size)
    clf = make_classifier(config, max_iter=1, validation_fraction=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clf.fit(X[:n_fit], y[:n_fit])


def plain_predict_prebuilt(
    model: nn.Module, batches: Sequence[torch.Tensor], amp_dtype: torch.dtype | None
) -> torch.Tensor:
    """A plain ``model.eval()`` loop over float batches already on the device."""
    model.eval()
    predictions = []
    with (
        torch.inference_mode(),
        torch.autocast(
            batches[0].device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ),
    ):
        for batch in batches:
            predictions.append(model(batch).argmax(dim=1))
    return torch.cat(predictions).cpu()


def plain_predict_uint8(
    model: nn.Module,
    X: np.ndarray,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """A plain eval loop that also converts each uint8 batch to float."""
    model.eval()
    predictions = []
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None),
    ):
        for start in range(0, len(X), batch_size):
            raw = torch.from_numpy(X[start : start + batch_size]).to(device)
            predictions.append(model(_normalise(raw)).argmax(dim=1))
    return torch.cat(predictions).cpu()


def measure_predict(config: BenchConfig) -> dict[str, Any]:
    """Images per second of ``predict`` and of two plain eval loops.

    All three run the fitted ``module_`` itself (folded stem, channels_last), so
    the ratios show what the library's predict path costs on top of the
    network. They alternate, ``repeats`` rounds, after an untimed warm-up.
    """
    device = resolve_device(config.device)
    amp_dtype = amp_dtype_for(device, "auto")
    X_fit, y_fit = make_data(config.n_samples, config)
    X, _ = make_data(config.predict_samples, config, seed_offset=1)
    clf = _fitted_classifier(X_fit, y_fit, config)
    model = clf.module_.to(device)
    bs = config.batch_size
    batches = [
        _normalise(torch.from_numpy(X[i : i + bs])).to(device)
        for i in range(0, len(X), bs)
    ]
    runs: dict[str, Callable[[], object]] = {
        "library": lambda: clf.predict(X),
        "plain_prebuilt": lambda: plain_predict_prebuilt(model, batches, amp_dtype),
        "plain_convert": lambda: plain_predict_uint8(model, X, bs, device, amp_dtype),
    }
    # Warm-up on one batch each.
    clf.predict(X[:bs])
    plain_predict_prebuilt(model, batches[:1], amp_dtype)
    plain_predict_uint8(model, X[:bs], bs, device, amp_dtype)
    rounds: dict[str, list[Stopwatch]] = {name: [] for name in runs}
    for _ in range(config.repeats):
        for name, run in runs.items():
            with Stopwatch(device) as watch:
                run()
            rounds[name].append(watch)
    agree = bool(
        np.array_equal(
            clf.classes_[plain_predict_uint8(model, X, bs, device, amp_dtype).numpy()],
            clf.predict(X),
        )
    )
    result: dict[str, Any] = {
        name: _rates(len(X), watches) for name, watches in rounds.items()
    }
    result["n_images"] = int(len(X))
    result["predictions_agree"] = agree
    return result


# ------------------------------------------------------------------------ memory
class StubResNet(nn.Module):
    """A ResNet-shaped network of a few hundred weights, for memory runs.

    It has the attributes the library's stage handling uses (``conv1``,
    ``bn1``, ``layer1`` .. ``layer4``, ``fc``) and costs next to nothing, so
    30,000 images go through ``fit`` and ``predict`` in seconds while every
    line of the library's data path runs as it does for a real ResNet.

    Parameters
    ----------
    n_classes : int
        Outputs of ``fc``.
    in_channels : int
        Input channels of ``conv1``.
    """

    def __init__(self, n_classes: int, in_channels: int) -> None:
        super().__init__()
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


def _memory_network(config: BenchConfig, in_channels: int) -> nn.Module:
    torch.manual_seed(config.seed)
    if config.memory_network == "stub":
        return StubResNet(config.n_classes, in_channels)
    return build_resnet(config.arch, None, config.n_classes, in_channels)


def _library_with_memory_network(config: BenchConfig):
    """Make fit build the memory network instead of the real ResNet."""
    if config.memory_network == "real":
        return contextlib.nullcontext()

    def build(arch, weights, n_classes, in_channels):
        return _memory_network(config, in_channels)

    return mock.patch.object(resnetclf._estimator, "build_resnet", build)


def _memory_result(X: np.ndarray, memory: PeakRSS, seconds: float) -> dict[str, Any]:
    return {
        "raw_bytes": int(X.nbytes),
        "n_images": int(len(X)),
        "seconds": seconds,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        **memory.result,
    }


def measure_memory_fit_library(config: BenchConfig) -> dict[str, Any]:
    """Peak RSS that ``fit`` adds on ``memory_samples`` images, one epoch.

    As in every memory measurement, the process holds the uint8 array before
    the peak is reset, so what is reported is what the call adds on top.
    """
    device = resolve_device(config.device)
    X, y = make_data(config.memory_samples, config)
    clf = make_classifier(config, max_iter=1)
    with _library_with_memory_network(config), PeakRSS(device) as memory:
        start = time.perf_counter()
        clf.fit(X, y)
        seconds = time.perf_counter() - start
    return _memory_result(X, memory, seconds)


def measure_memory_fit_plain(config: BenchConfig) -> dict[str, Any]:
    """The reference for ``fit``: one epoch of a loop that copies no data.

    The same network and optimizer as fit's, the same split, each batch
    gathered from the uint8 array, rotated, normalised and stepped on, then a
    validation pass: memory holds the array, the model and one batch.
    """
    device = resolve_device(config.device)
    X, y = make_data(config.memory_samples, config)
    with PeakRSS(device) as memory:
        start = time.perf_counter()
        train_idx, val_idx = _split(y, config)
        model = _memory_network(config, 1).to(device, memory_format=torch.channels_last)
        optimizer = _library_optimizer(model, config, device)
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
                model(_normalise(raw)).argmax(dim=1)
        seconds = time.perf_counter() - start
    return _memory_result(X, memory, seconds)


def measure_memory_predict_library(config: BenchConfig) -> dict[str, Any]:
    """Peak RSS that ``predict`` adds on ``memory_samples`` images."""
    device = resolve_device(config.device)
    X, y = make_data(config.memory_samples, config)
    with _library_with_memory_network(config):
        clf = _fitted_classifier(X, y, config)
    clf.predict(X[: config.batch_size])  # one-off set-up, as in the reference
    with PeakRSS(device) as memory:
        start = time.perf_counter()
        clf.predict(X)
        seconds = time.perf_counter() - start
    return _memory_result(X, memory, seconds)


def measure_memory_predict_plain(config: BenchConfig) -> dict[str, Any]:
    """The reference for ``predict``: a plain eval loop converting each batch.

    Like the library, it keeps one small tensor per batch (the predicted
    classes) until the end.
    """
    device = resolve_device(config.device)
    X, _ = make_data(config.memory_samples, config)
    model = _memory_network(config, 1).to(device, memory_format=torch.channels_last)
    plain_predict_uint8(model, X[: config.batch_size], config.batch_size, device, None)
    with PeakRSS(device) as memory:
        start = time.perf_counter()
        plain_predict_uint8(model, X, config.batch_size, device, None)
        seconds = time.perf_counter() - start
    return _memory_result(X, memory, seconds)


WORKERS: dict[str, Callable[[BenchConfig], dict[str, Any]]] = {
    "fit-library": measure_fit_library,
    "fit-report": measure_fit_report,
    "step": measure_step,
    "predict": measure_predict,
    "memory-fit-library": measure_memory_fit_library,
    "memory-fit-plain": measure_memory_fit_plain,
    "memory-predict-library": measure_memory_predict_library,
    "memory-predict-plain": measure_memory_predict_plain,
}


# ----------------------------------------------------------------- orchestration
@dataclass(frozen=True)
class Task:
    """One measurement: a worker, and the allocator settings it runs under."""

    kind: str
    allocator: str = "default_malloc"

    @property
    def label(self) -> str:
        """How progress lines name the task."""
        if self.allocator == "default_malloc":
            return self.kind
        return f"{self.kind} [{self.allocator}]"


def _run_worker_here(kind: str, config: BenchConfig) -> dict[str, Any]:
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        load_start, pressure_start = _loadavg(), _cpu_pressure()
        with Stopwatch() as watch:
            result = WORKERS[kind](config)
        result["process"] = {
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "wall_seconds": watch.wall,
            # cpu / wall well below the thread count: the process was kept
            # waiting, by other load or by its own serial parts.
            "cpu_seconds": watch.cpu,
            "loadavg_start": load_start,
            "loadavg_end": _loadavg(),
            "cpu_pressure_some_avg10_start": pressure_start,
            "cpu_pressure_some_avg10_end": _cpu_pressure(),
        }
    finally:
        torch.set_num_threads(threads)
    return result


def _run_worker_subprocess(task: Task, config: BenchConfig) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env.update(ALLOCATORS[task.allocator])
    if config.omp_wait_policy is not None:
        env["OMP_WAIT_POLICY"] = config.omp_wait_policy
    with tempfile.TemporaryDirectory(prefix="bench_fit_") as folder:
        out = Path(folder) / "result.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--_worker",
            task.kind,
            "--_config",
            json.dumps(asdict(config)),
            "--_result",
            str(out),
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, env=env
        )
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"measurement {task.label!r} failed (exit code {done.returncode}):"
                f"\n{done.stderr[-4000:]}"
            )
        return json.loads(out.read_text())


def _plan(config: BenchConfig, measure: Sequence[str], in_process: bool) -> list[Task]:
    plan: list[Task] = []
    if "fit" in measure:
        plan += [Task("fit-library"), Task("fit-report")] * config.repeats
    if "step" in measure:
        plan.append(Task("step"))
    if "predict" in measure:
        plan.append(Task("predict"))
    if "memory" in measure:
        # The allocator cannot be switched inside a running process.
        allocators = ["default_malloc"] if in_process else list(ALLOCATORS)
        plan += [
            Task(f"memory-{call}-{kind}", allocator)
            for allocator in allocators
            for call in ("fit", "predict")
            for kind in ("library", "plain")
        ]
    return plan


def run_benchmark(
    config: BenchConfig,
    measure: Sequence[str] = MEASUREMENTS,
    in_process: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the measurements and gather figures, ratios and target checks.

    Parameters
    ----------
    config : BenchConfig
        What to measure on.
    measure : sequence of str, default=MEASUREMENTS
        Any of ``"fit"`` (library and report-style loop), ``"step"``,
        ``"predict"``, ``"memory"``.
    in_process : bool, default=False
        Run every measurement in this process rather than a fresh one each:
        faster to start, but memory peaks and warm caches carry over, and the
        memory measurements run with the default allocator only. For smoke
        tests.
    log : callable, default=None
        Called with a progress line before each measurement.

    Returns
    -------
    result : dict
        ``config``, ``machine``, the raw measurements (``fit``, ``step``,
        ``predict``, ``memory``), ``ratios`` and ``targets``; JSON-ready.
    """
    if in_process and config.omp_wait_policy is not None:
        raise ValueError("omp_wait_policy needs a process per measurement")
    raw: dict[str, list[dict[str, Any]]] = {}
    load_start, pressure_start = _loadavg(), _cpu_pressure()
    start = time.perf_counter()
    plan = _plan(config, measure, in_process)
    for i, task in enumerate(plan, 1):
        if log is not None:
            log(f"[{i}/{len(plan)}] {task.label} ({time.perf_counter() - start:.0f}s)")
        if in_process:
            outcome = _run_worker_here(task.kind, config)
        else:
            outcome = _run_worker_subprocess(task, config)
        outcome["allocator"] = task.allocator
        raw.setdefault(task.kind, []).append(outcome)
    machine = machine_info(config)
    machine["loadavg_start"] = load_start
    machine["loadavg_end"] = _loadavg()
    machine["cpu_pressure_some_avg10_start"] = pressure_start
    machine["cpu_pressure_some_avg10_end"] = _cpu_pressure()
    machine["worker_threads"] = sorted(
        {r["process"]["torch_threads"] for runs in raw.values() for r in runs}
    )
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "config": asdict(config),
        "measured": list(measure),
        "isolation": "in-process" if in_process else "subprocess per measurement",
        "machine": machine,
        "total_seconds": time.perf_counter() - start,
        "fit": _summarise_fits(raw),
        "step": raw["step"][0] if "step" in raw else None,
        "predict": raw["predict"][0] if "predict" in raw else None,
        "memory": _summarise_memory(raw, config),
    }
    result["ratios"] = compute_ratios(result)
    result["targets"] = check_targets(result["ratios"], config)
    return result


def _summarise_fits(raw: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    if "fit-library" not in raw:
        return None
    summary = {}
    for kind, name in (("fit-library", "library"), ("fit-report", "report_loop")):
        runs = raw[kind]
        summary[name] = {
            key: statistics.median(r[key] for r in runs)
            for key in (
                "images_per_second",
                "images_per_cpu_second",
                "all_epochs_images_per_second",
                "all_epochs_images_per_cpu_second",
                "wall_images_per_second",
            )
        }
        summary[name]["basis"] = runs[0]["basis"]
        summary[name]["runs"] = runs
    return summary


def _summarise_memory(
    raw: dict[str, list[dict[str, Any]]], config: BenchConfig
) -> dict[str, Any] | None:
    if "memory-fit-library" not in raw:
        return None
    raw_bytes = raw["memory-fit-library"][0]["raw_bytes"]
    summary: dict[str, Any] = {
        "network": config.memory_network,
        "n_images": config.memory_samples,
        "image_shape": [config.height, config.width],
        "raw_bytes": raw_bytes,
    }
    for allocator in ALLOCATORS:
        part: dict[str, Any] = {}
        for call in ("fit", "predict"):
            runs = {
                kind: [
                    r
                    for r in raw.get(f"memory-{call}-{kind}", [])
                    if r["allocator"] == allocator
                ]
                for kind in ("library", "plain")
            }
            if not runs["library"] or not runs["plain"]:
                continue
            library, plain = runs["library"][0], runs["plain"][0]
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


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _get(result: dict[str, Any], *keys: str) -> Any:
    value: Any = result
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


SPEED_RATIOS = (
    "fit_vs_report_loop",
    "fit_vs_step_bound",
    "step_folded_vs_plain",
    "predict_vs_plain_prebuilt",
    "predict_vs_plain_convert",
)
MEMORY_RATIOS = (
    "fit_memory_overhead_vs_raw",
    "predict_memory_overhead_vs_raw",
    "fit_memory_overhead_vs_raw_default_malloc",
    "predict_memory_overhead_vs_raw_default_malloc",
)


def compute_ratios(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """The ratios the issue's targets are stated in (None when not measured).

    Returns
    -------
    ratios : dict
        ``"wall"`` and ``"cpu"``: the speed ratios on each clock;
        ``"memory"``: memory overhead over the raw uint8 size, live buffers
        (fixed mmap threshold; the default allocator's figure where that was
        not measured) and with the default allocator.
    """
    ratios: dict[str, dict[str, float | None]] = {}
    for clock in CLOCKS:
        key = "images_per_second" if clock == "wall" else "images_per_cpu_second"
        fit = _get(result, "fit", "library", key)
        step = _get(result, "step", "folded_channels_last", key)
        predict = _get(result, "predict", "library", key)
        ratios[clock] = {
            "fit_vs_report_loop": _ratio(fit, _get(result, "fit", "report_loop", key)),
            "fit_vs_step_bound": _ratio(fit, step),
            "step_folded_vs_plain": _ratio(
                step, _get(result, "step", "plain_contiguous", key)
            ),
            "predict_vs_plain_prebuilt": _ratio(
                predict, _get(result, "predict", "plain_prebuilt", key)
            ),
            "predict_vs_plain_convert": _ratio(
                predict, _get(result, "predict", "plain_convert", key)
            ),
        }
    memory: dict[str, float | None] = {}
    for call in ("fit", "predict"):
        default = _get(result, "memory", "default_malloc", call, "overhead_vs_raw")
        live = _get(result, "memory", "fixed_mmap_threshold", call, "overhead_vs_raw")
        memory[f"{call}_memory_overhead_vs_raw"] = default if live is None else live
        memory[f"{call}_memory_overhead_vs_raw_default_malloc"] = default
    ratios["memory"] = memory
    return ratios


def check_targets(
    ratios: dict[str, dict[str, float | None]], config: BenchConfig
) -> list[dict[str, Any]]:
    """PASS/MISS of each of the issue's targets that applies to ``config``.

    Speed targets are judged on ``config.clock``. The fit targets are stated
    at batch size 64 for three configurations on a 2-core CPU and for one on
    a CUDA GPU; elsewhere their status is ``"n/a"`` (the ratio is still
    shown). Predict and memory targets apply everywhere.
    """
    key = (config.arch, config.height, config.width)
    on_gpu = config.device.startswith("cuda") or (
        config.device == "auto" and torch.cuda.is_available()
    )
    fit_targets = (GPU_FIT_TARGETS if on_gpu else FIT_TARGETS).get(key)
    applies = fit_targets is not None and config.batch_size == TARGET_BATCH_SIZE
    rows = [
        ("fit_vs_report_loop", ">=", fit_targets[0] if fit_targets else None, applies),
        ("fit_vs_step_bound", ">=", fit_targets[1] if fit_targets else None, applies),
        ("predict_vs_plain_prebuilt", ">=", PREDICT_TARGET, True),
        ("predict_vs_plain_convert", ">=", PREDICT_TARGET, True),
        ("fit_memory_overhead_vs_raw", "<=", MEMORY_TARGET, True),
        ("predict_memory_overhead_vs_raw", "<=", MEMORY_TARGET, True),
    ]
    checks = []
    for name, op, target, applicable in rows:
        group = "memory" if "memory" in name else config.clock
        value = ratios.get(group, {}).get(name)
        if value is None:
            status = "not measured"
        elif target is None or not applicable:
            status = "n/a"
        elif (value >= target) if op == ">=" else (value <= target):
            status = "PASS"
        else:
            status = "MISS"
        checks.append(
            {
                "name": name,
                "value": value,
                "basis": group,
                "op": op,
                "target": target,
                "status": status,
            }
        )
    return checks


# ------------------------------------------------------------------ machine info
def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _cpu_pressure() -> float | None:
    """Share of the last 10 s (in %) that runnable tasks waited for a CPU."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            for line in pressure:
                if line.startswith("some"):
                    return float(line.split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in flags]
    except OSError:
        pass
    return []


def machine_info(config: BenchConfig) -> dict[str, Any]:
    """Versions, CPU, threads and device of this machine."""
    device = resolve_device(config.device)
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    env_names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
    env = {name: os.environ.get(name) for name in env_names}
    if config.omp_wait_policy is not None:
        env["OMP_WAIT_POLICY"] = config.omp_wait_policy
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "resnetclf": getattr(resnetclf, "__version__", None),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "torch_threads_default": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "worker_env": env,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(device),
        "memory_total_bytes": _proc_meminfo_total(),
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    return info


def _proc_meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------ report
def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


_RATIO_LABELS = {
    "fit_vs_report_loop": "fit library / report-style loop",
    "fit_vs_step_bound": "fit library / model-step bound",
    "step_folded_vs_plain": "model step folded+CL / 3-ch contiguous",
    "predict_vs_plain_prebuilt": "predict library / plain (pre-built)",
    "predict_vs_plain_convert": "predict library / plain (+convert)",
    "fit_memory_overhead_vs_raw": "fit memory overhead / raw uint8",
    "predict_memory_overhead_vs_raw": "predict memory overhead / raw uint8",
}


def format_report(result: dict[str, Any]) -> str:
    """The figures, ratios and target checks as a plain-text table."""
    c = BenchConfig.from_dict(result["config"])
    m = result["machine"]
    fit_runs = _get(result, "fit", "library", "runs")
    split = ""
    if fit_runs:
        split = f" ({fit_runs[0]['n_train']} train / {fit_runs[0]['n_val']} val)"
    lines = [
        f"{c.arch} {c.height}x{c.width}, batch {c.batch_size}, "
        f"{c.n_samples} images{split}, {c.epochs} epoch(s), "
        f"{c.repeats} repeat(s), device {m['device']}",
        f"machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, torch "
        f"{m['torch']}, threads {m['worker_threads']}, OMP_WAIT_POLICY "
        f"{m['worker_env']['OMP_WAIT_POLICY'] or 'unset'}",
        f"contention: load average {m['loadavg_start']} -> {m['loadavg_end']}, "
        f"CPU pressure (some, avg10) {_fmt(m['cpu_pressure_some_avg10_start'])}%"
        f" -> {_fmt(m['cpu_pressure_some_avg10_end'])}%",
        "",
        f"{'throughput (images/s, median)':<48}{'wall':>9}{'per CPU-s':>11}",
    ]
    rows = [
        ("fit: library, whole epochs incl. validation", "fit", "library"),
        ("fit: report-style loop, same data, same epochs", "fit", "report_loop"),
        ("model step: folded 1-ch stem, channels_last", "step", "folded_channels_last"),
        ("model step: 3-ch stem, contiguous (reference)", "step", "plain_contiguous"),
        ("predict: library", "predict", "library"),
        ("predict: plain eval, pre-built float batches", "predict", "plain_prebuilt"),
        ("predict: plain eval, uint8->float per batch", "predict", "plain_convert"),
    ]
    for label, *keys in rows:
        wall = _get(result, *keys, "images_per_second")
        cpu = _get(result, *keys, "images_per_cpu_second")
        lines.append(f"  {label:<46}{_fmt(wall):>9}{_fmt(cpu):>11}")
    if result.get("fit"):
        library, report = result["fit"]["library"], result["fit"]["report_loop"]
        lines += [
            f"  (fit figures cover {library['basis']}; all epochs, wall: library "
            f"{_fmt(library['all_epochs_images_per_second'])}, report loop "
            f"{_fmt(report['all_epochs_images_per_second'])};",
            "   whole fit call, model build included, wall: library "
            f"{_fmt(library['wall_images_per_second'])}, report loop "
            f"{_fmt(report['wall_images_per_second'])})",
        ]
    memory = result.get("memory")
    if memory:
        lines += [
            "",
            f"peak RSS added (MiB): {memory['n_images']} images {c.height}x"
            f"{c.width}, {memory['network']} network, raw uint8 "
            f"{_mib(memory['raw_bytes'])}",
            f"  {'':<38}{'library':>9}{'plain':>9}{'overhead':>10}{'/raw':>8}",
        ]
        for allocator, label in (
            ("fixed_mmap_threshold", "live (fixed mmap threshold)"),
            ("default_malloc", "default malloc"),
        ):
            for call in ("fit", "predict"):
                part = _get(memory, allocator, call)
                if part is None:
                    continue
                lines.append(
                    f"  {call + ', ' + label:<38}"
                    f"{_mib(part['library']['rss_added_bytes']):>9}"
                    f"{_mib(part['plain']['rss_added_bytes']):>9}"
                    f"{_mib(part['overhead_bytes']):>10}"
                    f"{_fmt(part['overhead_vs_raw'], '.3f'):>8}"
                )
    lines += [
        "",
        f"{'ratio':<42}{'wall':>7}{'cpu':>7}{'target':>9}  status ({c.clock} clock)",
    ]
    checks = {check["name"]: check for check in result["targets"]}
    for name, label in _RATIO_LABELS.items():
        if name in MEMORY_RATIOS:
            value = result["ratios"]["memory"].get(name)
            values = f"{_fmt(value, '.3f'):>14}"
        else:
            values = "".join(
                f"{_fmt(result['ratios'][clock].get(name), '.3f'):>7}"
                for clock in CLOCKS
            )
        check = checks.get(name)
        if check is None:
            target, status = "-", "(reference)"
        else:
            target = (
                "-"
                if check["target"] is None
                else (f"{check['op']} {check['target']:.2f}")
            )
            status = check["status"]
        lines.append(f"  {label:<40}{values}{target:>9}  {status}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Speed and memory of ResNetFineTuneClassifier against a plain "
            "PyTorch loop, the model-step bound and a plain eval loop."
        )
    )
    parser.add_argument("--arch", help="torchvision ResNet (default resnet18)")
    parser.add_argument("--height", type=int, help="image height (default 40)")
    parser.add_argument("--width", type=int, help="image width (default 168)")
    parser.add_argument("--batch-size", type=int, help="default 64")
    parser.add_argument(
        "--n-samples", type=int, help="images given to fit (default 512)"
    )
    parser.add_argument("--n-classes", type=int, help="default 37")
    parser.add_argument("--epochs", type=int, help="epochs per timed fit (default 1)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), default="cpu", help="default cpu"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="timed fits of each kind, rounds of step and predict timings; "
        "medians are reported (default 1)",
    )
    parser.add_argument(
        "--step-iters", type=int, help="timed steps per layout and round (default 8)"
    )
    parser.add_argument(
        "--predict-samples", type=int, help="images predicted (default n-samples)"
    )
    parser.add_argument(
        "--memory-samples",
        type=int,
        help="images of the memory measurements (default 30000, the merged "
        "data set's size)",
    )
    parser.add_argument(
        "--memory-network",
        choices=("stub", "real"),
        default="stub",
        help="network of the memory measurements: a near-free stand-in "
        "(default; seconds) or the real arch (slow on a CPU)",
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
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="clock the speed targets are judged on (both are reported): wall "
        "time, or CPU time of the measuring process, fairer on a loaded machine "
        "with --threads 1 (default wall)",
    )
    parser.add_argument(
        "--measure",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated subset of {','.join(MEASUREMENTS)} (default all)",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="time the first fit steps too (one-off setup included)",
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
    parser.add_argument("--_worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--_config", help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Fill the options left unset from the full or the ``--quick`` defaults."""
    defaults = _QUICK_DEFAULTS if args.quick else _FULL_DEFAULTS
    values = {
        name: getattr(args, name) if getattr(args, name) is not None else default
        for name, default in defaults.items()
    }
    if values["predict_samples"] is None:
        values["predict_samples"] = values["n_samples"]
    config = BenchConfig(
        **values,
        device=args.device,
        memory_network=args.memory_network,
        threads=args.threads,
        omp_wait_policy=args.omp_wait_policy,
        clock=args.clock,
        warmup=not args.no_warmup,
        seed=args.seed,
    )
    for name in (
        "height",
        "width",
        "batch_size",
        "n_samples",
        "n_classes",
        "epochs",
        "repeats",
        "step_iters",
        "predict_samples",
        "memory_samples",
    ):
        if getattr(config, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if config.n_classes < 2 or config.n_samples < 2 * config.n_classes:
        raise SystemExit("need n-classes >= 2 and n-samples >= 2 * n-classes")
    return config


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry point.

    Parameters
    ----------
    argv : sequence of str, default=None
        Arguments; ``sys.argv[1:]`` when None.

    Returns
    -------
    result : dict or None
        The results also written with ``--json`` (None in a worker process).
    """
    args = _parser().parse_args(argv)
    if args._worker is not None:
        config = BenchConfig.from_dict(json.loads(args._config))
        result = _run_worker_here(args._worker, config)
        args._result.write_text(json.dumps(result))
        return None
    config = config_from_args(args)
    measure = [name.strip() for name in args.measure.split(",") if name.strip()]
    unknown = sorted(set(measure) - set(MEASUREMENTS))
    if unknown or not measure:
        raise SystemExit(f"--measure: choose among {', '.join(MEASUREMENTS)}")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_benchmark(config, measure, in_process=args.in_process, log=log)
    print(format_report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
