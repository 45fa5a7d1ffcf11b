"""A trained stand-in for ImageNet weights, made here on a CPU.

No pretrained weights can be downloaded on the machines these benchmarks run
on, yet the library exists to fine-tune *trained* weights. This script makes
such weights with the library itself: a ResNet is trained from random
initialisation on a *source* task, single handwritten digits (10 classes) at
the target tasks' height, and its best epoch is written with
``checkpoint_path`` as a torchvision state dict file. The benchmarks then
fine-tune that file on *target* tasks (digit sums) with ``weights=path``.

The 1797 images of :func:`sklearn.datasets.load_digits` are split once,
stratified by digit, into a source half and a target half
(:func:`digit_halves`): the backbone never sees a handwritten image that a
target task is built from. It is a stand-in: a backbone that knows strokes
and digits, not ImageNet's million photographs. Every figure made from it
says so, with the time it took to make (``seconds`` in its sidecar JSON)::

    python benchmarks/standin.py --height 40 --width 40 --n-samples 4000 \\
        --epochs 6

The file is cached in ``benchmarks/.cache/`` (git-ignored), named by a hash of
every setting, so a second call with the same settings returns at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from resnetclf import ResNetFineTuneClassifier
from resnetclf.datasets import make_digit_sums

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
_N_DIGIT_IMAGES = 1797  # len(load_digits().images)


def digit_halves(random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split the rows of ``load_digits`` into a source and a target half.

    Stratified by digit, so both halves hold every digit about equally often.

    Returns
    -------
    source, target : ndarray of int
        Disjoint sorted row indices that together cover all 1797 images.
    """
    from sklearn.datasets import load_digits

    targets = load_digits().target
    source, target = train_test_split(
        np.arange(len(targets)),
        test_size=0.5,
        stratify=targets,
        random_state=random_state,
    )
    return np.sort(source), np.sort(target)


@dataclass(frozen=True)
class StandinConfig:
    """Settings of a stand-in backbone; each gives a file of its own.

    Attributes
    ----------
    arch : str
        torchvision ResNet builder.
    height, width : int
        Source image size; the height should be the target's, so that the
        digits have the same size in both tasks.
    n_samples : int
        Source images composed from the source half (each a digit drawn at
        random, placed at random).
    epochs : int
        Epochs of pretraining; the best validation epoch is kept.
    batch_size : int
        Images per step.
    seed : int
        Seeds the composition, the split and the training.
    halves_seed : int
        Seed of :func:`digit_halves`; the target tasks must use the same.
    """

    arch: str = "resnet18"
    height: int = 40
    width: int = 40
    n_samples: int = 4000
    epochs: int = 6
    batch_size: int = 64
    seed: int = 0
    halves_seed: int = 0

    def key(self) -> str:
        """A short hash of every setting, for the cache's file name."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Standin:
    """A stand-in backbone on disk and how it was made."""

    path: Path  # torchvision state dict (10-class head)
    info: dict[str, Any]  # config, seconds, best validation accuracy, ...


def make_standin(
    config: StandinConfig = StandinConfig(),
    cache_dir: Path = CACHE_DIR,
    verbose: bool = True,
    device: str = "cpu",
) -> Standin:
    """Pretrain a backbone on the source task, or return the cached one.

    ``device`` is where it trains; the file is the same kind on any device,
    so it is not part of the cache key.
    """
    cache_dir = Path(cache_dir)
    stem = f"standin-{config.arch}-{config.height}x{config.width}-{config.key()}"
    path, info_path = cache_dir / f"{stem}.pth", cache_dir / f"{stem}.json"
    if path.is_file() and info_path.is_file():
        return Standin(path, json.loads(info_path.read_text()))

    source, _ = digit_halves(config.halves_seed)
    X, y = make_digit_sums(
        config.n_samples,
        n_digits=1,
        image_shape=(config.height, config.width),
        random_state=config.seed,
        digit_indices=source,
    )
    # Written to a name of its own first: the cache never holds a file whose
    # sidecar does not describe it.
    partial = cache_dir / f"{stem}.partial.pth"
    clf = ResNetFineTuneClassifier(
        arch=config.arch,
        weights=None,
        max_iter=config.epochs,
        batch_size=config.batch_size,
        checkpoint_path=partial,
        device=device,
        random_state=config.seed,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    seconds = time.perf_counter() - start
    info = {
        "config": asdict(config),
        "source_task": "one load_digits digit per image, 10 classes, source half",
        "seconds": seconds,
        "best_epoch": clf.best_epoch_,
        "best_val_accuracy": clf.best_score_,
        "val_accuracy": [record["val_accuracy"] for record in clf.history_],
        "device": str(clf.device_),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    partial.replace(path)
    info_path.write_text(json.dumps(info, indent=2))
    if verbose:
        print(
            f"stand-in {path.name}: {config.epochs} epochs on {config.n_samples} "
            f"source images in {seconds:.0f} s, best validation accuracy "
            f"{clf.best_score_:.3f}",
            file=sys.stderr,
        )
    return Standin(path, info)


def main(argv: list[str] | None = None) -> Standin:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = StandinConfig()
    for name, value in asdict(defaults).items():
        option = "--" + name.replace("_", "-")
        parser.add_argument(option, type=type(value), default=value)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {k: getattr(args, k) for k in asdict(defaults)}
    standin = make_standin(
        StandinConfig(**settings), args.cache_dir, device=args.device
    )
    print(json.dumps({"path": str(standin.path), **standin.info}, indent=2))
    return standin


if __name__ == "__main__":
    main()
