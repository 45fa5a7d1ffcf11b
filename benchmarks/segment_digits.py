"""Digit sums by segmentation: split, read each digit, add up; learnt from sums.

The report tried cutting its images into digits and abandoned it. This is the
approach done as a fair comparison, benchmark code rather than library API:

1. :func:`segment` splits each image into ``n_digits`` column ranges without
   any label: the column projection (ink per column) gives runs of inked
   columns; too many runs are merged across their narrowest gaps, too few
   (touching digits) are split at the lowest-ink column near where an even
   split would cut;
2. :func:`crop_digits` cuts a square around each range's ink (the columns
   outside the range blanked, so a touching neighbour's strokes stay out) and
   resizes it to a fixed square, batched with :func:`torchvision.ops.roi_align`;
3. one shared ResNet18 (the library's network builder, one-channel stem)
   gives each crop log-probabilities over 0..9; per image the ``n_digits``
   distributions are combined into the sum's distribution by
   :func:`resnetclf.heads.digit_sum_log_probs`, and cross-entropy on the *sum*
   label trains everything: no digit label is ever used in training.

:func:`segmentation_scores` measures the segmentation against the generator's
ground truth (``make_digit_sums(..., return_layout=True)``, evaluation only);
per-digit accuracy is measured against it too.

Training, validation and test digits come from disjoint pools of
``load_digits`` rows (all inside the stand-in's *target* half, see
``standin.py``, :func:`digit_pools`), so the test set holds no handwritten
image seen in training, in choosing the epoch or in the stand-in's
pretraining::

    python benchmarks/segment_digits.py --segmentation-only
    python benchmarks/segment_digits.py --inits random,standin --seeds 3 \\
        --n-train 2000 --epochs 6 --json benchmarks/results/segment_sums.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn
from torchvision.ops import roi_align

sys.path.insert(0, str(Path(__file__).resolve().parent))

from standin import CACHE_DIR, StandinConfig, digit_halves, make_standin  # noqa: E402

from resnetclf._backbone import build_resnet  # noqa: E402
from resnetclf.datasets import DigitLayout, make_digit_sums  # noqa: E402
from resnetclf.heads import digit_sum_log_probs  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Gap settings of the generator measured here: name -> make_digit_sums' gap.
GAPS: dict[str, int | tuple[int, int] | None] = {
    "random": None,
    "tight": (0, 2),
    "touching": 0,
}


# --------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------


def column_ink(X: np.ndarray) -> np.ndarray:
    """Ink per column: the column projection of each image.

    Parameters
    ----------
    X : ndarray of shape (n_samples, height, width)
        Grayscale images, digits bright on black.

    Returns
    -------
    ink : ndarray of shape (n_samples, width), dtype float64
        The sum of each column's pixel values.
    """
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"X must have shape (n_samples, height, width); got {X.shape}")
    return X.sum(axis=1, dtype=np.float64)


def _runs(inked: np.ndarray) -> list[list[int]]:
    """``[start, stop)`` of each run of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], inked.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [[int(a), int(b)] for a, b in zip(starts, stops)]


def _merge_runs(runs: list[list[int]], n_digits: int) -> list[list[int]]:
    """Merge neighbouring runs across the narrowest gaps until ``n_digits``."""
    runs = [list(r) for r in runs]
    while len(runs) > n_digits:
        gaps = [runs[i + 1][0] - runs[i][1] for i in range(len(runs) - 1)]
        i = int(np.argmin(gaps))
        runs[i : i + 2] = [[runs[i][0], runs[i + 1][1]]]
    return runs


def _split_run(
    ink: np.ndarray, start: int, stop: int, pieces: int, search: float
) -> list[list[int]]:
    """Split ``[start, stop)`` into ``pieces`` at low-ink columns.

    Each cut lies within ``search`` of a piece's width of where an even split
    would cut, at the column with the least ink there (the nearest to the even
    cut among equals).
    """
    width = stop - start
    bounds = [start]
    for j in range(1, pieces):
        target = start + j * width / pieces
        reach = max(1, int(round(search * width / pieces)))
        low = max(bounds[-1] + 1, int(round(target)) - reach)
        high = min(stop - (pieces - j), int(round(target)) + reach)
        if high < low:  # too narrow to search: cut evenly
            bounds.append(min(max(bounds[-1] + 1, int(round(target))), stop - 1))
            continue
        columns = np.arange(low, high + 1)
        order = np.lexsort((np.abs(columns - target), ink[columns]))
        bounds.append(int(columns[order[0]]))
    bounds.append(stop)
    return [[bounds[k], bounds[k + 1]] for k in range(pieces)]


