"""Per-sample training weights: ``sample_weight`` and ``class_weight`` combined."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import _check_sample_weight

__all__ = [
    "check_every_class_weighted",
    "combined_sample_weight",
    "normalised_or_none",
    "per_class_weights",
]


def per_class_weights(class_weight, classes: np.ndarray, y) -> np.ndarray | None:
    """The weight of each class of ``classes`` (None for ``class_weight=None``).

    ``class_weight`` is ``"balanced"`` or a mapping from labels to weights,
    with :func:`sklearn.utils.class_weight.compute_class_weight`'s meaning,
    computed on the training labels ``y``; validation samples get the same
    weights for their classes.
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, Mapping):
        known = set(classes.tolist())
        unknown = [label for label in class_weight if label not in known]
        if unknown:
            raise ValueError(
                f"class_weight has labels that are not in y: {unknown[:10]}"
            )
    return compute_class_weight(class_weight, classes=classes, y=y)


def combined_sample_weight(
    sample_weight,
    class_weights: np.ndarray | None,
    X,
    y_encoded: np.ndarray,
    name: str = "sample_weight",
) -> np.ndarray | None:
    """``sample_weight`` times the class weights of ``y_encoded``, or None.

    ``sample_weight`` is checked as scikit-learn does (one finite,
    non-negative value per sample, not all 0). None comes back when both are
    None, so an unweighted fit runs the plain loss.
    """
    if sample_weight is None and class_weights is None:
        return None
    if sample_weight is not None:
        # The message names the argument: the validation set's own has its name.
        try:
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from exc
    else:
        sample_weight = np.ones(len(y_encoded), dtype=np.float64)
    if class_weights is not None:
        sample_weight = sample_weight * class_weights[y_encoded]
    return sample_weight


def check_every_class_weighted(
    weights: np.ndarray, y_encoded: np.ndarray, classes: np.ndarray
) -> None:
    """Refuse weights that leave a class of ``y`` with nothing to learn from."""
    unweighted = np.bincount(y_encoded, weights, minlength=len(classes)) == 0
    if unweighted.any():
        raise ValueError(
            "sample_weight (with class_weight) gives every sample of the "
            f"class(es) {classes[unweighted][:10].tolist()} a weight of 0: the "
            "model could not learn them; leave them out of y or weight them"
        )


def normalised_or_none(weights: np.ndarray | None, name: str) -> np.ndarray | None:
    """``weights`` divided by their mean, as float32; None stays None.

    Uniform weights become exactly 1, so the weighted loss equals the plain
    mean loss; the mean over a whole set (not per batch) keeps each sample's
    share of the objective the same in every batch, and a batch of zero
    weights contributes nothing instead of dividing by zero.
    """
    if weights is None:
        return None
    total = float(np.sum(weights))
    if not total > 0:
        raise ValueError(
            f"{name} gives every sample of the set a weight of 0; at least one "
            "weight must be positive"
        )
    return (weights * (len(weights) / total)).astype(np.float32)
