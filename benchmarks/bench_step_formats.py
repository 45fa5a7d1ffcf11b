"""CPU seconds of one training step in three memory formats.

The model step is the bound of ``fit`` (see ``bench_fit.py``); this script
asks whether another memory format would raise it. Each variant trains the
library's network (grayscale folded into a 1-channel ``conv1``, fused Adam
over the stage parameter groups) on one batch already in memory:

- ``channels_last``: model and input in channels_last (what ``fit`` does);
- ``contiguous_weights``: contiguous weights, channels_last input;
- ``contiguous``: both contiguous.

Variants alternate over ``--rounds`` rounds; the median step is printed::

    python benchmarks/bench_step_formats.py --threads 1 --height 28 --width 28
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

import _harness
import _suite
import torch
from torch import nn

from resnetclf._backbone import build_resnet

VARIANTS = {
    "channels_last": (torch.channels_last, torch.channels_last),
    "contiguous_weights": (torch.contiguous_format, torch.channels_last),
    "contiguous": (torch.contiguous_format, torch.contiguous_format),
}


def build(arch: str, weights_format: torch.memory_format) -> tuple[nn.Module, Any]:
    """The library's network in ``weights_format``, with fit's optimizer."""
    torch.manual_seed(0)
    model = build_resnet(arch, None, 37, 1).to(memory_format=weights_format)
    return model.train(), _suite.library_optimizer(model, torch.device("cpu"))


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Print, and return, the median CPU milliseconds per step of each variant."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--height", type=int, default=28)
    parser.add_argument("--width", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = torch.randn(args.batch_size, 1, args.height, args.width)
    targets = torch.randint(0, 37, (args.batch_size,))
    runs = {}
    for name, (weights_format, input_format) in VARIANTS.items():
        model, optimizer = build(args.arch, weights_format)
        inputs = images.contiguous(memory_format=input_format)
        runs[name] = (model, optimizer, inputs, targets)
    for run in runs.values():
        for _ in range(2):  # warm-up: oneDNN primitives, optimizer state
            _harness.train_step(*run)

    def steps(run) -> Any:
        return lambda: [_harness.train_step(*run) for _ in range(args.steps)]

    rounds = _harness.alternate(
        {name: steps(run) for name, run in runs.items()}, args.rounds
    )
    print(
        f"{args.arch} {args.height}x{args.width}, batch {args.batch_size}, "
        f"{args.threads} thread(s), CPU ms per step (median of {args.rounds})"
    )
    medians = {
        name: 1000 * statistics.median(w.cpu / args.steps for w in watches)
        for name, watches in rounds.items()
    }
    for name, milliseconds in medians.items():
        print(f"  {name:<20} {milliseconds:8.1f}")
    return medians


if __name__ == "__main__":
    main()