def segment_one(
    ink: np.ndarray, n_digits: int, threshold: float = 0.0, search: float = 0.25
) -> np.ndarray:
    """Column ranges of ``n_digits`` digits in one image's column projection.

    See :func:`segment`; ``ink`` is one row of :func:`column_ink`.
    """
    runs = _runs(ink > threshold)
    if not runs:  # a blank image: even columns
        edges = np.linspace(0, len(ink), n_digits + 1).round().astype(int)
        return np.stack([edges[:-1], edges[1:]], axis=1)
    runs = _merge_runs(runs, n_digits)
    # Extra pieces go one at a time to the run whose pieces are widest.
    pieces = [1] * len(runs)
    for _ in range(n_digits - len(runs)):
        widths = [(b - a) / k for (a, b), k in zip(runs, pieces)]
        pieces[int(np.argmax(widths))] += 1
    ranges: list[list[int]] = []
    for (a, b), k in zip(runs, pieces):
        ranges += _split_run(ink, a, b, k, search) if k > 1 else [[a, b]]
    return np.asarray(ranges, dtype=np.int64)


def segment(
    X: np.ndarray, n_digits: int, *, threshold: float = 0.0, search: float = 0.25
) -> np.ndarray:
    """Split each image into ``n_digits`` column ranges, without labels.

    The column projection (:func:`column_ink`) marks the columns with more
    than ``threshold`` ink; each run of such columns is a candidate digit.
    With more runs than digits, the two neighbouring runs with the narrowest
    gap between them are merged, until ``n_digits`` are left (a digit whose
    strokes leave an empty column). With fewer (touching digits), the widest
    runs are split: each extra piece goes to the run whose pieces are widest,
    and a run of ``k`` pieces is cut at the lowest-ink column within
    ``search`` of a piece's width of each even cut.

    Parameters
    ----------
    X : ndarray of shape (n_samples, height, width)
        Grayscale images, digits bright on a black (zero) background.
    n_digits : int
        Digits per image.
    threshold : float, default=0.0
        Ink a column must exceed to count as inked (raise it for noisy
        backgrounds).
    search : float, default=0.25
        How far from an even cut a split may move, as a fraction of a piece's
        width.

    Returns
    -------
    ranges : ndarray of shape (n_samples, n_digits, 2), dtype int64
        ``[start, stop)`` columns of each digit, left to right.
    """
    if n_digits < 1:
        raise ValueError(f"n_digits must be >= 1; got {n_digits}")
    ink = column_ink(X)
    return np.stack([segment_one(row, n_digits, threshold, search) for row in ink])


def digit_boxes(X: np.ndarray, ranges: np.ndarray, *, min_side: int = 40) -> np.ndarray:
    """A square box around the ink of each column range.

    Parameters
    ----------
    X : ndarray of shape (n_samples, height, width)
        The images.
    ranges : ndarray of shape (n_samples, n_digits, 2)
        Column ranges from :func:`segment`.
    min_side : int, default=40
        Smallest side of a box. The default keeps a 32-pixel digit of a 40-row
        image at its own scale, as the stand-in saw them; larger ink gets a
        box that holds it all.

    Returns
    -------
    boxes : ndarray of shape (n_samples, n_digits, 4), dtype float64
        ``(x1, y1, x2, y2)`` in pixel coordinates (edges, not centres, all
        whole), centred on the ink's bounding box within the range (to half
        a pixel).
    """
    X = np.asarray(X)
    n, k = ranges.shape[:2]
    boxes = np.zeros((n, k, 4))
    rows_inked = X > 0
    for i in range(n):
        for j in range(k):
            a, b = ranges[i, j]
            rows = np.flatnonzero(rows_inked[i, :, a:b].any(axis=1))
            top, bottom = (rows[0], rows[-1] + 1) if rows.size else (0, X.shape[1])
            side = max(min_side, b - a, bottom - top)
            # Whole-pixel edges: at scale 1 a crop copies pixels exactly.
            x1 = math.floor((a + b - side) / 2)
            y1 = math.floor((top + bottom - side) / 2)
            boxes[i, j] = (x1, y1, x1 + side, y1 + side)
    return boxes


