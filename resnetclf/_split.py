"""Class-stratified splits that survive rare classes.

``stratified_holdout`` holds a validation set out of the training data inside
``fit``; ``train_val_test_split`` and ``stratified_subsample`` are the public
splits of a whole data set.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils import check_random_state

__all__ = [
    "SplitIndices",
    "SplitInfo",
    "random_holdout",
    "stratified_holdout",
    "stratified_subsample",
    "train_val_test_split",
]


def random_holdout(
    n_samples: int, fraction: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Hold about ``fraction`` of ``n_samples`` out at random (targets that
    are not classes: values, label sets), keeping at least one training
    sample; sorted training and validation indices."""
    n_val = min(int(round(fraction * n_samples)), n_samples - 1)
    order = rng.permutation(n_samples)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def stratified_holdout(
    y_encoded: np.ndarray, fraction: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split sample indices into training and validation parts, class by class.

    About ``fraction`` of the samples are held out, shared among the classes in
    proportion to their sizes (largest remainders get the rounding), and every
    class keeps at least one training sample. A class whose share rounds to
    nothing stays whole in the training part: unlike ``train_test_split``, a
    handful of rare classes does not make the split impossible.

    Parameters
    ----------
    y_encoded : ndarray of shape (n_samples,)
        Class indices ``0 .. n_classes - 1``.
    fraction : float
        In (0, 1).
    rng : RandomState
        Chooses which samples of each class are held out.

    Returns
    -------
    train_indices, val_indices : ndarray of int
        Sorted, disjoint, together all samples.
    unsplit_classes : ndarray of int
        Classes with no validation sample.
    """
    counts = np.bincount(y_encoded)
    n_val_total = min(
        int(round(fraction * len(y_encoded))), int(np.sum(np.maximum(counts - 1, 0)))
    )
    n_val_total = max(n_val_total, 1) if np.any(counts > 1) else 0
    capacity = np.maximum(counts - 1, 0)
    shares = counts * (n_val_total / len(y_encoded))
    n_val = np.minimum(np.floor(shares).astype(int), capacity)
    # Hand out what rounding left over, largest remainders first, within capacity.
    for cls in np.argsort(-(shares - np.floor(shares)), kind="stable"):
        if n_val.sum() >= n_val_total:
            break
        if n_val[cls] < capacity[cls]:
            n_val[cls] += 1

    is_val = np.zeros(len(y_encoded), dtype=bool)
    for cls in np.flatnonzero(n_val):
        members = np.flatnonzero(y_encoded == cls)
        is_val[rng.choice(members, size=n_val[cls], replace=False)] = True
    unsplit = np.flatnonzero((n_val == 0) & (counts > 0))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val), unsplit


class SplitInfo(NamedTuple):
    """How :func:`train_val_test_split` cut the data.

    Attributes
    ----------
    classes_only_in_train : ndarray
        Labels with no sample in the validation or test part: classes too small
        to stratify (a single sample, or a share of the held-out parts that
        rounds to nothing), kept whole in the training part.
    n_val_requested, n_test_requested : int
        The sizes asked for, as counts. A part comes out smaller only when the
        classes cannot spare more samples while keeping one each for training.
    """

    classes_only_in_train: np.ndarray
    n_val_requested: int
    n_test_requested: int


class SplitIndices(NamedTuple):
    """Indices of the training, validation and test parts.

    Attributes
    ----------
    train, val, test : ndarray of int
        Sorted, disjoint indices into ``y`` that together cover every sample.
    info : SplitInfo
        How the split was made.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    info: SplitInfo

    def summary(self) -> str:
        """One line for a log: the sizes and what the split had to give up.

        Returns
        -------
        text : str
            Part sizes, the classes kept whole in training, and any part that
            came out smaller than asked.
        """
        text = (
            f"{len(self.train)} training, {len(self.val)} validation, "
            f"{len(self.test)} test samples, stratified by class"
        )
        rare = self.info.classes_only_in_train
        if len(rare):
            shown = ", ".join(str(label) for label in rare[:20].tolist())
            more = " ..." if len(rare) > 20 else ""
            text += (
                f"; {len(rare)} class(es) too small to give a validation or test "
                f"sample kept whole in training: {shown}{more}"
            )
        short = [
            f"{name} {len(part)} of {asked}"
            for name, part, asked in (
                ("validation", self.val, self.info.n_val_requested),
                ("test", self.test, self.info.n_test_requested),
            )
            if len(part) < asked
        ]
        if short:
            text += (
                "; smaller than asked, as the classes cannot spare more samples "
                "while keeping one each for training: " + ", ".join(short)
            )
        return text


def train_val_test_split(
    y: ArrayLike,
    *,
    val_size: float | int = 0.1,
    test_size: float | int = 0.1,
    random_state: int | np.random.RandomState | None = None,
) -> SplitIndices:
    """Split samples into training, validation and test parts, class by class.

    Each held-out part takes from every class a share proportional to the
    class's size; the shares that rounding leaves over go to the classes with
    the largest remainders (ties drawn at random), as in stratified
    resampling. Unlike ``train_test_split(..., stratify=y)``, this never fails
    on rare classes: every class keeps at least one training sample, so a
    class with a single sample (or with a share that rounds to nothing) stays
    whole in the training part, and every class in the validation or test
    part is also in the training part. A part comes out smaller than asked
    only when the classes cannot spare enough samples under that rule.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels of any kind (ints, strings, ...).
    val_size : float or int, default=0.1
        A float in [0, 1) is the share of all samples that goes to the
        validation part (rounded to the nearest count); an int is the count.
    test_size : float or int, default=0.1
        The same for the test part. Together the two parts must leave at
        least one training sample.
    random_state : int, RandomState instance or None, default=None
        Chooses the samples within each class (and breaks ties between
        remainders). An int gives the same split on every call.

    Returns
    -------
    split : SplitIndices
        Named tuple ``(train, val, test, info)`` of sorted index arrays and a
        :class:`SplitInfo`.

    Raises
    ------
    TypeError
        If a size is not a number.
    ValueError
        If ``y`` is not 1-D or empty, or a size is out of range.

    See Also
    --------
    sklearn.model_selection.train_test_split : the two-way split it extends.
    stratified_subsample : a stratified subset of a given size.

    Examples
    --------
    >>> import numpy as np
    >>> from resnetclf import train_val_test_split
    >>> y = np.array([0] * 50 + [1] * 49 + [2])  # class 2 has a single sample
    >>> train, val, test, info = train_val_test_split(y, random_state=0)
    >>> len(train), len(val), len(test)
    (80, 10, 10)
    >>> info.classes_only_in_train.tolist()
    [2]
    >>> bool(np.isin(y[val], y[train]).all())
    True
    """
    labels = _check_labels(y)
    n_samples = len(labels)
    n_val = _size_as_count(val_size, n_samples, "val_size")
    n_test = _size_as_count(test_size, n_samples, "test_size")
    if n_val + n_test >= n_samples:
        raise ValueError(
            f"val_size={val_size!r} and test_size={test_size!r} take {n_val} + "
            f"{n_test} of {n_samples} samples; at least one must stay for training"
        )
    rng = check_random_state(random_state)
    classes, y_encoded = np.unique(labels, return_inverse=True)
    counts = np.bincount(y_encoded, minlength=len(classes))
    # Every class keeps one training sample: a held-out class is always trained on.
    n_test_per_class = _proportional_counts(counts, n_test, counts - 1, rng)
    n_val_per_class = _proportional_counts(
        counts, n_val, counts - 1 - n_test_per_class, rng
    )
    rank = _rank_within_class(y_encoded, rng)
    is_test = rank < n_test_per_class[y_encoded]
    is_val = ~is_test & (rank < (n_test_per_class + n_val_per_class)[y_encoded])
    only_in_train = (n_test_per_class + n_val_per_class) == 0
    info = SplitInfo(classes[only_in_train], n_val, n_test)
    return SplitIndices(
        np.flatnonzero(~(is_test | is_val)),
        np.flatnonzero(is_val),
        np.flatnonzero(is_test),
        info,
    )


def stratified_subsample(
    y: ArrayLike,
    n_samples: int,
    *,
    random_state: int | np.random.RandomState | None = None,
) -> np.ndarray:
    """Indices of a random subset of ``n_samples`` samples, stratified by class.

    Each class gives a share proportional to its size; the shares that
    rounding leaves over go to the classes with the largest remainders (ties
    drawn at random), so a rare class may be left out of a small subset.

    Parameters
    ----------
    y : array-like of shape (n_total,)
        Class labels.
    n_samples : int
        Size of the subset, at least 1; all samples when it is not below
        ``n_total``.
    random_state : int, RandomState instance or None, default=None
        Chooses the samples; an int gives the same subset on every call.

    Returns
    -------
    indices : ndarray of int
        Sorted indices of the subset.

    Examples
    --------
    >>> import numpy as np
    >>> from resnetclf import stratified_subsample
    >>> y = np.array([0] * 80 + [1] * 20)
    >>> chosen = stratified_subsample(y, 10, random_state=0)
    >>> np.bincount(y[chosen]).tolist()
    [8, 2]
    """
    labels = _check_labels(y)
    if isinstance(n_samples, bool) or not isinstance(n_samples, Integral):
        raise TypeError(
            f"n_samples must be an int >= 1; got {type(n_samples).__name__}"
        )
    if n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1; got {n_samples}")
    if n_samples >= len(labels):
        return np.arange(len(labels))
    rng = check_random_state(random_state)
    _, y_encoded = np.unique(labels, return_inverse=True)
    counts = np.bincount(y_encoded)
    per_class = _proportional_counts(counts, int(n_samples), counts, rng)
    rank = _rank_within_class(y_encoded, rng)
    return np.flatnonzero(rank < per_class[y_encoded])


def _check_labels(y) -> np.ndarray:
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(
            f"y must be 1-D, of shape (n_samples,); got an array of shape "
            f"{labels.shape}"
        )
    if len(labels) == 0:
        raise ValueError("y is empty: there is nothing to split")
    return labels


def _size_as_count(size, n_samples: int, name: str) -> int:
    """A size given as a share (float) or a count (int) -> a count."""
    if isinstance(size, bool) or not isinstance(size, (Integral, Real)):
        raise TypeError(
            f"{name} must be a float in [0, 1) or an int count; got "
            f"{type(size).__name__}"
        )
    if isinstance(size, Integral):
        if not 0 <= size < n_samples:
            raise ValueError(
                f"{name}={size} as a count must be in [0, {n_samples}) for "
                f"{n_samples} samples"
            )
        return int(size)
    if not 0.0 <= size < 1.0:
        raise ValueError(f"{name}={size!r} as a share must be in [0, 1)")
    return int(np.floor(size * n_samples + 0.5))


def _proportional_counts(
    counts: np.ndarray, total: int, capacity: np.ndarray, rng: np.random.RandomState
) -> np.ndarray:
    """Per class, how many of ``total`` samples to take, in proportion to
    ``counts`` and at most ``capacity`` each.

    The floors of the proportional shares first; then one more each for the
    classes with the largest remainders (random order among equals), as long
    as they have room, until ``total`` (or the capacity) is used up.
    """
    capacity = np.maximum(capacity, 0)
    total = min(total, int(capacity.sum()))
    shares = counts * (total / counts.sum())
    taken = np.minimum(np.floor(shares).astype(int), capacity)
    while taken.sum() < total:
        room = np.flatnonzero(taken < capacity)
        tie_break = rng.permutation(len(room))
        remainders = (shares - taken)[room]
        order = room[np.lexsort((tie_break, -remainders))]
        taken[order[: total - taken.sum()]] += 1
    return taken


def _rank_within_class(y_encoded: np.ndarray, rng: np.random.RandomState):
    """A random order of each class's samples: sample i is its class's rank[i]-th."""
    order = rng.permutation(len(y_encoded))
    order = order[np.argsort(y_encoded[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(np.bincount(y_encoded))[:-1]])
    rank = np.empty(len(y_encoded), dtype=np.int64)
    rank[order] = np.arange(len(y_encoded)) - starts[y_encoded[order]]
    return rank
