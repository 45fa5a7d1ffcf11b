"""A stand-in for ImageNet weights on photographs, made here on a CPU.

Pretrained weights cannot be downloaded on the machines these benchmarks run
on. As ``standin.py`` does for the digits, this script makes trained weights
with the library itself: a ResNet trained from random initialisation on a
*source* task, which of four photographs a 64-pixel patch comes from
(:func:`resnetclf.datasets.make_photo_patches`), at a higher resolution than
the target task's patches, as ImageNet's 224 pixels are to a user's small
photos. The source photographs (:data:`SOURCE_PHOTOS`) are never the target
task's (:data:`TASK_PHOTOS`): the backbone has seen photographs, not the
ones it is tested on. Its best epoch is written without its head (the
target task gets a new one), and every figure made from it says how long it
took to make (``seconds`` in its sidecar JSON)::

    python benchmarks/photo_standin.py --patch-size 64 --n-samples 1200 \\
        --epochs 5 --threads 2

The file is cached in ``benchmarks/.cache/`` (git-ignored), named by a hash of
every setting, so a second call with the same settings returns at once. The
photographs of scikit-image are needed (``pip install "resnetclf[photos]"``).
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

import torch

from resnetclf import ResNetFineTuneClassifier
from resnetclf._checkpoint import read_safetensors, save_state_dict_atomic
from resnetclf.datasets import make_photo_patches

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
# The target task's photographs and the stand-in's: none in both.
TASK_PHOTOS = ("china", "flower", "astronaut", "chelsea")
SOURCE_PHOTOS = ("coffee", "rocket", "motorcycle", "immunohistochemistry")


@dataclass(frozen=True)
class PhotoStandinConfig:
    """Settings of a photo stand-in backbone; each gives a file of its own.

    Attributes
    ----------
    arch : str
        torchvision ResNet builder.
    patch_size : int
        Side of the source patches, in pixels.
    n_samples : int
        Source patches, from the ``"train"`` region of each source photograph.
    epochs : int
        Epochs of pretraining; the best validation epoch is kept.
    batch_size : int
        Images per step.
    seed : int
        Seeds the patches and the training.
    """

    arch: str = "resnet18"
    patch_size: int = 64
    n_samples: int = 1200
    epochs: int = 5
    batch_size: int = 32
    seed: int = 0

    def key(self) -> str:
        """A short hash of every setting, for the cache's file name."""
        text = json.dumps({**asdict(self), "photos": SOURCE_PHOTOS}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PhotoStandin:
    """A stand-in backbone on disk (no head) and how it was made."""

    path: Path  # safetensors, torchvision's layout without fc
    info: dict[str, Any]


def make_photo_standin(
    config: PhotoStandinConfig = PhotoStandinConfig(),
    cache_dir: Path = CACHE_DIR,
    verbose: bool = True,
) -> PhotoStandin:
    """Pretrain a backbone on the source photographs, or return the cached one."""
    cache_dir = Path(cache_dir)
    stem = f"photo-standin-{config.arch}-{config.patch_size}px-{config.key()}"
    path, info_path = cache_dir / f"{stem}.safetensors", cache_dir / f"{stem}.json"
    if path.is_file() and info_path.is_file():
        return PhotoStandin(path, json.loads(info_path.read_text()))

    X, y = make_photo_patches(
        config.n_samples,
        config.patch_size,
        random_state=config.seed,
        photos=SOURCE_PHOTOS,
    )
    partial = cache_dir / f"{stem}.partial.safetensors"
    clf = ResNetFineTuneClassifier(
        arch=config.arch,
        weights=None,
        max_iter=config.epochs,
        batch_size=config.batch_size,
        augmentation="photo",
        checkpoint_path=partial,
        device="cpu",
        random_state=config.seed,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    seconds = time.perf_counter() - start
    # Without its head: the source photographs are not the target's classes,
    # and a head of the same size would otherwise be resumed.
    state, _ = read_safetensors(partial.read_bytes(), partial)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    save_state_dict_atomic(backbone, path)
    partial.unlink()
    info = {
        "config": asdict(config),
        "source_task": (
            f"which of {len(SOURCE_PHOTOS)} photographs a {config.patch_size}-px "
            f"patch is from: {', '.join(SOURCE_PHOTOS)}"
        ),
        "seconds": seconds,
        "best_epoch": clf.best_epoch_,
        "best_val_accuracy": clf.best_score_,
        "val_accuracy": [record["val_accuracy"] for record in clf.history_],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    info_path.write_text(json.dumps(info, indent=2))
    if verbose:
        print(
            f"photo stand-in {path.name}: {config.epochs} epochs on "
            f"{config.n_samples} source patches in {seconds:.0f} s, best "
            f"validation accuracy {clf.best_score_:.3f}",
            file=sys.stderr,
        )
    return PhotoStandin(path, info)


def main(argv: list[str] | None = None) -> PhotoStandin:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = PhotoStandinConfig()
    for name, value in asdict(defaults).items():
        option = "--" + name.replace("_", "-")
        parser.add_argument(option, type=type(value), default=value)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {k: getattr(args, k) for k in asdict(defaults)}
    standin = make_photo_standin(PhotoStandinConfig(**settings), args.cache_dir)
    print(json.dumps({"path": str(standin.path), **standin.info}, indent=2))
    return standin


if __name__ == "__main__":
    main()