def crop_digits(
    X: np.ndarray,
    ranges: np.ndarray,
    *,
    size: int = 40,
    min_side: int = 40,
    batch: int = 512,
) -> torch.Tensor:
    """Cut each digit out and resize it to ``size`` x ``size``.

    The box is :func:`digit_boxes`'; columns outside the digit's range are
    blanked, so a touching neighbour's strokes do not enter its crop. Resized
    with :func:`torchvision.ops.roi_align` (bilinear, adaptive sampling: a
    copy of the pixels at scale 1).

    Parameters
    ----------
    X : ndarray of shape (n_samples, height, width), dtype uint8
        The images.
    ranges : ndarray of shape (n_samples, n_digits, 2)
        Column ranges from :func:`segment`.
    size : int, default=40
        Side of the crops.
    min_side : int, default=40
        Passed to :func:`digit_boxes`.
    batch : int, default=512
        Images per call of ``roi_align``.

    Returns
    -------
    crops : torch.Tensor of shape (n_samples, n_digits, 1, size, size)
        float32 in [0, 1].
    """
    boxes = torch.as_tensor(
        digit_boxes(X, ranges, min_side=min_side), dtype=torch.float32
    )
    n, k = ranges.shape[:2]
    out = torch.empty(n, k, 1, size, size)
    steps = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ranges_t = torch.as_tensor(ranges, dtype=torch.float32)
    height, width = np.asarray(X).shape[1:]
    overhang = torch.cat(
        [-boxes[..., :2], boxes[..., 2:] - torch.tensor([width, height])]
    )
    pad = int(max(0.0, float(overhang.max()))) + 1
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        images = torch.as_tensor(np.asarray(X[start:stop]), dtype=torch.float32)
        # Zero padding: roi_align repeats the edge pixels beyond the image.
        images = F.pad(images.unsqueeze(1) / 255.0, (pad, pad, pad, pad))
        part = boxes[start:stop].reshape(-1, 4)
        index = torch.arange(stop - start, dtype=torch.float32).repeat_interleave(k)
        crops = roi_align(
            images,
            torch.cat([index[:, None], part + pad], dim=1),
            output_size=size,
            spatial_scale=1.0,
            sampling_ratio=0,  # adaptive: one sample per pixel at scale 1
            aligned=True,
        )
        # The crop's columns in image coordinates; keep the range's only.
        x = part[:, 0:1] + steps[None, :] * (part[:, 2:3] - part[:, 0:1])
        r = ranges_t[start:stop].reshape(-1, 2)
        keep = (x >= r[:, 0:1]) & (x < r[:, 1:2])
        crops = crops * keep[:, None, None, :]
        out[start:stop] = crops.reshape(stop - start, k, 1, size, size)
    return out


def _iou_1d(a0, a1, b0, b1) -> np.ndarray:
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)
    union = (a1 - a0) + (b1 - b0) - inter
    return inter / np.maximum(union, 1)


def segmentation_scores(ranges: np.ndarray, layout: DigitLayout) -> dict[str, float]:
    """How well column ranges match the ground truth's strokes.

    Parameters
    ----------
    ranges : ndarray of shape (n_samples, n_digits, 2)
        From :func:`segment`.
    layout : DigitLayout
        From ``make_digit_sums(..., return_layout=True)``.

    Returns
    -------
    scores : dict
        ``centre_in_digit``: fraction of digits whose range's centre lies in
        the true digit's inked columns (``layout.ink_start`` ..
        ``ink_stop``); ``images_all_right``: fraction of images with every
        digit so; ``ink_iou``: mean column IoU of range and inked columns;
        ``iou_over_half``: fraction of digits whose IoU exceeds 0.5.
    """
    start, stop = ranges[..., 0], ranges[..., 1]
    centre = (start + stop) / 2
    inside = (centre >= layout.ink_start) & (centre < layout.ink_stop)
    iou = _iou_1d(start, stop, layout.ink_start, layout.ink_stop)
    return {
        "centre_in_digit": float(inside.mean()),
        "images_all_right": float(inside.all(axis=1).mean()),
        "ink_iou": float(iou.mean()),
        "iou_over_half": float((iou > 0.5).mean()),
    }


