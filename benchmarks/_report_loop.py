"""The reference: training the way the original report did.

A ``Dataset`` applying per-sample torchvision transforms (``ToTensor``, the
gray channel repeated to three, ``RandomRotation``, ``Normalize(0.5, 0.5)``),
a ``DataLoader`` without workers, an fp32 torchvision ResNet with 3 input
channels in the default (contiguous) memory format and ``fc`` replaced, Adam
with weight decay over one parameter group (or, with ``stage_decay``, one
group per stage at rates rising towards the head, the report's layer-wise
policy), a validation pass under ``no_grad`` each epoch, and a copy of the
best weights. ``bench_fit.py`` times it against ``fit``; ``bench_recipes.py``
compares what both learn, from random or from trained initial weights.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchvision
from _suite import BenchConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from resnetclf._param_groups import stage_learning_rates, stage_modules


def _three_channels(image: torch.Tensor) -> torch.Tensor:
    return image.repeat(3, 1, 1)


class ReportStyleDataset(Dataset):
    """Images transformed one at a time, as the report's ``Dataset`` did.

    Parameters
    ----------
    images : ndarray of shape (n_samples, height, width), dtype uint8
        Grayscale images.
    labels : ndarray of shape (n_samples,)
        Class indices.
    transform : callable
        Applied to each image (an ``(H, W)`` uint8 array).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[np.ndarray], torch.Tensor],
    ) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


def report_transforms(rotation_degrees: float) -> tuple[Callable, Callable]:
    """The report's per-sample training and validation transforms."""
    normalize = transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    to_rgb = transforms.Lambda(_three_channels)
    train = transforms.Compose(
        [
            transforms.ToTensor(),
            to_rgb,
            transforms.RandomRotation(rotation_degrees),
            normalize,
        ]
    )
    val = transforms.Compose([transforms.ToTensor(), to_rgb, normalize])
    return train, val


def report_optimizer(
    model: nn.Module, config: BenchConfig, stage_decay: float | None = None
) -> torch.optim.Adam:
    """The report's optimizer: torch's default Adam implementation, weight
    decay on every parameter; one group, or with ``stage_decay`` ``d`` one
    group per stage at ``lr * d**k``, ``k`` stages below the head."""
    if stage_decay is None:
        return torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    rates = stage_learning_rates(config.lr, stage_decay)
    groups = [
        {"params": [p for m in modules for p in m.parameters()], "lr": rates[stage]}
        for stage, modules in stage_modules(model).items()
    ]
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def _initial_model(
    config: BenchConfig, initial_state: dict[str, torch.Tensor] | None
) -> nn.Module:
    """A torchvision ResNet, with ``initial_state``'s tensors but its head."""
    model = getattr(torchvision.models, config.arch)(weights=None)
    if initial_state is not None:
        backbone = {k: v for k, v in initial_state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        if unexpected or any(not k.startswith("fc.") for k in missing):
            raise ValueError(
                f"initial_state does not fit {config.arch}: missing {missing}, "
                f"unexpected {unexpected}"
            )
    model.fc = nn.Linear(model.fc.in_features, config.n_classes)
    return model


def run_report_loop(
    X: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: BenchConfig,
    device: torch.device,
    epochs: int,
    test_idx: np.ndarray | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
    stage_decay: float | None = None,
) -> dict[str, Any]:
    """Train as the report did; return per-epoch seconds and accuracies.

    ``initial_state`` is a state dict to start from (its head is replaced by
    a new ``config.n_classes``-way one); ``stage_decay`` gives each stage its
    own rate, rising towards the head (see :func:`report_optimizer`).

    Each epoch's time covers its training pass and its validation pass, like
    the library's ``history_[i]["seconds"]``; the copy of the best weights
    after it is not timed (nor is it in the library's figure).
    """
    train_tf, val_tf = report_transforms(config.rotation_degrees)
    train_loader = DataLoader(
        ReportStyleDataset(X[train_idx], y[train_idx], train_tf),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=0,
    )
    val_loader = DataLoader(
        ReportStyleDataset(X[val_idx], y[val_idx], val_tf),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=0,
    )
    torch.manual_seed(config.seed)
    model = _initial_model(config, initial_state).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = report_optimizer(model, config, stage_decay)
    best_accuracy, best_state = -1.0, None
    epoch_seconds, epoch_cpu_seconds, accuracies = [], [], []
    for _ in range(epochs):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.train()
        running_loss = 0.0
        for inputs, targets in train_loader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * inputs.size(0)
        model.eval()
        correct = 0
        with torch.no_grad():
            for inputs, targets in val_loader:
                inputs, targets = inputs.to(device), targets.to(device)
                correct += (model(inputs).argmax(dim=1) == targets).sum().item()
        epoch_seconds.append(time.perf_counter() - start)
        epoch_cpu_seconds.append(time.process_time() - cpu_start)
        accuracy = correct / max(1, len(val_idx))
        accuracies.append(accuracy)
        if accuracy > best_accuracy:
            best_accuracy, best_state = accuracy, copy.deepcopy(model.state_dict())
    result = {
        "epoch_seconds": epoch_seconds,
        "epoch_cpu_seconds": epoch_cpu_seconds,
        "val_accuracy": accuracies,
    }
    if test_idx is not None:
        # The report's last step: the best epoch's weights on the test set.
        model.load_state_dict(best_state)
        model.eval()
        test_loader = DataLoader(
            ReportStyleDataset(X[test_idx], y[test_idx], val_tf),
            batch_size=config.batch_size,
        )
        correct = 0
        with torch.no_grad():
            for inputs, targets in test_loader:
                outputs = model(inputs.to(device))
                correct += (outputs.argmax(dim=1) == targets.to(device)).sum().item()
        result["test_accuracy"] = correct / max(1, len(test_idx))
    del best_state
    return result
