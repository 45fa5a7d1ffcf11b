"""What the frozen-backbone fast path is worth: a linear probe's fit, both ways.

A fit where only the head trains (``layer_lr_decay=0.0``) on unaugmented
images (``rotation_degrees=0``) computes the backbone's features once and
trains the head on them. This times that fit against the same fit with the
fast path switched off (``resnetclf._switches``: the backbone runs every
epoch), the two taking turns round after round, and checks they learn the
same head. Prints images per second of each and their ratio.

Example::

    python benchmarks/bench_frozen_features.py --arch resnet18 --height 40 \\
        --width 168 --n-samples 512 --epochs 5 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    alternate,
    machine_info,
    rates,
    synthetic_images,
    torch_threads,
    write_json,
)

from resnetclf import ResNetFineTuneClassifier  # noqa: E402
from resnetclf._switches import switched  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--height", type=int, default=40)
    parser.add_argument("--width", type=int, default=168)
    parser.add_argument("--n-samples", type=int, default=512)
    parser.add_argument("--n-classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    X, y = synthetic_images(args.n_samples, args.height, args.width, args.n_classes, 0)
    params = dict(
        arch=args.arch,
        weights=None,
        layer_lr_decay=0.0,
        rotation_degrees=0.0,
        max_iter=args.epochs,
        batch_size=args.batch_size,
        random_state=0,
        device="cpu",
    )

    def fit():
        return ResNetFineTuneClassifier(**params).fit(X, y)

    with torch_threads(args.threads):
        watches = alternate(
            {"features once": fit, "backbone every epoch": fit},
            args.rounds,
            around={
                "backbone every epoch": lambda: switched(frozen_features=False),
                "features once": contextlib.nullcontext,
            },
        )
    n_images = args.n_samples * args.epochs
    result = {"config": vars(args), "machine": machine_info(torch.device("cpu"))}
    for name, runs in watches.items():
        result[name] = rates(n_images, runs)
    fast, plain = (
        watches["features once"][-1].result,
        watches["backbone every epoch"][-1].result,
    )
    heads_differ = max(
        (fast.module_.fc.weight - plain.module_.fc.weight).abs().max().item(),
        (fast.module_.fc.bias - plain.module_.fc.bias).abs().max().item(),
    )
    result["head_max_abs_difference"] = heads_differ
    ratios = [
        a.wall and b.wall / a.wall
        for a, b in zip(watches["features once"], watches["backbone every epoch"])
    ]
    result["speedup_each_round"] = ratios
    result["speedup"] = statistics.median(ratios)
    print(
        f"{args.arch} {args.height}x{args.width}, {args.n_samples} images x "
        f"{args.epochs} epochs, only the head trains; images/s (median of "
        f"{args.rounds} rounds, wall)"
    )
    for name in watches:
        print(f"  {name:22s} {result[name]['images_per_second']:8.1f}")
    print(
        f"  speed-up {result['speedup']:.2f}x (rounds "
        f"{' '.join(f'{r:.2f}' for r in ratios)}); heads differ by at most "
        f"{heads_differ:.1e}"
    )
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    torch.manual_seed(0)
    main()
