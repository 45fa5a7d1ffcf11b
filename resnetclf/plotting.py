"""Figures of a fitted estimator: its learning curves and its mistakes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral

import numpy as np
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from resnetclf._images import ImageLayout, infer_layout
from resnetclf._progress import record_metric

__all__ = ["plot_confident_mistakes", "plot_history"]


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
    plt = _pyplot("plot_history")
    if axes is None:
        figure, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    else:
        if len(axes) != 2:
            raise ValueError(f"axes must hold 2 Axes (loss, accuracy); got {len(axes)}")
        figure = axes[0].figure
    epochs = [record["epoch"] for record in history]
    measure = record_metric(history[0])
    for ax, metric in zip(axes, ("loss", measure)):
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
    axes[1].set_title(f"Training and validation {measure.replace('_', ' ')}")
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
    keys = set(history[0])
    missing = {"epoch", "train_loss"} - keys
    if not any(k.startswith("train_") and k != "train_loss" for k in keys):
        missing.add("train_accuracy")  # or the task's own measure
    if missing:
        raise ValueError(f"history records lack the keys {sorted(missing)}")
    return history


def plot_confident_mistakes(
    estimator,
    X,
    y,
    n_images: int = 16,
    *,
    y_proba=None,
    n_cols: int = 4,
    title: str | None = None,
):
    """Show the images the estimator gets wrong with the most confidence.

    The mistakes are the samples whose predicted label (the most probable
    class) differs from ``y``, shown in decreasing order of the probability
    given to the wrong label, each with its true label, the predicted label
    and that probability (and, when the estimator reads digits, the digits
    it read, from ``predict_digits``). Images in any layout the estimator accepts
    (grayscale ``(N, H, W)``, ``(N, H, W, C)``, ``(N, C, H, W)`` or flattened
    rows) are drawn as the model sees them: uint8 scaled by 1/255, other
    dtypes as values in [0, 1] (clipped). matplotlib is imported only here.

    Parameters
    ----------
    estimator : ResNetFineTuneClassifier
        A fitted estimator (anything with ``classes_``, ``image_shape_`` and
        ``predict_proba``).
    X : array-like of images
        Images of the fitted image shape.
    y : array-like of shape (n_samples,)
        Their true labels.
    n_images : int, default=16
        Most mistakes shown; fewer when there are fewer.
    y_proba : array-like of shape (n_samples, n_classes), default=None
        ``estimator.predict_proba(X)`` when already computed, to spare a
        second pass over ``X``.
    n_cols : int, default=4
        Images per row.
    title : str, default=None
        Figure title; by default how many mistakes there are and of how many
        images.

    Returns
    -------
    figure : matplotlib.figure.Figure
        One panel per mistake, or a single panel saying there were none.

    See Also
    --------
    sklearn.metrics.ConfusionMatrixDisplay : which classes are confused, in
        counts.
    plot_history : the learning curves.

    Examples
    --------
    >>> import numpy as np
    >>> from resnetclf import ResNetFineTuneClassifier, plot_confident_mistakes
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(0, 256, size=(16, 12, 12), dtype=np.uint8)
    >>> y = np.arange(16) % 2
    >>> clf = ResNetFineTuneClassifier(arch="resnet18", weights=None, max_iter=1,
    ...                                batch_size=8, random_state=0).fit(X, y)
    >>> figure = plot_confident_mistakes(clf, X, y, n_images=4)
    >>> len(figure.axes) <= 4
    True
    """
    check_is_fitted(estimator)
    if isinstance(n_images, bool) or not isinstance(n_images, Integral):
        raise TypeError(f"n_images must be an int >= 1; got {n_images!r}")
    if n_images < 1:
        raise ValueError(f"n_images must be an int >= 1; got {n_images}")
    if isinstance(n_cols, bool) or not isinstance(n_cols, Integral) or n_cols < 1:
        raise ValueError(f"n_cols must be an int >= 1; got {n_cols!r}")
    X = check_array(X, allow_nd=True, dtype=None, input_name="X")
    layout = _layout_of(X, estimator.image_shape_)
    y = column_or_1d(y)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} images but y has {len(y)} labels")
    if y_proba is None:
        y_proba = estimator.predict_proba(X)
    y_proba = np.asarray(y_proba)
    if y_proba.shape != (len(X), len(estimator.classes_)):
        raise ValueError(
            f"y_proba must have shape {(len(X), len(estimator.classes_))} "
            f"(n_samples, n_classes); got {y_proba.shape}"
        )
    predicted = y_proba.argmax(axis=1)
    confidence = y_proba[np.arange(len(X)), predicted]
    wrong = np.flatnonzero(estimator.classes_[predicted] != y)
    shown = wrong[np.argsort(-confidence[wrong], kind="stable")][:n_images]

    plt = _pyplot("plot_confident_mistakes")
    if title is None:
        title = (
            f"The {len(shown)} most confident of {len(wrong)} mistakes "
            f"on {len(X)} images"
        )
    if len(shown) == 0:
        figure, ax = plt.subplots(figsize=(5, 2), layout="constrained")
        ax.text(0.5, 0.5, f"No mistakes on these {len(X)} images", ha="center")
        ax.set_axis_off()
        figure.suptitle(title)
        return figure

    images = _displayable(X[shown], layout)
    n_cols = min(n_cols, len(shown))
    n_rows = math.ceil(len(shown) / n_cols)
    height, width = images.shape[1:3]
    # Panels as wide as the images need, with room for two lines of text.
    panel_width = min(4.0, max(1.6, 0.03 * width))
    panel_height = panel_width * height / width + 0.6
    figure, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(panel_width * n_cols, panel_height * n_rows + 0.4),
        layout="constrained",
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    # A head that reads digits shows what it read: where the sum went wrong.
    digits = (
        estimator.predict_digits(X[shown])
        if hasattr(estimator, "predict_digits")
        else None
    )
    for k, (ax, index, image) in enumerate(zip(axes.ravel(), shown, images)):
        if image.shape[2] == 1:
            ax.imshow(image[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(image)
        read = "" if digits is None else f", read {'+'.join(map(str, digits[k]))}"
        ax.set_title(
            f"true {y[index]}, predicted "
            f"{estimator.classes_[predicted[index]]}{read}\n"
            f"p = {confidence[index]:.2f} (sample {index})",
            fontsize=8,
        )
    figure.suptitle(title)
    return figure


def _layout_of(X: np.ndarray, image_shape) -> ImageLayout:
    """How the estimator reads ``X``: its own layout rules and image shape."""
    layout = infer_layout(X.shape, tuple(image_shape) if X.ndim == 2 else None)
    if layout.image_shape != tuple(image_shape):
        raise ValueError(
            f"X has images of shape {layout.image_shape} (height, width, "
            f"channels) but the estimator was fitted on {tuple(image_shape)}"
        )
    return layout


def _displayable(X: np.ndarray, layout: ImageLayout) -> np.ndarray:
    """Images as ``(N, H, W, C)`` floats in [0, 1], as the model reads them."""
    if layout.channels_last:
        images = X.reshape(len(X), layout.height, layout.width, layout.channels)
    else:
        images = X.reshape(len(X), layout.channels, layout.height, layout.width)
        images = images.transpose(0, 2, 3, 1)
    scale = 1 / 255 if X.dtype == np.uint8 else 1.0
    return np.clip(images.astype(np.float64) * scale, 0.0, 1.0)


def _pyplot(caller: str):
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            f"{caller} needs matplotlib: pip install 'resnetclf[plot]' "
            "(or pip install matplotlib)"
        ) from exc
    return plt
