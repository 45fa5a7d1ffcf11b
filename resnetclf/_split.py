"""The stratified hold-out of a validation set from the training data."""

from __future__ import annotations

import numpy as np

__all__ = ["stratified_holdout"]


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
