"""What differs between learning tasks, in one place.

The fit core (checks, batches, the epoch loop, best-epoch keeping, saving) is
the same whatever the network learns; a task says what its targets are and
how outputs meet them: how ``y`` is checked and encoded, the training loss,
the per-sample hit that the history's accuracy averages, and how the
network's outputs become predictions. A new task (a regressor, multi-label)
is a new class here with the same methods, and an estimator that makes it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.multiclass import check_classification_targets

__all__ = ["SingleLabelClassification", "Task", "weighted_cross_entropy"]


class Task(Protocol):
    """What the fit core asks of a task (see :class:`SingleLabelClassification`)."""

    def encode(self, y, fitted_classes=None) -> tuple[np.ndarray, np.ndarray]: ...

    def encode_known(self, y, classes: np.ndarray, name: str) -> np.ndarray: ...

    def loss(self, outputs, targets, weights, *, training: bool = True): ...

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


def weighted_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy, each sample's term times its weight.

    Without weights this is ``F.cross_entropy`` itself. With weights the
    terms are multiplied by them and averaged over the batch ("mean") or
    summed ("sum"); weights normalised to a mean of 1 over the data set
    (``normalised_or_none``) make uniform weights give the plain loss.
    """
    if weights is None:
        return F.cross_entropy(
            logits, targets, label_smoothing=label_smoothing, reduction=reduction
        )
    losses = F.cross_entropy(
        logits, targets, label_smoothing=label_smoothing, reduction="none"
    )
    weighted = losses * weights
    return weighted.mean() if reduction == "mean" else weighted.sum()


class SingleLabelClassification:
    """One label per image, from two or more classes; softmax outputs.

    Parameters
    ----------
    label_smoothing : float, default=0.0
        Smoothing of the training loss's targets; validation losses are
        always plain, so that they compare across settings.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = float(label_smoothing)

    def encode(
        self, y: np.ndarray, fitted_classes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The sorted classes of ``y`` and each label's index among them.

        ``fitted_classes`` (a warm start's) must be exactly the classes of
        ``y``: the head has one output per class.
        """
        check_classification_targets(y)
        classes, y_encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"y has {len(classes)} class ({classes[:1].tolist()}); a "
                "classifier needs samples of at least 2 classes"
            )
        if fitted_classes is not None and not np.array_equal(classes, fitted_classes):
            raise ValueError(
                "warm_start=True needs the classes of the first fit "
                f"{fitted_classes.tolist()}; y has {classes.tolist()}"
            )
        return classes, y_encoded

    def encode_known(self, y: np.ndarray, classes: np.ndarray, name: str) -> np.ndarray:
        """Labels ``y`` (validation ones) as indices into ``classes``."""
        unseen = np.setdiff1d(y, classes)
        if len(unseen):
            raise ValueError(f"{name} has labels not in y: {unseen[:10].tolist()}")
        return np.searchsorted(classes, y)

    def loss(
        self,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | None,
        *,
        training: bool = True,
    ) -> torch.Tensor:
        """The batch's training loss (mean), or its plain summed loss for
        validation (``training=False``)."""
        if training:
            return weighted_cross_entropy(
                outputs, targets, weights, self.label_smoothing
            )
        return weighted_cross_entropy(outputs, targets, weights, reduction="sum")

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """1.0 where the top output is the target, per sample (accuracy)."""
        return (outputs.argmax(dim=1) == targets).float()

    def proba(self, outputs: torch.Tensor) -> np.ndarray:
        """Class probabilities, in float64 so that rows sum to 1."""
        return torch.softmax(outputs.double(), dim=1).numpy()

    def predict(self, outputs: torch.Tensor, classes: np.ndarray) -> np.ndarray:
        """The label of each sample's top output."""
        return classes[outputs.argmax(dim=1).numpy()]
