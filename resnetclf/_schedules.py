"""Learning-rate schedules over epochs, applied to every stage alike."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

__all__ = ["SCHEDULES", "EpochSchedule"]

SCHEDULES = ("constant", "cosine", "plateau")


class EpochSchedule:
    """Scale all parameter groups' learning rates by one factor per epoch.

    Both torch schedulers used here multiply each group's own rate, so the
    ratios between stages set by ``layer_lr_decay`` hold throughout.

    Parameters
    ----------
    name : {"constant", "cosine", "plateau"}
        ``"constant"`` keeps the rates; ``"cosine"`` anneals them towards 0 over
        the epochs after the warm-up; ``"plateau"`` divides them by 10 whenever
        the monitored score has not improved by more than ``tol`` for
        ``patience`` epochs.
    optimizer : torch.optim.Optimizer
        Its groups' ``lr`` are the peak rates.
    n_epochs : int
        Epochs in this fit.
    warmup_epochs : int
        Epochs of linear warm-up from ``1 / (warmup_epochs + 1)`` of the rates.
    patience, tol
        For ``"plateau"``.
    """

    def __init__(
        self,
        name: str,
        optimizer: Optimizer,
        n_epochs: int,
        warmup_epochs: int = 0,
        patience: int = 5,
        tol: float = 0.0,
    ) -> None:
        self.name = name
        self.warmup_epochs = warmup_epochs
        self._epoch = 0
        anneal = name == "cosine"
        self._per_epoch = LambdaLR(
            optimizer,
            lambda epoch: _warmup_cosine_factor(epoch, n_epochs, warmup_epochs, anneal),
        )
        self._plateau = None
        if name == "plateau":
            self._plateau = ReduceLROnPlateau(
                optimizer,
                mode="max",
                factor=0.1,
                patience=patience,
                threshold=tol,
                threshold_mode="abs",
            )

    def step(self, score: float) -> None:
        """Move to the next epoch; ``score`` (higher is better) feeds "plateau"."""
        self._epoch += 1
        if self._plateau is not None and self._epoch > self.warmup_epochs:
            self._plateau.step(score)
        else:
            self._per_epoch.step()


def _warmup_cosine_factor(
    epoch: int, n_epochs: int, warmup_epochs: int, anneal: bool
) -> float:
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    if not anneal:
        return 1.0
    progress = (epoch - warmup_epochs) / max(1, n_epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