def measure_segmentation(
    n_samples: int = 2000, seed: int = 0, gaps: dict | None = None
) -> dict[str, dict[str, float]]:
    """:func:`segmentation_scores` for each gap setting, on fresh images."""
    results = {}
    for name, gap in (gaps or GAPS).items():
        X, _, layout = make_digit_sums(
            n_samples, random_state=seed, gap=gap, return_layout=True
        )
        start = time.perf_counter()
        ranges = segment(X, 4)
        seconds = time.perf_counter() - start
        results[name] = {
            "gap": gap,
            **segmentation_scores(ranges, layout),
            "seconds_per_1000_images": 1000 * seconds / n_samples,
        }
    return results


# --------------------------------------------------------------------------
# Training from sums
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SegTrainConfig:
    """Settings of one training run; the JSON keeps them.

    Attributes
    ----------
    n_train, n_val, n_test : int
        Images, each drawn from its own pool of digits (:func:`digit_pools`).
    epochs : int
        Passes over the training images; the best validation epoch is kept.
    batch_size : int
        Images per step (each gives ``n_digits`` crops).
    lr, weight_decay : float
        Adam's, as the estimator's defaults.
    gap : str
        A key of :data:`GAPS`: the layout of every image.
    crop_size : int
        Side of the crops.
    n_digits : int
        Digits per image.
    """

    n_train: int = 2000
    n_val: int = 500
    n_test: int = 2000
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    gap: str = "random"
    crop_size: int = 40
    n_digits: int = 4


