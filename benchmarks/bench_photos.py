"""Photos as users bring them: what ``input_size``, the augmentations, MixUp,
CutMix and test-time views cost and give.

Three parts, chosen with ``--parts``:

``throughput``
    Fit throughput (images per second of training) of ResNet18 on 32-pixel
    photo patches with each augmentation preset, MixUp and CutMix, against
    ``augmentation=None``: the fits take turns, round after round, so a slow
    spell of a shared machine falls on all alike; ratios per round.
``epoch224``
    The CPU time of one training epoch of ResNet18 at 224x224 (patches
    brought up with ``input_size=224``), measured once.
``accuracy``
    A real-photo task: which of four photographs a 16-pixel patch comes
    from (:func:`resnetclf.datasets.make_photo_patches`, training and test
    patches from disjoint regions), fitted from random initialisation and
    from a stand-in backbone pretrained at 64 pixels on four *other*
    photographs (``photo_standin.py``); ``input_size`` None vs 2x vs 4x, each
    augmentation, MixUp, CutMix, and test-time views, over several seeds:
    mean ± standard error of the test accuracy, the best-validation epoch
    (20% of the training patches held out) and the fit's seconds.

Example (about an hour on two shared CPU cores, most of it the 4x rows)::

    python benchmarks/bench_photos.py --threads 2 \\
        --json benchmarks/results/photos_patches_16px_3seeds.json

Needs the photographs of scikit-image (``pip install "resnetclf[photos]"``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    alternate,
    log,
    machine_info,
    mean_se_text,
    rates,
    torch_threads,
    write_json,
)
from photo_standin import (  # noqa: E402
    CACHE_DIR,
    TASK_PHOTOS,
    PhotoStandinConfig,
    make_photo_standin,
)

from resnetclf import ResNetFineTuneClassifier  # noqa: E402
from resnetclf._acceleration.devices import amp_dtype_for  # noqa: E402
from resnetclf._test_time import ViewSettings  # noqa: E402
from resnetclf.datasets import make_photo_patches  # noqa: E402

PARTS = ("throughput", "epoch224", "accuracy")
# Throughput variants: estimator parameters on top of the fit's own.
THROUGHPUT_VARIANTS = {
    "none": dict(augmentation=None),
    "rotation": dict(augmentation="rotation"),
    "photo": dict(augmentation="photo"),
    "none + MixUp": dict(augmentation=None, mixup_alpha=0.2),
    "none + CutMix": dict(augmentation=None, cutmix_alpha=1.0),
    "photo + MixUp + CutMix": dict(
        augmentation="photo", mixup_alpha=0.2, cutmix_alpha=1.0
    ),
}


@dataclass(frozen=True)
class Config:
    """Every setting of a run; recorded in its JSON."""

    patch_size: int = 16  # the task's patches, in pixels
    n_train: int = 400  # training patches (20% held out for the best epoch)
    n_test: int = 400  # test patches, from the test region
    epochs: int = 8
    batch_size: int = 32
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    base_scale: int = 4  # input size (times the patch) of the rows that vary the rest
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    throughput_images: int = 512
    throughput_size: int = 32
    throughput_rounds: int = 7
    epoch224_images: int = 128
    threads: int | None = 2
    standin: PhotoStandinConfig = field(default_factory=PhotoStandinConfig)


QUICK = Config(
    patch_size=8,
    n_train=24,
    n_test=16,
    epochs=1,
    batch_size=8,
    seeds=(0,),
    throughput_images=16,
    throughput_size=16,
    throughput_rounds=1,
    epoch224_images=2,
    threads=1,
    standin=PhotoStandinConfig(patch_size=16, n_samples=32, epochs=1, batch_size=8),
)


def _estimator(seed: int, batch_size: int, **params) -> ResNetFineTuneClassifier:
    defaults = dict(
        arch="resnet18",
        weights=None,
        batch_size=batch_size,
        device="cpu",
        random_state=seed,
    )
    return ResNetFineTuneClassifier(**{**defaults, **params})


def _fit(clf: ResNetFineTuneClassifier, X, y) -> ResNetFineTuneClassifier:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clf.fit(X, y)


# ----------------------------------------------------------------- throughput
def throughput(config: Config) -> dict[str, Any]:
    """Images per second of a one-epoch fit with each variant, in turns."""
    X, y = make_photo_patches(
        config.throughput_images,
        config.throughput_size,
        random_state=0,
        photos=TASK_PHOTOS,
    )

    def fit_with(params: dict):
        clf = _estimator(
            0, config.batch_size, max_iter=1, validation_fraction=0.0, **params
        )
        return lambda: _fit(clf, X, y)

    fit_with({})()  # warm-up: the first fit of a process pays for it
    runs = {name: fit_with(params) for name, params in THROUGHPUT_VARIANTS.items()}
    watches = alternate(runs, config.throughput_rounds)
    result = {
        name: rates(len(X), watches[name]) for name in THROUGHPUT_VARIANTS
    }  # fmt: skip
    baseline = [w.wall for w in watches["none"]]
    for name in THROUGHPUT_VARIANTS:
        per_round = [b / w.wall for b, w in zip(baseline, watches[name])]
        result[name]["ratio_to_none_each_round"] = per_round
        result[name]["ratio_to_none"] = statistics.median(per_round)
    return result


def throughput_table(result: dict[str, Any], config: Config) -> str:
    lines = [
        f"Fit throughput, ResNet18, {config.throughput_images} photo patches of "
        f"{config.throughput_size}x{config.throughput_size}, one epoch, batch "
        f"{config.batch_size}, median of {config.throughput_rounds} rounds",
        "",
        "| augmentation | images/s | vs none (median of rounds) |",
        "|---|---:|---:|",
    ]
    for name, entry in result.items():
        lines.append(
            f"| {name} | {entry['images_per_second']:.1f} | "
            f"{entry['ratio_to_none']:.2f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ 224 px
def epoch224(config: Config) -> dict[str, Any]:
    """Seconds of one training epoch of ResNet18 at 224x224, at the default
    precision (bf16 on CPUs that compute it natively) and in float32."""
    X, y = make_photo_patches(
        config.epoch224_images, 32, random_state=0, photos=TASK_PHOTOS
    )
    result = {}
    for precision in ("auto", "fp32"):
        clf = _estimator(
            0,
            config.batch_size,
            max_iter=1,
            validation_fraction=0.0,
            input_size=224,
            augmentation="photo",
            precision=precision,
        )
        _fit(clf, X, y)
        seconds = clf.history_[0]["seconds"]
        result[precision] = {
            "autocast": str(amp_dtype_for(torch.device("cpu"), precision)),
            "n_images": len(X),
            "input_size": list(clf.input_size_),
            "epoch_seconds": seconds,
            "seconds_per_image": seconds / len(X),
        }
    return result


# ------------------------------------------------------------------ accuracy
def accuracy_runs(config: Config) -> dict[str, dict[str, Any]]:
    """The rows of the accuracy table: name -> initial weights and parameters."""
    patch = config.patch_size
    runs: dict[str, dict[str, Any]] = {}
    for init in ("scratch", "stand-in"):
        for scale in (1, 2, 4):
            size = None if scale == 1 else scale * patch
            runs[f"{init}, {_size_label(scale, patch)}, photo"] = dict(
                init=init, params=dict(input_size=size, augmentation="photo")
            )
    scale = config.base_scale
    base = f"stand-in, {_size_label(scale, patch)}"
    size = dict(input_size=scale * patch)
    runs[f"{base}, none"] = dict(init="stand-in", params={**size, "augmentation": None})
    runs[f"{base}, rotation"] = dict(
        init="stand-in", params={**size, "augmentation": "rotation"}
    )
    runs[f"{base}, photo + MixUp {config.mixup_alpha:g}"] = dict(
        init="stand-in",
        params={**size, "augmentation": "photo", "mixup_alpha": config.mixup_alpha},
    )
    runs[f"{base}, photo + CutMix {config.cutmix_alpha:g}"] = dict(
        init="stand-in",
        params={**size, "augmentation": "photo", "cutmix_alpha": config.cutmix_alpha},
    )
    return runs


def _size_label(scale: int, patch: int) -> str:
    return f"own size ({patch} px)" if scale == 1 else f"{scale}x ({scale * patch} px)"


def _one_fit(config, seed, standin_path, run, data) -> dict[str, Any]:
    X_train, y_train, X_test, y_test = data
    weights = None if run["init"] == "scratch" else str(standin_path)
    clf = _estimator(
        seed,
        config.batch_size,
        weights=weights,
        max_iter=config.epochs,
        validation_fraction=0.2,
        **run["params"],
    )
    start = time.perf_counter()
    _fit(clf, X_train, y_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = clf.score(X_test, y_test)
    predict_seconds = time.perf_counter() - start
    # Every view once; the first k of them averaged, as predict_proba(tta=k).
    views = len(_view_names(clf))
    start = time.perf_counter()
    logits = clf.set_params(tta=views)._view_logits(X_test)
    views_seconds = time.perf_counter() - start
    proba = torch.softmax(logits.double(), dim=2).cumsum(dim=0)
    tta_accuracy = [
        float((proba[k].argmax(dim=1).numpy() == y_test).mean()) for k in range(views)
    ]
    return {
        "seed": seed,
        "test_accuracy": accuracy,
        "tta_accuracy": tta_accuracy,  # with the first k + 1 views
        "tta_views": _view_names(clf),
        "best_epoch": clf.best_epoch_,
        "best_val_accuracy": clf.best_score_,
        "val_accuracy": [r["val_accuracy"] for r in clf.history_],
        "input_size": list(clf.input_size_),
        "fit_seconds": fit_seconds,
        "epoch_seconds": [r["seconds"] for r in clf.history_],
        "predict_seconds": predict_seconds,
        "all_views_predict_seconds": views_seconds,
    }


def _view_names(clf: ResNetFineTuneClassifier) -> list[str]:
    return ViewSettings(clf._tta_flips, clf._tta_degrees).names()


def accuracy(config: Config, cache_dir: Path) -> dict[str, Any]:
    """Every row of :func:`accuracy_runs`, for every seed."""
    standin = make_photo_standin(config.standin, cache_dir)
    runs = accuracy_runs(config)
    records: dict[str, list] = {name: [] for name in runs}
    for seed in config.seeds:
        X_train, y_train = make_photo_patches(
            config.n_train, config.patch_size, "train", seed, photos=TASK_PHOTOS
        )
        X_test, y_test = make_photo_patches(
            config.n_test, config.patch_size, "test", 1000 + seed, photos=TASK_PHOTOS
        )
        data = (X_train, y_train, X_test, y_test)
        for name, run in runs.items():
            log(f"seed {seed}: {name}")
            records[name].append(_one_fit(config, seed, standin.path, run, data))
    return {
        "standin": {"file": standin.path.name, **standin.info},
        "task_photos": list(TASK_PHOTOS),
        "runs": {
            name: {**runs[name], "seeds": records[name]} for name in runs
        },  # fmt: skip
    }


def accuracy_table(result: dict[str, Any], config: Config) -> str:
    lines = [
        f"Which of {len(TASK_PHOTOS)} photographs a {config.patch_size}-px patch "
        f"is from: ResNet18, {config.n_train} training patches (20% held out "
        f"for the best epoch), {config.n_test} test patches from other regions, "
        f"{config.epochs} epochs, batch {config.batch_size}; mean ± standard "
        f"error over {len(config.seeds)} seeds",
        "",
        "| initial weights, input size, augmentation | test accuracy "
        "| `tta=2` | all test-time views (`tta`) | best epoch | fit seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, run in result["runs"].items():
        seeds = run["seeds"]
        n_views = len(seeds[0]["tta_views"])
        lines.append(
            f"| {name} | {mean_se_text([s['test_accuracy'] for s in seeds])} | "
            f"{mean_se_text([s['tta_accuracy'][1] for s in seeds])} | "
            f"{mean_se_text([s['tta_accuracy'][-1] for s in seeds])} ({n_views}) | "
            f"{statistics.fmean(s['best_epoch'] for s in seeds):.1f} | "
            f"{statistics.fmean(s['fit_seconds'] for s in seeds):.0f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--quick", action="store_true", help="tiny, for tests")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    parts = [part for part in args.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown parts {unknown}; expected some of {PARTS}")
    config = QUICK if args.quick else Config()
    changes = {"threads": args.threads, "epochs": args.epochs}
    changes["seeds"] = tuple(args.seeds) if args.seeds else None
    config = replace(config, **{k: v for k, v in changes.items() if v is not None})
    cpu = torch.device("cpu")
    result: dict[str, Any] = {
        "script": "bench_photos.py",
        "config": asdict(config),
        "machine": machine_info(cpu),
        "autocast": str(amp_dtype_for(cpu, "auto")),
    }
    start = time.perf_counter()
    with torch_threads(config.threads):
        if "throughput" in parts:
            result["throughput"] = throughput(config)
            print(throughput_table(result["throughput"], config), end="\n\n")
        if "epoch224" in parts:
            result["epoch224"] = epoch224(config)
            for precision, entry in result["epoch224"].items():
                print(
                    f"ResNet18 at 224x224, precision={precision!r} "
                    f"({entry['autocast']}): one epoch of {entry['n_images']} "
                    f"images in {entry['epoch_seconds']:.1f} s "
                    f"({entry['seconds_per_image']:.3f} s per image)"
                )
            print()
        if "accuracy" in parts:
            result["accuracy"] = accuracy(config, args.cache_dir)
            print(accuracy_table(result["accuracy"], config))
    result["total_seconds"] = time.perf_counter() - start
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
