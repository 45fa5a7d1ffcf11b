"""The files the ``resnetclf`` commands write: figures, metrics, predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, classification_report

from resnetclf.plotting import plot_confident_mistakes, plot_history

__all__ = [
    "save_confusion_matrix",
    "save_curves",
    "save_mistakes",
    "write_json",
    "write_prediction_metrics",
    "write_predictions",
]


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_curves(clf, out: Path) -> list[Path]:
    """``loss.png`` and ``accuracy.png``: the report's Figures 1 and 2."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    loss_figure, loss_ax = plt.subplots(figsize=(6, 4), layout="constrained")
    accuracy_figure, accuracy_ax = plt.subplots(figsize=(6, 4), layout="constrained")
    plot_history(clf, axes=(loss_ax, accuracy_ax))
    paths = [out / "loss.png", out / "accuracy.png"]
    for figure, ax, path in zip(
        (loss_figure, accuracy_figure), (loss_ax, accuracy_ax), paths
    ):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return paths


def save_confusion_matrix(y_true, y_pred, labels, out: Path) -> Path:
    """The test set's confusion matrix, readable up to a few dozen classes."""
    plt = _pyplot()
    side = min(14.0, max(5.0, 0.35 * len(labels)))
    figure, ax = plt.subplots(figsize=(side, side), layout="constrained")
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=labels,
        ax=ax,
        colorbar=False,
        text_kw={"fontsize": 6 if len(labels) > 20 else 9},
    )
    ax.set_title("Confusion matrix, test set")
    path = out / "confusion_matrix.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def save_mistakes(clf, X_test, y_test, proba, out: Path) -> Path:
    """The gallery of the test set's most confident mistakes."""
    plt = _pyplot()
    figure = plot_confident_mistakes(clf, X_test, y_test, y_proba=proba)
    path = out / "mistakes.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_json(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_predictions(out: Path, y_pred, probability, y_true) -> None:
    if out.suffix == ".npy":
        # Labels of object dtype (strings from pandas, say) are saved as text.
        labels = y_pred.astype(str) if y_pred.dtype == object else y_pred
        np.save(out, labels, allow_pickle=False)
        return
    header = ["index", "predicted", "probability"]
    if y_true is not None:
        header += ["true", "correct"]
    with open(out, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for index, (label, p) in enumerate(zip(y_pred.tolist(), probability)):
            row = [index, label, f"{p:.6f}"]
            if y_true is not None:
                row += [y_true[index], int(label == y_true[index])]
            writer.writerow(row)


def write_prediction_metrics(out: Path, y_true, y_pred, classes) -> Path:
    report = classification_report(
        y_true, y_pred, labels=classes, output_dict=True, zero_division=0
    )
    metrics = {
        "accuracy": float(np.mean(y_pred == y_true)),
        "n_images": len(y_true),
        "classification_report": report,
    }
    return write_json(out.with_suffix(".metrics.json"), metrics)
