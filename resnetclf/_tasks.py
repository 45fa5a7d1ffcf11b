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

from resnetclf._mixing import mixed_cross_entropy

__all__ = [
    "MultiLabelClassification",
    "Regression",
    "SingleLabelClassification",
    "Task",
    "weighted_cross_entropy",
]


class Task(Protocol):
    """What the fit core asks of a task (see :class:`SingleLabelClassification`).

    ``stratify`` says whether the targets are class indices: then the
    internal validation split keeps the classes' shares, and each class must
    keep some weight; ``metric`` names the per-sample measure that
    ``hits`` gives and the history records as ``train_<metric>`` and
    ``val_<metric>``: without ``scoring``, the validation part's weighted
    mean of it picks the best epoch, unless ``default_scoring`` names a
    scikit-learn scorer to use instead (higher is better either way).
    """

    stratify: bool
    metric: str
    default_scoring: str | None

    def encode(self, y, fitted_classes=None) -> tuple[np.ndarray, np.ndarray]: ...

    def encode_known(self, y, classes: np.ndarray, name: str) -> np.ndarray: ...

    def loss(self, outputs, targets, weights, *, training: bool = True): ...

    def mixed_loss(self, outputs, targets, perm, lam, weights): ...

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def predict(self, outputs: torch.Tensor, classes: np.ndarray) -> np.ndarray: ...

    def decode(self, targets: np.ndarray, classes: np.ndarray) -> np.ndarray: ...


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

    stratify = True
    metric = "accuracy"
    default_scoring = None

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

    def mixed_loss(
        self,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        perm: torch.Tensor,
        lam: torch.Tensor,
        weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """The training loss of a batch mixed by MixUp or CutMix: image
        ``i`` is ``lam`` of itself and ``1 - lam`` of image ``perm[i]``, and
        its loss is the same mixture of the two labels' (label-smoothed)
        cross-entropies, each times its image's weight
        (:func:`~resnetclf._mixing.mixed_cross_entropy`)."""
        return mixed_cross_entropy(
            outputs, targets, perm, lam, weights, self.label_smoothing
        )

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """1.0 where the top output is the target, per sample (accuracy)."""
        return (outputs.argmax(dim=1) == targets).float()

    def proba(self, outputs: torch.Tensor) -> np.ndarray:
        """Class probabilities, in float64 so that rows sum to 1."""
        return torch.softmax(outputs.double(), dim=1).numpy()

    def predict(self, outputs: torch.Tensor, classes: np.ndarray) -> np.ndarray:
        """The label of each sample's top output."""
        return classes[outputs.argmax(dim=1).numpy()]

    def decode(self, targets: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The labels of encoded targets."""
        return classes[targets]


def _indicator(y, name: str, n_labels: int | None = None) -> np.ndarray:
    """A 0/1 label-indicator matrix as float32 (what the loss reads)."""
    y = np.asarray(y)
    if y.ndim != 2 or (n_labels is not None and y.shape[1] != n_labels):
        wanted = f"(n_samples, {n_labels})" if n_labels else "(n_samples, n_labels)"
        raise ValueError(f"{name} must be a label-indicator matrix of shape {wanted}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(
            f"{name} is 2-D, which a classifier reads as a multi-label indicator "
            "matrix: every value must be 0 or 1"
        )
    return y.astype(np.float32)


class MultiLabelClassification:
    """Any number of labels per image, each present or not: one sigmoid per
    label, as ``MLPClassifier`` does with a label-indicator ``y``.

    The history's measure, and the default validation score, is the
    sample-averaged F1 of the predicted label sets (1 for a sample whose true
    and predicted sets are both empty): it credits each label an epoch gets
    right, where subset accuracy (``score``'s) moves only when every label
    of a sample is right at once.

    Parameters
    ----------
    label_smoothing : float, default=0.0
        Targets pulled toward 1/2 by this much in the training loss.
    """

    stratify = False  # as scikit-learn's splitters do for multi-label y
    metric = "f1_samples"
    default_scoring = None

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = float(label_smoothing)

    def encode(
        self, y, fitted_classes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        n_labels = None if fitted_classes is None else len(fitted_classes)
        targets = _indicator(y, "y", n_labels)
        return np.arange(targets.shape[1]), targets

    def encode_known(self, y, classes: np.ndarray, name: str) -> np.ndarray:
        return _indicator(y, name, len(classes))

    def loss(self, outputs, targets, weights, *, training: bool = True):
        if training and self.label_smoothing:
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / 2
        # Mean over labels: a sample weighs the same whatever its label count.
        losses = F.binary_cross_entropy_with_logits(
            outputs.float(), targets, reduction="none"
        ).mean(dim=1)
        if weights is not None:
            losses = losses * weights
        return losses.mean() if training else losses.sum()

    def mixed_loss(self, outputs, targets, perm, lam, weights):
        """The training loss of a batch mixed by MixUp or CutMix: the loss
        against mixed targets ``lam * t_i + (1 - lam) * t_perm[i]``, each
        sample weighted by ``lam * w_i + (1 - lam) * w_perm[i]``."""
        # lerp(b, a, lam) = lam * a + (1 - lam) * b
        targets = torch.lerp(targets[perm], targets, lam)
        if weights is not None:
            weights = torch.lerp(weights[perm], weights, lam)
        return self.loss(outputs, targets, weights)

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        predicted = (outputs > 0).float()
        both = (predicted * targets).sum(dim=1)
        either = predicted.sum(dim=1) + targets.sum(dim=1)
        return torch.where(either > 0, 2 * both / either.clamp(min=1), 1.0)

    def proba(self, outputs: torch.Tensor) -> np.ndarray:
        """Each label's probability: ``(n_samples, n_labels)``."""
        return torch.sigmoid(outputs.double()).numpy()

    def predict(self, outputs: torch.Tensor, classes: np.ndarray) -> np.ndarray:
        return (outputs > 0).numpy().astype(np.int64)

    def decode(self, targets: np.ndarray, classes: np.ndarray) -> np.ndarray:
        return targets.astype(np.int64)


REGRESSION_LOSSES = ("squared_error", "huber")


class Regression:
    """Values per image, one or more outputs, learnt standardised.

    Each output is standardised with the training targets' mean and standard
    deviation inside ``fit`` (so that one learning rate suits targets of any
    scale, and the head starts at the mean) and mapped back in ``predict``.
    The history's measure is the mean squared error in the targets' own
    units (``train_mse``, ``val_mse``: lower is better); the best epoch is
    the one of the best R^2 (``default_scoring``).

    Parameters
    ----------
    loss : {"squared_error", "huber"}, default="squared_error"
        The training loss on standardised targets; Huber's threshold is one
        standard deviation.
    mean, scale : ndarray of shape (n_outputs,), default=None
        A fitted model's standardisation (a warm start keeps it); None
        computes it from the first targets encoded.
    """

    stratify = False
    metric = "mse"
    default_scoring = "r2"

    def __init__(self, loss: str = "squared_error", mean=None, scale=None) -> None:
        self.loss_name = loss
        self.mean = mean
        self.scale = scale

    def _as_2d(self, y, name: str, n_outputs: int | None) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2 or (n_outputs is not None and y.shape[1] != n_outputs):
            wanted = n_outputs if n_outputs is not None else "n_outputs"
            raise ValueError(
                f"{name} must have shape (n_samples,) or (n_samples, {wanted})"
            )
        if not np.isfinite(y).all():
            raise ValueError(f"{name} holds NaN or infinite values")
        return y

    def encode(
        self, y, fitted_classes: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        n_outputs = None if fitted_classes is None else len(fitted_classes)
        y = self._as_2d(y, "y", n_outputs)
        if self.mean is None:
            self.mean = y.mean(axis=0)
            scale = y.std(axis=0)
            # A constant output is learnt as its mean.
            self.scale = np.where(scale > 0, scale, 1.0)
        return np.arange(y.shape[1]), ((y - self.mean) / self.scale).astype(np.float32)

    def encode_known(self, y, classes: np.ndarray, name: str) -> np.ndarray:
        y = self._as_2d(y, name, len(classes))
        return ((y - self.mean) / self.scale).astype(np.float32)

    def loss(self, outputs, targets, weights, *, training: bool = True):
        outputs = outputs.float()
        if self.loss_name == "huber":
            losses = F.huber_loss(outputs, targets, reduction="none", delta=1.0)
        else:
            losses = F.mse_loss(outputs, targets, reduction="none")
        losses = losses.mean(dim=1)  # a sample weighs the same, whatever n_outputs
        if weights is not None:
            losses = losses * weights
        return losses.mean() if training else losses.sum()

    def mixed_loss(self, outputs, targets, perm, lam, weights):
        """The training loss of a batch mixed by MixUp or CutMix: against the
        same mixture of the targets, ``lam * t_i + (1 - lam) * t_perm[i]``,
        each sample weighted by the same mixture of the weights."""
        # lerp(b, a, lam) = lam * a + (1 - lam) * b
        targets = torch.lerp(targets[perm], targets, lam)
        if weights is not None:
            weights = torch.lerp(weights[perm], weights, lam)
        return self.loss(outputs, targets, weights)

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each sample's squared error in the targets' units (mean over outputs)."""
        scale = torch.as_tensor(self.scale, dtype=torch.float32, device=outputs.device)
        return ((outputs.float() - targets) * scale).square().mean(dim=1)

    def predict(self, outputs: torch.Tensor, classes: np.ndarray) -> np.ndarray:
        values = outputs.double().numpy() * self.scale + self.mean
        return values.ravel() if values.shape[1] == 1 else values

    def decode(self, targets: np.ndarray, classes: np.ndarray) -> np.ndarray:
        values = targets.astype(np.float64) * self.scale + self.mean
        return values.ravel() if values.shape[1] == 1 else values
