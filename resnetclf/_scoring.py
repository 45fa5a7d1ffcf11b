"""The score that picks the best epoch: accuracy, or any scikit-learn scorer."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import check_scoring

__all__ = ["EpochScorer"]


class _FixedPredictions(ClassifierMixin, BaseEstimator):
    """A classifier whose predictions were computed already.

    Scorers call ``predict`` or ``predict_proba`` on an estimator; this one
    answers with the validation pass's probabilities, so a scorer costs no
    second forward pass, whatever it asks for.
    """

    def __init__(self, classes=None, proba=None) -> None:
        self.classes = classes
        self.proba = proba

    @property
    def classes_(self) -> np.ndarray:
        return self.classes

    def predict_proba(self, X) -> np.ndarray:
        return self.proba

    def predict(self, X) -> np.ndarray:
        return self.classes[np.argmax(self.proba, axis=1)]


class EpochScorer:
    """Score an epoch's validation logits with ``scoring``.

    Parameters
    ----------
    scoring : str, callable or None
        None scores (weighted) accuracy on the device; otherwise a scorer name
        or a callable ``scorer(estimator, X, y)`` as scikit-learn's
        ``check_scoring`` takes them (higher is better).
    estimator : estimator
        The estimator being fitted, for ``check_scoring``.
    classes : ndarray
        Labels of the logits' columns.
    """

    def __init__(self, scoring, estimator, classes: np.ndarray) -> None:
        self.scoring = scoring
        self.classes = classes
        self._scorer = (
            None if scoring is None else check_scoring(estimator, scoring=scoring)
        )

    @property
    def needs_logits(self) -> bool:
        """Whether scoring needs every validation logit on the host."""
        return self._scorer is not None

    def __call__(
        self,
        accuracy: float,
        logits: torch.Tensor | None,
        X,
        y_encoded: np.ndarray,
        weights: np.ndarray | None,
    ) -> float:
        """The epoch's score: ``accuracy`` itself for ``scoring=None``."""
        if self._scorer is None:
            return accuracy
        proba = torch.softmax(logits.double(), dim=1).numpy()
        predictions = _FixedPredictions(self.classes, proba)
        kwargs = {} if weights is None else {"sample_weight": weights}
        return float(self._scorer(predictions, X, self.classes[y_encoded], **kwargs))
