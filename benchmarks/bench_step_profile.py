"""Where one CPU training step spends its time, by kind of work.

``bench_fit.py`` says how close ``fit`` comes to its model step; this script
says what that step is made of, so that a proposal to speed it up can be
weighed before it is written. It trains a ResNet on one batch already in
memory, in the two layouts of ``bench_fit.py``'s model-step bound:

- ``library``: the network ``fit`` trains, the way ``fit`` trains it on the
  CPU: grayscale folded into a 1-channel ``conv1``, channels_last memory, Adam
  over the stage parameter groups (fused where torch has it), and the
  single-product weight gradients of small maps;
- ``plain``: the same network with the RGB stem on the gray image repeated to
  three channels, contiguous memory, torch's default Adam: the report's step.

First each layout's step is timed without the profiler (the layouts take
turns, ``--rounds`` rounds of ``--steps`` steps; medians), split into forward
with loss, backward, and optimizer. Then ``--steps`` steps of each are
profiled with ``torch.profiler``, and every operator's own time (its
children's excluded) goes to one category: convolution forward, convolution
backward, matrix products (the small-map weight gradients, and ``fc``), batch
norm, ReLU and residual adds, pooling, copies and fills, allocation,
optimizer (anything inside ``optimizer.step``), and the rest (Python and
autograd bookkeeping). Example::

    python benchmarks/bench_step_profile.py --arch resnet50 --height 40 \\
        --width 168 --threads 2 --json step_profile.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _harness
import _suite
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from resnetclf._acceleration.conv_weight_grad import gemm_weight_grads
from resnetclf._backbone import build_resnet

LAYOUTS = ("library", "plain")
PHASES = ("forward", "backward", "optimizer")

# Operator names (without "aten::") by category; the first match wins.
_CATEGORY_OPS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "convolution forward",
        frozenset(
            {
                "mkldnn_convolution",
                "_slow_conv2d_forward",
                "thnn_conv2d",
                "_nnpack_spatial_convolution",
            }
        ),
    ),
    (
        "convolution backward",
        frozenset({"convolution_backward", "_slow_conv2d_backward"}),
    ),
    ("matrix products", frozenset({"mm", "addmm", "bmm", "addmm_", "baddbmm"})),
    (
        "ReLU and residual adds",
        frozenset({"threshold_backward", "clamp_min_", "clamp_min", "relu_", "relu"}),
    ),
    (
        "pooling",
        frozenset(
            {
                "max_pool2d_with_indices",
                "max_pool2d_with_indices_backward",
                "adaptive_avg_pool2d",
                "_adaptive_avg_pool2d",
                "_adaptive_avg_pool2d_backward",
                "mean",
            }
        ),
    ),
    (
        "copies and fills",
        frozenset({"copy_", "fill_", "zero_", "constant_pad_nd", "clone", "cat"}),
    ),
    (
        "allocation",
        frozenset({"empty", "empty_strided", "empty_like", "resize_", "zeros"}),
    ),
)
CATEGORIES = (
    *(name for name, _ in _CATEGORY_OPS[:3]),
    "batch norm",
    *(name for name, _ in _CATEGORY_OPS[3:]),
    "optimizer",
    "other",
)


def categorize(op_name: str, in_optimizer: bool) -> str:
    """The category of an operator's own time.

    Parameters
    ----------
    op_name : str
        The profiler's event name, e.g. ``"aten::mm"``.
    in_optimizer : bool
        Whether the event ran inside ``optimizer.step``.

    Returns
    -------
    str
        One of :data:`CATEGORIES`.
    """
    if in_optimizer:
        return "optimizer"
    name = op_name.removeprefix("aten::")
    if "batch_norm" in name:
        return "batch norm"
    if name in ("add_", "add"):
        return "ReLU and residual adds"
    for category, ops in _CATEGORY_OPS:
        if name in ops:
            return category
    return "other"


def build_layout(
    layout: str, arch: str, batch_size: int, height: int, width: int
) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    """Model, optimizer, input batch and targets of one layout (see above)."""
    torch.manual_seed(0)
    library = layout == "library"
    channels = 1 if library else 3
    memory_format = torch.channels_last if library else torch.contiguous_format
    model = build_resnet(arch, None, 37, channels).to(memory_format=memory_format)
    if library:
        optimizer = _suite.library_optimizer(model, torch.device("cpu"))
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    gray = torch.rand(batch_size, 1, height, width) * 2 - 1
    inputs = gray.expand(-1, channels, -1, -1).contiguous(memory_format=memory_format)
    targets = torch.arange(batch_size) % 37
    return model.train(), optimizer, inputs, targets


def _phase_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> dict[str, float]:
    # Seconds of each phase of one step; the CPU runs ops synchronously.
    start = time.perf_counter()
    loss = F.cross_entropy(model(inputs), targets)
    forward_done = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    backward_done = time.perf_counter()
    optimizer.step()
    end = time.perf_counter()
    return {
        "forward": forward_done - start,
        "backward": backward_done - forward_done,
        "optimizer": end - backward_done,
    }


def _in_optimizer(event: Any) -> bool:
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return True
        parent = parent.cpu_parent
    return False


def profile_steps(step: Callable[[], object], steps: int) -> dict[str, Any]:
    """Own CPU time per step of each category and of the top operators.

    Parameters
    ----------
    step : callable
        Runs one training step.
    steps : int
        Steps profiled; figures are per step.

    Returns
    -------
    dict
        ``profiled_ms_per_step``, ``categories_ms``, ``categories_share``,
        ``categories_calls`` and ``top_ops`` (name, ms and calls per step).
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    category_us: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    category_calls: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
    op_us: dict[str, float] = defaultdict(float)
    op_calls: dict[str, int] = defaultdict(int)
    for event in prof.events():
        category = categorize(event.name, _in_optimizer(event))
        category_us[category] += event.self_cpu_time_total
        category_calls[category] += 1
        op_us[event.name] += event.self_cpu_time_total
        op_calls[event.name] += 1
    total_us = sum(category_us.values())
    top = sorted(op_us, key=op_us.__getitem__, reverse=True)[:15]
    return {
        "profiled_ms_per_step": total_us / 1e3 / steps,
        "categories_ms": {c: us / 1e3 / steps for c, us in category_us.items()},
        "categories_share": {
            c: (us / total_us if total_us else 0.0) for c, us in category_us.items()
        },
        "categories_calls": {c: n / steps for c, n in category_calls.items()},
        "top_ops": [
            {
                "name": name,
                "ms_per_step": op_us[name] / 1e3 / steps,
                "calls_per_step": op_calls[name] / steps,
            }
            for name in top
        ],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time and profile both layouts; the JSON-ready result."""
    torch.set_num_threads(args.threads)
    built = {
        layout: build_layout(
            layout, args.arch, args.batch_size, args.height, args.width
        )
        for layout in LAYOUTS
    }
    results: dict[str, Any] = {}
    for layout, (model, optimizer, inputs, targets) in built.items():
        # The library's network keeps its small-map weight gradients only
        # while it trains, as in fit.
        with gemm_weight_grads(model, enabled=layout == "library"):
            for _ in range(args.warmup):
                _phase_step(model, optimizer, inputs, targets)

    def switch(layout: str) -> Callable[[], Any]:
        model = built[layout][0]
        return lambda: gemm_weight_grads(model, enabled=layout == "library")

    def steps(layout: str) -> Callable[[], list[dict[str, float]]]:
        return lambda: [_phase_step(*built[layout]) for _ in range(args.steps)]

    watches = _harness.alternate(
        {layout: steps(layout) for layout in LAYOUTS},
        args.rounds,
        around={layout: switch(layout) for layout in LAYOUTS},
    )
    rounds = {
        layout: [s for w in watches[layout] for s in w.result] for layout in LAYOUTS
    }
    for layout, (model, optimizer, inputs, targets) in built.items():
        phases = {
            phase: statistics.median(s[phase] for s in rounds[layout]) * 1e3
            for phase in PHASES
        }
        steps_ms = [sum(s.values()) * 1e3 for s in rounds[layout]]
        with gemm_weight_grads(model, enabled=layout == "library"):
            profiled = profile_steps(
                lambda: _phase_step(model, optimizer, inputs, targets), args.steps
            )
        results[layout] = {
            "step_ms": statistics.median(steps_ms),
            "step_ms_runs": steps_ms,
            "images_per_second": args.batch_size * 1e3 / statistics.median(steps_ms),
            "phases_ms": phases,
            **profiled,
        }
    return {
        "config": vars(args) | {"json": str(args.json) if args.json else None},
        "machine": {
            **_harness.machine_info(torch.device("cpu")),
            "torch_threads": torch.get_num_threads(),
        },
        "layouts": results,
        "plain_over_library_step": (
            results["plain"]["step_ms"] / results["library"]["step_ms"]
        ),
    }


def print_report(result: dict[str, Any]) -> None:
    """The per-step table of both layouts, side by side."""
    layouts = result["layouts"]
    config = result["config"]
    print(
        f"{config['arch']} {config['height']}x{config['width']}, batch "
        f"{config['batch_size']}, {config['threads']} thread(s), torch "
        f"{result['machine']['torch']}"
    )
    header = "".join(f"{name:>20}" for name in LAYOUTS)
    print(f"\n{'ms per step (unprofiled median)':<34}{header}")
    print(
        f"  {'whole step':<32}"
        + "".join(f"{layouts[n]['step_ms']:>20.1f}" for n in LAYOUTS)
    )
    for phase in PHASES:
        print(
            f"  {phase:<32}"
            + "".join(f"{layouts[n]['phases_ms'][phase]:>20.1f}" for n in LAYOUTS)
        )
    print(f"\n{'own CPU time by kind (profiled)':<34}{header}")
    for category in CATEGORIES:
        cells = "".join(
            f"{layouts[n]['categories_ms'][category]:>12.1f} ms"
            f" {100 * layouts[n]['categories_share'][category]:>3.0f}%"
            for n in LAYOUTS
        )
        print(f"  {category:<32}{cells}")
    print(
        f"  {'total profiled':<32}"
        + "".join(
            f"{layouts[n]['profiled_ms_per_step']:>12.1f} ms     " for n in LAYOUTS
        )
    )
    print(f"\nplain step / library step: {result['plain_over_library_step']:.2f}")
    for name in LAYOUTS:
        print(f"\ntop operators, {name} (ms per step, calls per step)")
        for op in layouts[name]["top_ops"][:8]:
            print(
                f"  {op['name']:<48}{op['ms_per_step']:>9.1f}"
                f"{op['calls_per_step']:>8.0f}"
            )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run from the command line; print the tables and return the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--height", type=int, default=40)
    parser.add_argument("--width", type=int, default=168)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="steps per round")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("batch_size", "threads", "rounds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    result = run(args)
    print_report(result)
    _harness.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
