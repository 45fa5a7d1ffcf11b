"""oneDNN's convolution weight gradients against one product over the batch.

``resnetclf._acceleration.conv_weight_grad`` computes the weight gradient of
convolutions with small output maps as a single matrix product on the CPU,
where oneDNN multiplies image by image. This script measures both, in one run:

1. every distinct convolution of ``--arch`` at the given image size and batch
   (shapes read from a forward pass): milliseconds of oneDNN's weight
   gradient, of the single product, their ratio, and whether the library's
   rule takes the product for it;
2. the whole training step (forward, backward, fused Adam) of the library's
   network with and without the switch, alternating over ``--rounds``.

Ratios above 1 mean the product is faster. Example::

    python benchmarks/bench_conv_weight_grad.py --arch resnet18 --height 28 \\
        --width 28 --threads 2 --json conv_weight_grad.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import _harness
import torch
import torch.nn.functional as F
from torch import nn

import resnetclf._estimator
from resnetclf._acceleration.conv_weight_grad import (
    gemm_weight_grads,
    uses_gemm_weight_grad,
    weight_grad_by_gemm,
)
from resnetclf._backbone import build_resnet

VARIANTS = ("onednn", "library")


def median_seconds(function: Callable[[], Any], rounds: int, repeats: int) -> float:
    """Median over ``rounds`` of the mean wall seconds of ``repeats`` calls,
    after one untimed call (oneDNN builds its primitives on the first)."""
    function()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        times.append((time.perf_counter() - start) / repeats)
    return statistics.median(times)


def convolution_inputs(
    model: nn.Module, images: torch.Tensor
) -> list[tuple[str, nn.Conv2d, tuple[int, ...]]]:
    """Each distinct (convolution geometry, input shape) of a forward pass."""
    seen: dict[tuple, tuple[str, nn.Conv2d, tuple[int, ...]]] = {}
    hooks = []
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):

            def record(module, args, output, name=name):
                shape = tuple(args[0].shape)
                key = (
                    module.in_channels,
                    module.out_channels,
                    module.kernel_size,
                    module.stride,
                    module.padding,
                    shape,
                )
                seen.setdefault(key, (name, module, shape))

            hooks.append(conv.register_forward_hook(record))
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return list(seen.values())


def time_convolutions(
    model: nn.Module, images: torch.Tensor, rounds: int
) -> list[dict[str, Any]]:
    rows = []
    for name, conv, shape in convolution_inputs(model, images):
        inputs = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        weight = conv.weight.detach()
        out = F.conv2d(inputs, weight, None, conv.stride, conv.padding)
        grad_output = torch.randn_like(out)

        def onednn(inputs=inputs, grad_output=grad_output, conv=conv, weight=weight):
            return torch.ops.aten.convolution_backward(
                grad_output, inputs, weight, None, list(conv.stride),
                list(conv.padding), [1, 1], False, [0, 0], conv.groups,
                [False, True, False],
            )  # fmt: skip

        def product(inputs=inputs, grad_output=grad_output, conv=conv):
            return weight_grad_by_gemm(
                inputs, grad_output, conv.kernel_size, conv.stride, conv.padding
            )

        onednn_seconds = median_seconds(onednn, rounds, 2)
        product_seconds = median_seconds(product, rounds, 2)
        with torch.enable_grad():
            taken = conv.groups == 1 and uses_gemm_weight_grad(conv, inputs)
        rows.append(
            {
                "conv": name,
                "in_channels": conv.in_channels,
                "out_channels": conv.out_channels,
                "kernel": list(conv.kernel_size),
                "stride": list(conv.stride),
                "output_map": list(out.shape[2:]),
                "onednn_ms": 1000 * onednn_seconds,
                "product_ms": 1000 * product_seconds,
                "ratio": onednn_seconds / product_seconds,
                "rule_takes_product": taken,
            }
        )
    return rows


def time_steps(
    model: nn.Module, images: torch.Tensor, rounds: int, steps: int
) -> dict[str, list[float]]:
    """Seconds per training step, oneDNN only vs the library's switch."""
    targets = torch.randint(0, model.fc.out_features, (len(images),))
    # fit's fused Adam, over one group.
    optimizer = resnetclf._estimator._make_optimizer(
        "adam", [{"params": list(model.parameters())}], torch.device("cpu")
    )

    def step() -> None:
        _harness.train_step(model, optimizer, images, targets)

    @contextlib.contextmanager
    def switched(enabled: bool) -> Iterator[None]:
        with gemm_weight_grads(model, enabled=enabled):
            step()  # warm-up after the switch, untimed
            yield

    watches = _harness.alternate(
        {variant: lambda: [step() for _ in range(steps)] for variant in VARIANTS},
        rounds,
        around={v: functools.partial(switched, v == "library") for v in VARIANTS},
    )
    return {v: [w.wall / steps for w in watches[v]] for v in VARIANTS}


def format_table(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"{config['arch']} {config['height']}x{config['width']}, batch "
        f"{config['batch_size']}, {result['machine']['torch_threads']} thread(s): "
        "weight gradient, ms",
        f"{'convolution':<24} {'in':>5} {'out':>5} {'k':>3} {'s':>2} {'map':>7} "
        f"{'oneDNN':>8} {'product':>8} {'ratio':>6}  rule",
    ]
    for row in result["convolutions"]:
        output_map = "x".join(str(s) for s in row["output_map"])
        lines.append(
            f"{row['conv']:<24} {row['in_channels']:>5} {row['out_channels']:>5} "
            f"{row['kernel'][0]:>3} {row['stride'][0]:>2} {output_map:>7} "
            f"{row['onednn_ms']:>8.1f} {row['product_ms']:>8.1f} "
            f"{row['ratio']:>6.2f}  {'product' if row['rule_takes_product'] else '-'}"
        )
    step = result["step_ms"]
    lines.append(
        f"training step, ms (median of {config['rounds']}): oneDNN only "
        f"{step['onednn']:.1f}, library {step['library']:.1f}, ratio "
        f"{step['onednn'] / step['library']:.2f}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--height", type=int, default=28)
    parser.add_argument("--width", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="steps per round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_resnet(args.arch, None, 37, 1).to(memory_format=torch.channels_last)
    images = torch.randn(args.batch_size, 1, args.height, args.width).contiguous(
        memory_format=torch.channels_last
    )
    convolutions = time_convolutions(model, images, args.rounds)
    steps = time_steps(model.train(), images, args.rounds, args.steps)
    result = {
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "machine": {
            **_harness.machine_info(torch.device("cpu")),
            "torch_threads": torch.get_num_threads(),
        },
        "convolutions": convolutions,
        "step_seconds": steps,
        "step_ms": {k: 1000 * statistics.median(v) for k, v in steps.items()},
    }
    print(format_table(result))
    _harness.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
