"""Batch-norm folding in ``predict`` at fp32 and bf16, alternating in one process.

Predicts 512 random 40x168 images with a ResNet18 (fitted one short epoch
from random weights) with folding forced on and off, at each precision,
three rounds; prints images per CPU-second (one thread, so time other
programs hold the CPU is not counted) and folded / unfolded. Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_fold_precision.py
"""

from __future__ import annotations

import time
from unittest import mock

import numpy as np
import torch

import resnetclf._base as estimator_module
from resnetclf import ResNetFineTuneClassifier


def main() -> dict[tuple[str, bool], list[float]]:
    torch.set_num_threads(1)
    rng = np.random.RandomState(0)
    X = rng.randint(0, 255, size=(512, 40, 168)).astype(np.uint8)
    y = np.arange(len(X)) % 10
    clf = ResNetFineTuneClassifier(
        arch="resnet18",
        weights=None,
        max_iter=1,
        batch_size=64,
        device="cpu",
        random_state=0,
        validation_fraction=0.0,
    ).fit(X[:128], y[:128])
    rates: dict[tuple[str, bool], list[float]] = {}
    for _ in range(3):
        for precision in ("bf16", "fp32"):
            for fold in (True, False):
                clf.set_params(precision=precision)
                with mock.patch.object(
                    estimator_module, "worth_folding", lambda *args, f=fold: f
                ):
                    clf.predict(X[:64])  # warm-up
                    start = time.process_time()
                    clf.predict(X)
                    seconds = time.process_time() - start
                rates.setdefault((precision, fold), []).append(len(X) / seconds)
    for (precision, fold), values in rates.items():
        print(
            f"{precision} {'folded' if fold else 'unfolded'}: "
            f"{np.median(values):.1f} images per CPU-second (median of "
            f"{', '.join(f'{v:.0f}' for v in values)})"
        )
    for precision in ("bf16", "fp32"):
        ratio = np.median(rates[precision, True]) / np.median(rates[precision, False])
        print(f"{precision}: folded / unfolded {ratio:.3f}")
    return rates


if __name__ == "__main__":
    main()
