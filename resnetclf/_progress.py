"""What ``verbose`` shows: epoch lines, and tqdm bars when tqdm is installed."""

from __future__ import annotations

import sys
from collections.abc import Mapping

__all__ = ["ProgressReporter", "format_epoch", "record_metric"]


def record_metric(record: Mapping[str, float]) -> str:
    """The name of the task's measure in a history record: ``"accuracy"``
    for a classifier (``train_accuracy``, ``val_accuracy``), ..."""
    return next(
        key[len("train_") :]
        for key in record
        if key.startswith("train_") and key != "train_loss"
    )


def format_epoch(record: Mapping[str, float]) -> str:
    """One line summing up an epoch's history record."""
    metric = record_metric(record)
    parts = [
        f"epoch {record['epoch']}",
        f"train_loss={record['train_loss']:.4f}",
        f"train_{metric}={record[f'train_{metric}']:.4f}",
    ]
    if record.get("val_loss") is not None:
        parts += [
            f"val_loss={record['val_loss']:.4f}",
            f"val_{metric}={record[f'val_{metric}']:.4f}",
        ]
    parts += [f"lr={record['lr_fc']:.3g}", f"{record['seconds']:.1f}s"]
    return ", ".join(parts)


class ProgressReporter:
    """Report training progress at a verbosity level.

    ``verbose=0`` is silent. ``verbose=1`` writes one line per epoch and, when
    tqdm is installed, keeps a bar over epochs with the latest losses and
    accuracies; ``verbose=2`` adds a bar over each epoch's batches.
    """

    def __init__(self, verbose: int, n_epochs: int, n_batches: int) -> None:
        self.verbose = int(verbose)
        self.n_batches = n_batches
        self._tqdm = _import_tqdm() if self.verbose > 0 else None
        self._epoch_bar = None
        self._batch_bar = None
        if self._tqdm is not None:
            self._epoch_bar = self._tqdm(
                total=n_epochs, desc="epochs", unit="epoch", leave=False
            )

    def start_epoch(self, epoch: int) -> None:
        if self._tqdm is not None and self.verbose >= 2:
            self._batch_bar = self._tqdm(
                total=self.n_batches, desc=f"epoch {epoch}", unit="batch", leave=False
            )

    def end_batch(self) -> None:
        if self._batch_bar is not None:
            self._batch_bar.update(1)

    def end_epoch(self, record: Mapping[str, float]) -> None:
        if self.verbose <= 0:
            return
        if self._batch_bar is not None:
            self._batch_bar.close()
            self._batch_bar = None
        line = format_epoch(record)
        if self._epoch_bar is not None:
            self._epoch_bar.set_postfix(
                {
                    k: f"{record[k]:.4f}"
                    for k in _postfix_keys(record_metric(record))
                    if record.get(k) is not None
                }
            )
            self._epoch_bar.update(1)
            self._tqdm.write(line, file=sys.stdout)
        else:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def message(self, text: str) -> None:
        if self.verbose > 0:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def close(self) -> None:
        for bar in (self._batch_bar, self._epoch_bar):
            if bar is not None:
                bar.close()
        self._batch_bar = self._epoch_bar = None


def _postfix_keys(metric: str) -> tuple[str, ...]:
    return ("train_loss", f"train_{metric}", "val_loss", f"val_{metric}")


def _import_tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm
