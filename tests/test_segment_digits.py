"""benchmarks/segment_digits.py: segmentation without labels, training from sums."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnetclf.datasets import make_digit_sums
from resnetclf.heads import digit_sum_log_probs

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def seg():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("segment_digits")


def _centres_inside(ranges, layout) -> np.ndarray:
    centre = ranges.mean(axis=2)
    return (centre >= layout.ink_start) & (centre < layout.ink_stop)


def test_separated_digits_are_found_exactly(seg):
    X, _, layout = make_digit_sums(60, random_state=0, gap=(3, 8), return_layout=True)
    ranges = seg.segment(X, 4)
    assert ranges.shape == (60, 4, 2) and ranges.dtype == np.int64
    np.testing.assert_array_equal(ranges[..., 0], layout.ink_start)
    np.testing.assert_array_equal(ranges[..., 1], layout.ink_stop)


def test_default_layout_is_found_exactly(seg):
    X, _, layout = make_digit_sums(60, random_state=1, return_layout=True)
    ranges = seg.segment(X, 4)
    np.testing.assert_array_equal(ranges[..., 0], layout.ink_start)
    np.testing.assert_array_equal(ranges[..., 1], layout.ink_stop)


def test_touching_digits_are_split(seg):
    X, _, layout = make_digit_sums(100, random_state=2, gap=0, return_layout=True)
    # Every image is one run of ink: nothing but the split can separate them.
    assert all(len(seg._runs(row > 0)) == 1 for row in seg.column_ink(X))
    ranges = seg.segment(X, 4)
    # Ranges tile the run, left to right, and land on the right digits.
    assert (ranges[:, 1:, 0] == ranges[:, :-1, 1]).all()
    assert (ranges[..., 1] > ranges[..., 0]).all()
    assert _centres_inside(ranges, layout).mean() >= 0.98
    scores = seg.segmentation_scores(ranges, layout)
    assert scores["ink_iou"] > 0.85 and scores["centre_in_digit"] >= 0.98


def test_split_cuts_at_the_lowest_ink_near_the_middle(seg):
    ink = np.array([5, 5, 5, 5, 1, 5, 5, 5, 5, 5, 0.0])
    ink[-1] = 0
    # One run of 10 inked columns into two: the valley at column 4 is within
    # a quarter of a piece (5 columns) of the even cut at 5.
    ranges = seg.segment_one(ink, 2)
    np.testing.assert_array_equal(ranges, [[0, 4], [4, 10]])


def test_too_many_runs_merge_across_the_narrowest_gap(seg):
    ink = np.zeros(30)
    ink[0:5] = ink[6:9] = ink[15:20] = 1  # runs 0-5 and 6-9 one pixel apart
    np.testing.assert_array_equal(seg.segment_one(ink, 2), [[0, 9], [15, 20]])


def test_blank_image_splits_evenly(seg):
    np.testing.assert_array_equal(seg.segment_one(np.zeros(8), 2), [[0, 4], [4, 8]])


def test_crops_hold_one_digit_each(seg):
    X, _, layout = make_digit_sums(8, random_state=3, gap=0, return_layout=True)
    ranges = np.stack([layout.ink_start, layout.ink_stop], axis=2)
    crops = seg.crop_digits(X, ranges, size=40)
    assert crops.shape == (8, 4, 1, 40, 40) and crops.dtype == torch.float32
    # At scale 1 a crop is the digit's own pixels, its neighbours blanked.
    for i in range(8):
        for k in range(4):
            a, b = layout.ink_start[i, k], layout.ink_stop[i, k]
            ink = X[i, :, a:b].astype(np.float32) / 255
            got = np.sort(crops[i, k].numpy().ravel())[-ink.size :]
            np.testing.assert_allclose(got, np.sort(ink.ravel()), rtol=1e-6)
            assert crops[i, k].sum().item() == pytest.approx(ink.sum(), rel=1e-5)
    small = seg.crop_digits(X, ranges, size=32)
    assert small.shape == (8, 4, 1, 32, 32)


def test_sum_aggregation_trains_from_sums_alone(seg):
    torch.manual_seed(0)
    X, y, layout = make_digit_sums(16, random_state=4, gap=(0, 2), return_layout=True)
    crops = seg.crop_digits(X, seg.segment(X, 4), size=24)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24 * 24, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    sums = torch.as_tensor(y)
    losses = []
    for _ in range(40):
        log_sum, log_digit = seg.sum_log_probs(model, crops)
        assert log_sum.shape == (16, 37) and log_digit.shape == (16, 4, 10)
        loss = F.nll_loss(log_sum, sums)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # The probabilities of the sums add up to one.
    total = log_sum.exp().sum(dim=1)
    torch.testing.assert_close(total, torch.ones(16), rtol=0, atol=1e-5)


def test_sum_log_probs_matches_the_library_convolution(seg):
    torch.manual_seed(1)
    crops = torch.rand(3, 4, 1, 8, 8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    log_sum, log_digit = seg.sum_log_probs(model, crops)
    torch.testing.assert_close(log_sum, digit_sum_log_probs(log_digit))


def test_pools_are_disjoint_and_outside_the_standin_half(seg):
    train, val, test = seg.digit_pools()
    source, _ = seg.digit_halves()
    for a, b in [(train, val), (train, test), (val, test)]:
        assert np.intersect1d(a, b).size == 0
    for pool in (train, val, test):
        assert np.intersect1d(pool, source).size == 0


def test_evaluate_scores_sums_and_digits(seg):
    X, y, layout = make_digit_sums(6, random_state=5, gap=2, return_layout=True)
    config = seg.SegTrainConfig(crop_size=16)
    crops = seg.crop_digits(X, seg.segment(X, 4), size=16)
    data = seg.SplitData(crops, torch.as_tensor(y), layout.digits, {})
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    scores = seg.evaluate(model, data)
    assert set(scores) == {"sum_accuracy", "digit_accuracy"}
    assert 0 <= scores["sum_accuracy"] <= 1 and config.n_digits == 4


def test_results_of_two_files_merge_and_print(seg):
    def result(seed: int, accuracy: float) -> dict:
        run = {
            "seed": seed, "test_sum_accuracy": accuracy, "test_digit_accuracy": 0.9,
            "val_sum_accuracy": 0.8, "seconds_per_epoch": 10.0, "best_epoch": 3,
        }  # fmt: skip
        runs = {"random": [run]}
        return {"config": {"n_train": 2000}, "runs": runs, "summary": {}}

    merged = seg.merged_results([result(0, 0.5), result(1, 0.7)])
    row = merged["summary"]["random"]
    assert row["seeds"] == 2 and row["test_sum_accuracy"] == pytest.approx(0.6)
    assert merged["seeds"] == [0, 1]
    assert "| random | 2 | 0.600 ± 0.100 |" in seg.markdown_table(merged)
    with pytest.raises(ValueError, match="share"):
        other = {**result(2, 0.1), "config": {"n_train": 10}}
        seg.merged_results([result(0, 0.5), other])
