"""Loss and accuracy curves from a fitted estimator's ``history_``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["plot_history"]


def plot_history(estimator_or_history, axes=None, title: str | None = None):
    """Draw training and validation loss and accuracy per epoch.

    The two panels are the report's Figure 1 (loss) and Figure 2 (accuracy).
    matplotlib is imported only here (``pip install resnetclf[plot]``).

    Parameters
    ----------
    estimator_or_history : ResNetFineTuneClassifier or list of dict
        A fitted estimator, or its ``history_``.
    axes : sequence of two matplotlib Axes, default=None
        Where to draw the loss and the accuracy curves; a new figure with two
        side-by-side panels when None.
    title : str, default=None
        Figure title.

    Returns
    -------
    figure : matplotlib.figure.Figure
        The figure holding the two panels.

    Examples
    --------
    >>> from resnetclf import plot_history
    >>> history = [
    ...     {"epoch": 1, "train_loss": 2.0, "train_accuracy": 0.3,
    ...      "val_loss": 2.1, "val_accuracy": 0.25},
    ...     {"epoch": 2, "train_loss": 1.2, "train_accuracy": 0.6,
    ...      "val_loss": 1.4, "val_accuracy": 0.5},
    ... ]
    >>> fig = plot_history(history)
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['loss', 'accuracy']
    """
    history = _history_of(estimator_or_history)
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "plot_history needs matplotlib: pip install 'resnetclf[plot]' "
            "(or pip install matplotlib)"
        ) from exc
    if axes is None:
        figure, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    else:
        if len(axes) != 2:
            raise ValueError(f"axes must hold 2 Axes (loss, accuracy); got {len(axes)}")
        figure = axes[0].figure
    epochs = [record["epoch"] for record in history]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [record.get(f"{split}_{metric}") for record in history]
            if all(v is None for v in values):
                continue
            label = "training" if split == "train" else "validation"
            ax.plot(
                epochs,
                [float("nan") if v is None else v for v in values],
                style,
                markersize=3,
                label=label,
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("Training and validation loss")
    axes[1].set_title("Training and validation accuracy")
    best = getattr(estimator_or_history, "best_epoch_", None)
    if best is not None:
        for ax in axes:
            ax.axvline(best, color="grey", linestyle=":", linewidth=1)
    if title:
        figure.suptitle(title)
    return figure


def _history_of(estimator_or_history) -> Sequence[Mapping]:
    history = getattr(estimator_or_history, "history_", estimator_or_history)
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise TypeError(
            "plot_history needs a fitted ResNetFineTuneClassifier or its "
            f"history_ (a list of dicts); got {type(estimator_or_history).__name__}"
        )
    if not history:
        raise ValueError("the history is empty: nothing was trained")
    missing = {"epoch", "train_loss", "train_accuracy"} - set(history[0])
    if missing:
        raise ValueError(f"history records lack the keys {sorted(missing)}")
    return history