def digit_pools(random_state: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint training, validation and test rows of ``load_digits``.

    The stand-in's target half (:func:`standin.digit_halves`), split 50/10/40
    stratified by digit: no test digit is seen in training, in choosing the
    epoch or in the stand-in's pretraining. Validation digits are unseen in
    training too, so that choosing the epoch measures generalisation to new
    handwriting, as the test does (from the training pool validation
    saturates at once).
    """
    from sklearn.datasets import load_digits

    _, target = digit_halves()
    labels = load_digits().target
    train, rest = train_test_split(
        target, test_size=0.5, stratify=labels[target], random_state=random_state
    )
    val, test = train_test_split(
        rest, test_size=0.8, stratify=labels[rest], random_state=random_state
    )
    return np.sort(train), np.sort(val), np.sort(test)


@dataclass
class SplitData:
    """Crops, sum labels and the ground truth digits (evaluation only)."""

    crops: torch.Tensor  # (n, n_digits, 1, size, size)
    sums: torch.Tensor  # (n,)
    digits: np.ndarray  # (n, n_digits), never used in training
    segmentation: dict[str, float]


def make_split(
    n: int, pool: np.ndarray, seed: int, config: SegTrainConfig
) -> SplitData:
    """Compose ``n`` images from ``pool``, segment and crop them."""
    X, y, layout = make_digit_sums(
        n,
        config.n_digits,
        random_state=seed,
        digit_indices=pool,
        gap=GAPS[config.gap],
        return_layout=True,
    )
    ranges = segment(X, config.n_digits)
    crops = crop_digits(X, ranges, size=config.crop_size)
    return SplitData(
        crops, torch.as_tensor(y), layout.digits, segmentation_scores(ranges, layout)
    )


def digit_network(weights: Path | None) -> nn.Module:
    """A ResNet18 that reads one crop: 1-channel stem, a new 10-way head.

    Built by the library's builder, so a stand-in file loads as the estimator
    would load it. The head is always new: the stand-in's own head was
    trained on digit labels, which this task must not borrow.
    """
    model = build_resnet("resnet18", weights, 10, in_channels=1)
    model.fc = nn.Linear(model.fc.in_features, 10)
    return model


def sum_log_probs(
    model: nn.Module, crops: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum log-probs (N, 9k+1), digit log-probs (N, k, 10))`` of crops."""
    n, k = crops.shape[:2]
    inputs = (crops.reshape(n * k, *crops.shape[2:]) - 0.5) / 0.5
    digit = F.log_softmax(model(inputs).float(), dim=1).reshape(n, k, -1)
    return digit_sum_log_probs(digit), digit


def evaluate(model: nn.Module, data: SplitData, batch: int = 256) -> dict[str, float]:
    """Sum accuracy (most likely sum) and per-digit accuracy on ``data``."""
    model.eval()
    sums, digits = [], []
    with torch.no_grad():
        for start in range(0, len(data.sums), batch):
            log_sum, log_digit = sum_log_probs(model, data.crops[start : start + batch])
            sums.append(log_sum.argmax(dim=1))
            digits.append(log_digit.argmax(dim=2))
    predicted_sums = torch.cat(sums)
    predicted_digits = torch.cat(digits).numpy()
    return {
        "sum_accuracy": float((predicted_sums == data.sums).float().mean()),
        "digit_accuracy": float((predicted_digits == data.digits).mean()),
    }


def train_from_sums(
    train: SplitData,
    val: SplitData,
    config: SegTrainConfig,
    seed: int,
    weights: Path | None = None,
    verbose: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the shared digit network on sum labels; keep the best epoch.

    Cross-entropy of the sum label under :func:`digit_sum_log_probs` of the
    crops' digit distributions; the digit labels are never read.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = digit_network(weights)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    history, best, best_state = [], -1.0, None
    n = len(train.sums)
    for epoch in range(config.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, config.batch_size):
            index = order[i : i + config.batch_size]
            log_sum, _ = sum_log_probs(model, train.crops[index])
            loss = F.nll_loss(log_sum, train.sums[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        train_seconds = time.perf_counter() - start
        scores = evaluate(model, val)
        seconds = time.perf_counter() - start
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / n,
                "val_sum_accuracy": scores["sum_accuracy"],
                "val_digit_accuracy": scores["digit_accuracy"],
                "train_seconds": train_seconds,
                "seconds": seconds,
            }
        )
        if verbose:
            print(
                f"    epoch {epoch + 1}: loss {total / n:.3f} val sum "
                f"{scores['sum_accuracy']:.3f} digit {scores['digit_accuracy']:.3f} "
                f"({seconds:.0f} s)",
                file=sys.stderr,
            )
        if scores["sum_accuracy"] > best:
            best, best_state = scores["sum_accuracy"], copy.deepcopy(model.state_dict())
            best_epoch = epoch + 1
    model.load_state_dict(best_state)
    return model, {
        "history": history,
        "best_epoch": best_epoch,
        "val_sum_accuracy": best,
    }


def run(
    config: SegTrainConfig,
    inits: list[str],
    seeds: list[int],
    standin_config: StandinConfig = StandinConfig(),
    cache_dir: Path = CACHE_DIR,
) -> dict[str, Any]:
    """Every init on every seed; the runs and a summary."""
    train_pool, val_pool, test_pool = digit_pools()
    standin = None
    if "standin" in inits:
        standin = make_standin(standin_config, cache_dir=cache_dir)
    runs: dict[str, list[dict]] = {init: [] for init in inits}
    for seed in seeds:
        start = time.perf_counter()
        train = make_split(config.n_train, train_pool, seed, config)
        val = make_split(config.n_val, val_pool, 1000 + seed, config)
        test = make_split(config.n_test, test_pool, 2000 + seed, config)
        data_seconds = time.perf_counter() - start
        for init in inits:
            weights = standin.path if init == "standin" else None
            print(f"  seed {seed} init {init}", file=sys.stderr)
            start = time.perf_counter()
            model, record = train_from_sums(train, val, config, seed, weights)
            scores = evaluate(model, test)
            history = record["history"]
            runs[init].append(
                {
                    "seed": seed,
                    "test_sum_accuracy": scores["sum_accuracy"],
                    "test_digit_accuracy": scores["digit_accuracy"],
                    "val_sum_accuracy": record["val_sum_accuracy"],
                    "best_epoch": record["best_epoch"],
                    "history": history,
                    "seconds_per_epoch": statistics.fmean(
                        h["seconds"] for h in history
                    ),
                    "train_seconds_per_epoch": statistics.fmean(
                        h["train_seconds"] for h in history
                    ),
                    "seconds": time.perf_counter() - start,
                    "data_seconds": data_seconds,
                    "test_segmentation": test.segmentation,
                }
            )
            print(
                f"  seed {seed} init {init}: test sum {scores['sum_accuracy']:.3f} "
                f"digit {scores['digit_accuracy']:.3f} (best epoch "
                f"{record['best_epoch']})",
                file=sys.stderr,
            )
    return {
        "config": asdict(config),
        "seeds": seeds,
        "pools": {
            "train_rows": len(train_pool),
            "val_rows": len(val_pool),
            "test_rows": len(test_pool),
        },
        "standin": standin.info if standin else None,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "runs": runs,
        "summary": summarise(runs),
    }


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = (
        statistics.stdev(values) / math.sqrt(len(values))
        if len(values) > 1
        else math.nan
    )
    return mean, se


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """Mean and standard error over seeds of each init's figures."""
    summary = {}
    for init, results in runs.items():
        if not results:
            continue
        row: dict[str, Any] = {"seeds": len(results)}
        for key in (
            "test_sum_accuracy",
            "test_digit_accuracy",
            "val_sum_accuracy",
            "seconds_per_epoch",
        ):
            row[key], row[key + "_se"] = _mean_se([r[key] for r in results])
        row["best_epochs"] = [r["best_epoch"] for r in results]
        summary[init] = row
    return summary


def merged_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Saved runs of the same settings as one result, summarised anew."""
    first = results[0]
    for other in results[1:]:
        if other["config"] != first["config"]:
            raise ValueError("results to merge must share every setting")
    runs: dict[str, list[dict]] = {}
    for result in results:
        for init, init_runs in result["runs"].items():
            runs.setdefault(init, []).extend(init_runs)
    seeds = sorted({r["seed"] for init_runs in runs.values() for r in init_runs})
    return {**first, "seeds": seeds, "runs": runs, "summary": summarise(runs)}


def markdown_table(result: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    lines = [
        "| init | seeds | test sum accuracy | test digit accuracy | val sum accuracy "
        "| best epochs | s/epoch |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for init, row in result["summary"].items():
        lines.append(
            f"| {init} | {row['seeds']} "
            f"| {row['test_sum_accuracy']:.3f} ± {row['test_sum_accuracy_se']:.3f} "
            f"| {row['test_digit_accuracy']:.3f} ± {row['test_digit_accuracy_se']:.3f} "
            f"| {row['val_sum_accuracy']:.3f} "
            f"| {', '.join(map(str, row['best_epochs']))} "
            f"| {row['seconds_per_epoch']:.0f} |"
        )
    return "\n".join(lines)


def segmentation_table(results: dict[str, dict[str, float]]) -> str:
    """:func:`measure_segmentation`'s results as a Markdown table."""
    lines = [
        "| layout | gap between strokes (px) | digit centre in true digit "
        "| images all right | column IoU with true ink | IoU > 0.5 "
        "| ms per 1000 images |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        gap = "random (default)" if row["gap"] is None else row["gap"]
        lines.append(
            f"| {name} | {gap} | {row['centre_in_digit']:.4f} "
            f"| {row['images_all_right']:.4f} | {row['ink_iou']:.3f} "
            f"| {row['iou_over_half']:.4f} "
            f"| {1000 * row['seconds_per_1000_images']:.0f} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SegTrainConfig()
    parser.add_argument(
        "--segmentation-only",
        action="store_true",
        help="measure the segmentation on every layout of GAPS; train nothing",
    )
    parser.add_argument("--segmentation-samples", type=int, default=2000)
    parser.add_argument("--inits", default="random,standin")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    for name, value in asdict(defaults).items():
        option = "--" + name.replace("_", "-")
        if name == "gap":
            parser.add_argument(option, choices=sorted(GAPS), default=value)
        else:
            parser.add_argument(option, type=type(value), default=value)
    parser.add_argument("--standin-cache", type=Path, default=CACHE_DIR)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--markdown",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print saved results' table (runs of several files of the same "
        "settings joined, e.g. different seeds); train nothing",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.markdown:
        results = [json.loads(path.read_text()) for path in args.markdown]
        if "segmentation" in results[0]:
            print(segmentation_table(results[0]["segmentation"]))
            return results[0]
        result = merged_results(results)
        print(markdown_table(result))
        return result
    if args.segmentation_only:
        scores = measure_segmentation(args.segmentation_samples, args.first_seed)
        result = {
            "n_samples": args.segmentation_samples,
            "seed": args.first_seed,
            "segmentation": scores,
        }
        print(segmentation_table(scores))
    else:
        config = SegTrainConfig(
            **{k: getattr(args, k) for k in asdict(SegTrainConfig())}
        )
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        result = run(config, args.inits.split(","), seeds, cache_dir=args.standin_cache)
        print(markdown_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
