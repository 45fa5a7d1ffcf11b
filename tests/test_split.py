"""The public splits: exact sizes, rare classes, determinism, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from resnetclf import (
    SplitIndices,
    SplitInfo,
    stratified_subsample,
    train_val_test_split,
)
from resnetclf._split import stratified_holdout


def _digit_sum_like_labels(n: int, seed: int = 0) -> np.ndarray:
    """37 classes with the merged data set's bell shape: the ends are rare."""
    rng = np.random.RandomState(seed)
    return rng.randint(0, 10, size=(n, 4)).sum(axis=1)


def _check_partition(split: SplitIndices, n: int) -> None:
    for part in (split.train, split.val, split.test):
        assert part.dtype.kind == "i"
        assert np.all(np.diff(part) > 0), "sorted, no repeats"
    everything = np.concatenate([split.train, split.val, split.test])
    assert np.array_equal(np.sort(everything), np.arange(n))


@pytest.mark.parametrize(
    "n, val_size, test_size, expected",
    [
        (1000, 0.1, 0.1, (800, 100, 100)),
        (600, 0.1, 0.1, (480, 60, 60)),
        (1000, 0.25, 0.05, (700, 250, 50)),
        (1000, 0.0, 0.2, (800, 0, 200)),
        (1000, 37, 100, (863, 37, 100)),
    ],
)
def test_sizes_are_the_requested_shares(n, val_size, test_size, expected):
    y = _digit_sum_like_labels(n)
    split = train_val_test_split(
        y, val_size=val_size, test_size=test_size, random_state=0
    )
    _check_partition(split, n)
    assert (len(split.train), len(split.val), len(split.test)) == expected
    assert split.info.n_val_requested == expected[1]
    assert split.info.n_test_requested == expected[2]


def test_each_part_follows_the_class_proportions():
    y = np.repeat([0, 1, 2, 3], [400, 300, 200, 100])
    train, val, test, info = train_val_test_split(y, random_state=0)
    assert np.bincount(y[val]).tolist() == [40, 30, 20, 10]
    assert np.bincount(y[test]).tolist() == [40, 30, 20, 10]
    assert np.bincount(y[train]).tolist() == [320, 240, 160, 80]
    assert info.classes_only_in_train.size == 0


@pytest.mark.parametrize("seed", range(5))
def test_rare_classes_of_one_and_two_samples(seed):
    y = np.concatenate([np.repeat([0, 1, 2], 40), ["a"], ["b", "b"]]).astype(str)
    y = np.random.RandomState(seed).permutation(y)
    split = train_val_test_split(y, random_state=seed)
    _check_partition(split, len(y))
    # The single sample cannot be held out; of the pair, one must stay in training.
    assert "a" in y[split.train]
    assert np.sum(y[split.train] == "b") >= 1
    assert "a" in split.info.classes_only_in_train
    assert split.info.classes_only_in_train.dtype == y.dtype
    assert len(split.val) + len(split.test) == 2 * 12


@pytest.mark.parametrize("seed", range(8))
def test_every_held_out_class_is_trained_on(seed):
    # Many tiny classes and held-out parts smaller than the number of classes.
    y = _digit_sum_like_labels(150, seed)
    split = train_val_test_split(y, val_size=0.1, test_size=0.1, random_state=seed)
    _check_partition(split, len(y))
    assert np.isin(y[split.val], y[split.train]).all()
    assert np.isin(y[split.test], y[split.train]).all()
    never_held = np.setdiff1d(y, np.concatenate([y[split.val], y[split.test]]))
    assert np.array_equal(split.info.classes_only_in_train, never_held)


def test_parts_shrink_only_when_classes_cannot_spare_samples():
    y = np.array([0, 0, 1, 1, 2, 3, 4, 5])  # only two samples can be spared
    split = train_val_test_split(y, val_size=2, test_size=2, random_state=0)
    _check_partition(split, len(y))
    assert len(split.val) + len(split.test) == 2
    assert np.isin(y[split.val], y[split.train]).all()
    assert np.isin(y[split.test], y[split.train]).all()
    assert "smaller than asked" in split.summary()
    assert split.info.classes_only_in_train.tolist() == [2, 3, 4, 5]


def test_same_seed_same_split_other_seed_other_split():
    y = _digit_sum_like_labels(500)
    first = train_val_test_split(y, random_state=3)
    again = train_val_test_split(y, random_state=3)
    other = train_val_test_split(y, random_state=4)
    for a, b in zip(first[:3], again[:3]):
        assert np.array_equal(a, b)
    assert not np.array_equal(first.test, other.test)
    rng = np.random.RandomState(3)
    from_rng = train_val_test_split(y, random_state=rng)
    assert np.array_equal(from_rng.test, first.test)


def test_named_tuple_unpacks_and_summarises():
    y = _digit_sum_like_labels(300)
    split = train_val_test_split(y, random_state=0)
    train, val, test, info = split
    assert isinstance(info, SplitInfo)
    assert split.summary().startswith("240 training, 30 validation, 30 test")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"val_size": 1.0}, ValueError, r"val_size=1.0 .*\[0, 1\)"),
        ({"test_size": -0.1}, ValueError, "test_size"),
        ({"val_size": 100}, ValueError, r"val_size=100 as a count"),
        ({"test_size": -1}, ValueError, "test_size"),
        ({"val_size": 0.6, "test_size": 0.5}, ValueError, "at least one must stay"),
        ({"val_size": 50, "test_size": 50}, ValueError, "at least one must stay"),
        ({"val_size": "0.1"}, TypeError, "val_size must be a float"),
        ({"test_size": True}, TypeError, "test_size"),
        ({"test_size": None}, TypeError, "test_size"),
    ],
)
def test_bad_sizes_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        train_val_test_split(np.arange(100) % 3, **kwargs)


@pytest.mark.parametrize(
    "y, match",
    [(np.zeros((10, 2)), "1-D"), (np.array([]), "empty")],
)
def test_bad_labels_are_refused(y, match):
    with pytest.raises(ValueError, match=match):
        train_val_test_split(y)
    with pytest.raises(ValueError, match=match):
        stratified_subsample(y, 5)


def test_subsample_is_stratified_exact_and_repeatable():
    y = np.repeat(["x", "y", "z"], [600, 300, 100])
    chosen = stratified_subsample(y, 100, random_state=0)
    assert len(chosen) == 100 and np.all(np.diff(chosen) > 0)
    assert [np.sum(y[chosen] == c) for c in "xyz"] == [60, 30, 10]
    assert np.array_equal(chosen, stratified_subsample(y, 100, random_state=0))
    assert not np.array_equal(chosen, stratified_subsample(y, 100, random_state=1))


def test_subsample_smaller_than_the_class_count_and_of_everything():
    y = _digit_sum_like_labels(2000)
    chosen = stratified_subsample(y, 20, random_state=0)
    assert len(chosen) == 20 and len(np.unique(chosen)) == 20
    assert np.array_equal(stratified_subsample(y, 5000), np.arange(2000))


@pytest.mark.parametrize(
    "n_samples, error", [(0, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_subsample_refuses_bad_sizes(n_samples, error):
    with pytest.raises(error, match="n_samples"):
        stratified_subsample(np.arange(10), n_samples)


def test_private_holdout_still_keeps_a_training_sample_per_class():
    y_encoded = np.repeat([0, 1, 2], [1, 2, 30])
    train, val, unsplit = stratified_holdout(y_encoded, 0.2, np.random.RandomState(0))
    assert np.isin(y_encoded[val], y_encoded[train]).all()
    assert 0 in unsplit
