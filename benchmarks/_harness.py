"""What every benchmark here shares: processes, alternation, clocks, JSON.

Synthetic data (:func:`synthetic_images`); the wall and process-CPU clocks
(:class:`Stopwatch`, :func:`rates`); variants timed in turns, round after
round, so a slow spell of a shared machine falls on all alike
(:func:`alternate`); thread settings (:func:`torch_threads`); a fresh Python
process per measurement, the script re-invoking itself as a worker
(:func:`run_tasks`, :func:`serve_worker`), so memory peaks and warm caches do
not carry over; the machine and its load (:func:`machine_info`,
:func:`contention`); JSON (:func:`write_json`). Nothing here imports
``resnetclf`` at module level, so a worker can measure another checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CLOCKS = ("wall", "cpu")


# ------------------------------------------------------------ data and device
def mean_se_text(values: Sequence[float | None]) -> str:
    """``mean ± standard error`` over seeds, three decimals: the mean alone
    for one value, ``-`` for none (Nones are left out)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    se = statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:.3f} ± {se:.3f}"


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a missing GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    return device


def synthetic_images(
    n_samples: int, height: int, width: int, n_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random uint8 images ``(N, H, W)`` and balanced, shuffled labels.

    Every page of the array is written, so it is resident; labels
    ``0 .. n_classes - 1`` come in equal shares.
    """
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n_samples, height, width), dtype=np.uint8)
    y = np.arange(n_samples, dtype=np.int64) % n_classes
    rng.shuffle(y)
    return X, y


# --------------------------------------------------------------------- clocks
def synchronize(device: torch.device | None) -> None:
    """Wait for a GPU's queued work; nothing to wait for on the CPU."""
    if device is not None and device.type == "cuda":
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
        self.result: Any = None

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        synchronize(self.device)
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def rates(n_images: int, watches: Sequence[Stopwatch]) -> dict[str, Any]:
    """Images per second of each round on both clocks, and their medians."""
    wall = [n_images / w.wall for w in watches]
    cpu = [n_images / w.cpu if w.cpu > 0 else float("nan") for w in watches]
    return {
        "images_per_second": statistics.median(wall),
        "images_per_cpu_second": statistics.median(cpu),
        "rounds_images_per_second": wall,
        "rounds_images_per_cpu_second": cpu,
    }


def alternate(
    runs: Mapping[str, Callable[[], Any]],
    rounds: int,
    device: torch.device | None = None,
    around: Mapping[str, Callable[[], contextlib.AbstractContextManager]] | None = None,
) -> dict[str, list[Stopwatch]]:
    """Time every run once per round, the runs taking turns.

    ``around[name]()``, where given, is a context entered untimed around the
    run (a switch of the library's that holds only while the run is timed);
    ``device`` is synchronised around each timed block. Returns the
    :class:`Stopwatch` of each round by name; ``watch.result`` keeps what the
    run returned.
    """
    watches: dict[str, list[Stopwatch]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            context = around[name]() if around and name in around else None
            with context or contextlib.nullcontext(), Stopwatch(device) as watch:
                watch.result = run()
            watches[name].append(watch)
    return watches


def train_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    autocast: contextlib.AbstractContextManager | None = None,
) -> None:
    """One step on a batch in memory: forward and loss (under ``autocast``),
    backward, optimizer step."""
    with autocast or contextlib.nullcontext():
        loss = torch.nn.functional.cross_entropy(forward(inputs), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block; None keeps torch's."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ processes
Worker = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Task:
    """One measurement: a worker's name and the environment it runs under.

    ``env`` maps variable names to values; None removes a variable.
    """

    kind: str
    env: Mapping[str, str | None] = field(default_factory=dict)
    tag: str = ""

    @property
    def label(self) -> str:
        """How progress lines name the task."""
        return f"{self.kind} [{self.tag}]" if self.tag else self.kind


def contention() -> dict[str, Any]:
    """Load average and the share of the last 10 s runnable tasks waited (%)."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    pressure = None
    with contextlib.suppress(OSError, IndexError, ValueError):
        with open("/proc/pressure/cpu") as lines:
            for line in lines:
                if line.startswith("some"):
                    pressure = float(line.split()[1].split("=")[1])
    return {"loadavg": load, "cpu_pressure_some_avg10": pressure}


def measure_here(worker: Worker, config: Any, threads: int | None) -> dict[str, Any]:
    """Run a worker in this process; its result gains a ``process`` record."""
    with torch_threads(threads):
        start = contention()
        with Stopwatch() as watch:
            result = worker(config)
        end = contention()
        result["process"] = {
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "wall_seconds": watch.wall,
            # cpu / wall well below the thread count: the process was kept
            # waiting, by other load or by its own serial parts.
            "cpu_seconds": watch.cpu,
            "loadavg_start": start["loadavg"],
            "loadavg_end": end["loadavg"],
            "cpu_pressure_some_avg10_start": start["cpu_pressure_some_avg10"],
            "cpu_pressure_some_avg10_end": end["cpu_pressure_some_avg10"],
        }
    return result


def measure_in_subprocess(
    script: Path, task: Task, config: Any, env: Mapping[str, str | None]
) -> dict[str, Any]:
    """Run ``task`` in a fresh process of ``script``; its JSON result."""
    child_env = dict(os.environ)
    for name, value in {**env, **task.env}.items():
        if value is None:
            child_env.pop(name, None)
        else:
            child_env[name] = value
    with tempfile.TemporaryDirectory(prefix="bench_") as folder:
        out = Path(folder) / "result.json"
        command = [
            sys.executable,
            str(Path(script).resolve()),
            "--_worker",
            task.kind,
            "--_config",
            json.dumps(asdict(config)),
            "--_result",
            str(out),
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, env=child_env
        )
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"measurement {task.label!r} failed (exit code {done.returncode}):"
                f"\n{done.stderr[-4000:]}"
            )
        return json.loads(out.read_text())


def run_tasks(
    script: Path,
    tasks: Sequence[Task],
    workers: Mapping[str, Worker],
    config: Any,
    *,
    threads: int | None,
    in_process: bool = False,
    env: Mapping[str, str | None] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the tasks in order (alternate variants there), each in a fresh
    process of ``script``, which must call :func:`serve_worker` first.

    ``config`` (a dataclass) goes to each worker as JSON, ``threads`` sets
    torch's threads there and ``env`` its environment (None values remove a
    variable). ``in_process`` runs the workers here instead: faster to start,
    but memory peaks and warm caches carry over and no environment applies;
    for smoke tests. Returns each task's result with its ``process`` record.
    """
    if in_process and (env or any(task.env for task in tasks)):
        raise ValueError("environment settings need a process per measurement")
    start = time.perf_counter()
    outcomes = []
    for i, task in enumerate(tasks, 1):
        if log is not None:
            log(f"[{i}/{len(tasks)}] {task.label} ({time.perf_counter() - start:.0f}s)")
        if in_process:
            outcomes.append(measure_here(workers[task.kind], config, threads))
        else:
            outcomes.append(measure_in_subprocess(script, task, config, env or {}))
    return outcomes


def add_worker_arguments(parser: argparse.ArgumentParser, kinds: Sequence[str]):
    """The hidden options a script re-invoked as a worker receives."""
    parser.add_argument("--_worker", choices=sorted(kinds), help=argparse.SUPPRESS)
    parser.add_argument("--_config", help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)


def serve_worker(
    args: argparse.Namespace,
    workers: Mapping[str, Worker],
    load_config: Callable[[dict[str, Any]], Any],
) -> bool:
    """If this process is a worker, measure and write the result; True if so."""
    if args._worker is None:
        return False
    config = load_config(json.loads(args._config))
    result = measure_here(workers[args._worker], config, config.threads)
    args._result.write_text(json.dumps(result))
    return True


# ---------------------------------------------------------------- environment
def _cpuinfo(prefix: str) -> str | None:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    return None


def _memory_total() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    return None


def machine_info(
    device: torch.device, worker_env: Mapping[str, str | None] | None = None
) -> dict[str, Any]:
    """Versions, CPU, threads, memory and device of this machine.

    ``worker_env`` are environment settings the workers run under, recorded
    over this process's own ``OMP_*``/``MKL_*`` variables.
    """
    import sklearn
    import torchvision

    import resnetclf

    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
    env = {name: os.environ.get(name) for name in names}
    env.update({k: v for k, v in (worker_env or {}).items() if k in names})
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    flags = set((_cpuinfo("flags") or "").split())
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "resnetclf": getattr(resnetclf, "__version__", None),
        "cpu_model": _cpuinfo("model name")
        or platform.processor()
        or platform.machine(),
        "cpu_flags": [flag for flag in wanted if flag in flags],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "torch_threads_default": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "worker_env": env,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(device),
        "memory_total_bytes": _memory_total(),
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    return info


# ----------------------------------------------------------------------- JSON
def write_json(path: Path | None, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON (parents created); nothing if no path."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def log(line: str) -> None:
    """A progress line on stderr, so stdout keeps only the report."""
    print(line, file=sys.stderr, flush=True)
