"""The score that picks the best epoch: the task's own, or any scikit-learn scorer."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.metrics import check_scoring

__all__ = ["EpochScorer"]


class _FixedPredictions(ClassifierMixin, BaseEstimator):
    """A classifier whose outputs were computed already.

    Scorers call ``predict`` or ``predict_proba`` on an estimator; this one
    answers from the validation pass's outputs, so a scorer costs no second
    forward pass, whatever it asks for.
    """

    def __init__(self, task=None, classes=None, outputs=None) -> None:
        self.task = task
        self.classes = classes
        self.outputs = outputs

    @property
    def classes_(self) -> np.ndarray:
        return self.classes

    def predict_proba(self, X) -> np.ndarray:
        return self.task.proba(self.outputs)

    def predict(self, X) -> np.ndarray:
        return self.task.predict(self.outputs, self.classes)


class _FixedRegression(RegressorMixin, BaseEstimator):
    """A regressor whose outputs were computed already (see above)."""

    def __init__(self, task=None, classes=None, outputs=None) -> None:
        self.task = task
        self.classes = classes
        self.outputs = outputs

    def predict(self, X) -> np.ndarray:
        return self.task.predict(self.outputs, self.classes)


class EpochScorer:
    """Score an epoch's validation outputs with ``scoring``.

    Parameters
    ----------
    scoring : str, callable or None
        None scores with the task's own measure on the device (accuracy for
        a classifier); otherwise a scorer name or a callable
        ``scorer(estimator, X, y)`` as scikit-learn's ``check_scoring``
        takes them (higher is better).
    estimator : estimator
        The estimator being fitted, for ``check_scoring``.
    task : Task
        What the outputs mean (how they become predictions).
    classes : ndarray
        What the outputs' columns stand for.
    """

    def __init__(self, scoring, estimator, task, classes: np.ndarray) -> None:
        self.scoring = scoring
        self.task = task
        self.classes = classes
        chosen = scoring if scoring is not None else task.default_scoring
        self._scorer = (
            None if chosen is None else check_scoring(estimator, scoring=chosen)
        )

    @property
    def needs_logits(self) -> bool:
        """Whether scoring needs every validation output on the host."""
        return self._scorer is not None

    @property
    def needs_X(self) -> bool:
        """Whether scoring needs the validation images (a user's scorer may
        read them; the tasks' own default scorers do not)."""
        return self.scoring is not None

    def __call__(
        self,
        metric: float,
        outputs: torch.Tensor | None,
        X,
        targets: np.ndarray,
        weights: np.ndarray | None,
    ) -> float:
        """The epoch's score: ``metric`` itself without a scorer."""
        if self._scorer is None:
            return metric
        fixed = _FixedRegression if is_regressor_task(self.task) else _FixedPredictions
        predictions = fixed(self.task, self.classes, outputs)
        kwargs = {} if weights is None else {"sample_weight": weights}
        y = self.task.decode(targets, self.classes)
        return float(self._scorer(predictions, X, y, **kwargs))


def is_regressor_task(task) -> bool:
    """Whether ``task``'s outputs are values rather than class scores."""
    return not hasattr(task, "proba")
