"""The epoch loop: train step, evaluation, history and best-epoch keeping."""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnetclf._backbone import to_torchvision_layout
from resnetclf._checkpoint import save_state_dict_atomic
from resnetclf._fit_setup import FitPlan, LabelledImages, TrainingParts
from resnetclf._images import ImageBatches
from resnetclf._lora import merged_state_dict
from resnetclf._mixing import MixedBatch, mix_batch
from resnetclf._param_groups import StageParamGroups, set_frozen_to_eval
from resnetclf._progress import ProgressReporter
from resnetclf._schedules import EpochSchedule
from resnetclf._scoring import EpochScorer
from resnetclf._tasks import Task
from resnetclf._test_time import TestTimeViews
from resnetclf._warnings import user_stacklevel

__all__ = [
    "BestWeights",
    "EpochLoop",
    "batch_slices",
    "module_on",
    "predict_logits",
    "weight_average",
]


def batch_slices(n_samples: int, batch_size: int, training: bool) -> list[slice]:
    """Consecutive batches; in training a last batch of one sample joins the one
    before, since batch norm cannot normalise a single value per channel."""
    starts = list(range(0, n_samples, batch_size))
    if training and len(starts) > 1 and n_samples - starts[-1] == 1:
        starts.pop()
    ends = starts[1:] + [n_samples]
    return [slice(a, b) for a, b in zip(starts, ends)]


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision on ``device`` when ``dtype`` is set, else a no-op.

    The cast cache is off: a ResNet casts each weight once per pass, so it
    saves nothing, and a CUDA graph capture must record the casts, not reuse
    ones made before it.
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


@contextlib.contextmanager
def _explain_out_of_memory(batch_size: int):
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise torch.OutOfMemoryError(
            f"out of memory on the device with batch_size={batch_size}; pass a "
            f"smaller batch_size (e.g. {max(1, batch_size // 2)}), or a smaller arch "
            f"or image size. Original error: {exc}"
        ) from exc


@torch.inference_mode()
def predict_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    model: nn.Module,
    images: ImageBatches,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
    views: TestTimeViews | None = None,
) -> torch.Tensor:
    """Logits for every image, in order, as a float32 CPU tensor.

    With ``views`` (a batch in [0, 1], resized, to its test-time views), the
    logits of each view, stacked: ``(n_views, n_images, n_outputs)``; one
    forward pass per view.
    """
    model.eval()
    logits = None
    n_views = 1 if views is None else len(views)
    with _explain_out_of_memory(batch_size):
        for batch in batch_slices(len(images), batch_size, training=False):
            indices = np.arange(batch.start, batch.stop)
            if views is None:
                inputs = [images.get(indices)]
            else:
                # Normalised one at a time: one more batch in memory, not n.
                inputs = map(images.normalise, views(images.get_unit(indices)))
            for view, view_inputs in enumerate(inputs):
                with autocast_context(images.device, amp_dtype):
                    output = forward(view_inputs).float()
                if logits is None:
                    # One buffer for all outputs: no list of pieces to concatenate.
                    logits = torch.empty((n_views, len(images), output.shape[1]))
                logits[view, batch] = output.cpu()
    if logits is None:
        return torch.empty(0, 0) if views is None else torch.empty(0, 0, 0)
    return logits[0] if views is None else logits


def module_on(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` if it lives on ``device``, else a copy of it there.

    Predicting on another device than the fitted network's (say on the CPU
    after a fit on a GPU) must not move ``module_``: predict leaves the fitted
    estimator as it was. The copy's tensors are made on ``device`` directly.
    """
    tensors = [*module.parameters(), *module.buffers()]
    if all(_same_device(t.device, device) for t in tensors):
        return module
    # deepcopy takes tensors found in the memo as they are: the moved ones.
    memo = {
        id(p): nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)
        for p in module.parameters()
    }
    memo.update({id(b): b.detach().to(device) for b in module.buffers()})
    return copy.deepcopy(module, memo)


def _same_device(have: torch.device, want: torch.device) -> bool:
    if have.type != want.type:
        return False
    if want.index is None and want.type == "cuda":
        return have.index == torch.cuda.current_device()
    return want.index is None or have.index == want.index


def weight_average(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers, or
    None without a ``decay``."""
    if decay is None:
        return None
    average = AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
    )
    # The first update copies: the average starts at the initial weights.
    average.update_parameters(model)
    return average


class BestWeights:
    """The best epoch so far: its score and an in-memory copy of its weights.

    The copy, not a file, is what fit restores, so fits that share a
    ``checkpoint_path`` cannot take each other's weights. The file, when asked
    for, is written atomically in torchvision's layout.
    """

    def __init__(
        self,
        score: float = -math.inf,
        epoch: int | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
        checkpoint_path: str | Path | None = None,
    ) -> None:
        self.score = score
        self.epoch = epoch
        self.state_dict = state_dict
        self.checkpoint_path = checkpoint_path

    def consider(self, epoch: int, score: float, model: nn.Module) -> bool:
        """Keep ``model``'s weights if ``score`` beats the best; say if it did."""
        if not score > self.score:
            return False
        self.score, self.epoch = score, epoch
        # In torchvision's layout: low-rank adapters, if any, merged.
        self.state_dict = {
            k: v.detach().clone() for k, v in merged_state_dict(model).items()
        }
        self.write_checkpoint(model)
        return True

    def write_checkpoint(self, model: nn.Module) -> None:
        """Write ``model`` to ``checkpoint_path``, if set; warn if that fails."""
        if self.checkpoint_path is not None:
            try:
                save_state_dict_atomic(
                    to_torchvision_layout(model), self.checkpoint_path
                )
            except OSError as exc:
                # The weights are safe in memory; a failed write must not end fit.
                warnings.warn(
                    f"could not write the checkpoint '{self.checkpoint_path}': {exc}",
                    RuntimeWarning,
                    stacklevel=user_stacklevel(),
                )

    def restore(self, model: nn.Module) -> None:
        if self.state_dict is not None:
            model.load_state_dict(self.state_dict)


@dataclass
class EpochLoop:
    """Train a model for a number of epochs, as ``plan`` says.

    ``run`` appends one record per epoch to ``history`` and keeps the best
    epoch's weights in ``best``; it never raises on ``KeyboardInterrupt`` (it
    stops with a warning), so what was learnt is kept. It may be called more
    than once (fit's phases, such as a frozen backbone first); the counts of
    early stopping carry over between calls.

    With ``ema``, an average of the weights (``torch.optim.swa_utils``) is
    updated after every step, and it is the average that validation scores,
    that the best epoch keeps and that the checkpoint holds.
    """

    model: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    param_groups: StageParamGroups
    schedule: EpochSchedule
    plan: FitPlan  # the fit's settings: batches, augmentation, stopping
    task: Task  # the targets' loss and hits
    parts: TrainingParts  # the samples that train and those that validate
    rng: np.random.RandomState  # shuffles the batches
    generator: torch.Generator  # draws augmentations and mixing, on the device
    best: BestWeights
    reporter: ProgressReporter
    scorer: EpochScorer  # the validation score that picks the best epoch
    grad_scaler: torch.amp.GradScaler | None = None  # for fp16
    history: list[dict] = field(default_factory=list)
    ema: AveragedModel | None = None
    frozen_stages: list[str] = field(default_factory=list)  # in this phase
    stopped: bool = False

    def __post_init__(self) -> None:
        self._no_improvement = 0
        self._best_for_stopping = self.best.score

    @property
    def scored_model(self) -> nn.Module:
        """The weights that validation scores and the best epoch keeps."""
        return self.model if self.ema is None else self.ema.module

    def run(self, n_epochs: int) -> None:
        """Train ``n_epochs`` epochs or until early stopping.

        ``stopped`` is set when training should not go on (early stopping or
        an interrupt), so that later phases are skipped.
        """
        first = len(self.history) + 1
        try:
            for epoch in range(first, first + n_epochs):
                record = self.run_epoch(epoch)
                self.history.append(record)
                if self.end_epoch(epoch, record):
                    self.stopped = True
                    break
        except KeyboardInterrupt:
            warnings.warn(
                "training interrupted by the user; keeping the best weights so far",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
            self.stopped = True
        finally:
            self.reporter.close()

    def end_epoch(self, epoch: int, record: dict) -> bool:
        """Keep the best weights, step the schedule; True to stop early."""
        score = record["val_score"]
        if score is None:
            # Without validation the last epoch is the one kept.
            self.best.epoch = epoch
            self.best.write_checkpoint(self.scored_model)
            self.schedule.step(-record["train_loss"])
            self.reporter.end_epoch(record)
            return False
        plan = self.plan
        self.best.consider(epoch, score, self.scored_model)
        improved = score > self._best_for_stopping + plan.tol
        self._no_improvement = 0 if improved else self._no_improvement + 1
        self._best_for_stopping = max(self._best_for_stopping, score)
        self.schedule.step(score)
        self.reporter.end_epoch(record)
        if plan.early_stopping and self._no_improvement >= plan.n_iter_no_change:
            self.reporter.message(
                f"early stopping: the validation score has not improved by "
                f"more than tol={plan.tol} for {self._no_improvement} epochs"
            )
            return True
        return False

    def keep_final_weights(self) -> None:
        """Leave ``model`` holding the weights fit returns: the best epoch's,
        or without validation the last epoch's (averaged, with ``ema``).

        ``model`` must be plain (adapters merged) by now.
        """
        if self.best.state_dict is not None:
            self.best.restore(self.model)
        elif self.ema is not None:
            self.model.load_state_dict(merged_state_dict(self.ema.module))

    def run_epoch(self, epoch: int) -> dict:
        start = time.perf_counter()
        train, val = self.parts.train, self.parts.val
        rates = self.param_groups.current_rates(self.optimizer)
        # Stages frozen for this phase keep their group's rate but do not train.
        rates.update(dict.fromkeys(self.frozen_stages, 0.0))
        self.reporter.start_epoch(epoch)
        train_loss, train_metric = self.train_epoch(train)
        val_loss = val_metric = val_score = None
        if val is not None:
            val_loss, val_metric, logits = self.evaluate(val)
            val_score = self.scorer(
                val_metric,
                logits,
                self.parts.validation_X,
                val.labels[val.indices],
                val.index_weights(),
            )
        metric = self.task.metric
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            f"train_{metric}": train_metric,
            "val_loss": val_loss,
            f"val_{metric}": val_metric,
            "val_score": val_score,
        }
        record.update({f"lr_{stage}": rate for stage, rate in rates.items()})
        record["seconds"] = time.perf_counter() - start
        return record

    def train_epoch(self, data: LabelledImages) -> tuple[float, float]:
        """One pass over the training part; its mean loss and measure.

        With MixUp or CutMix the loss is the mixed one, and the measure
        (``train_accuracy``) scores each mixed image against the targets
        of the image that dominates it: its own when ``lam >= 0.5``, else
        its partner's, with that image's weight.
        """
        self.model.train()
        set_frozen_to_eval(self.model, self.frozen_stages)
        device = data.images.device
        plan = self.plan
        batch_size, augment = plan.batch_size, plan.augmentation
        order = data.indices[self.rng.permutation(len(data))]
        loss_sum = torch.zeros((), device=device)
        correct_sum = torch.zeros((), device=device)
        with _explain_out_of_memory(batch_size):
            for batch in batch_slices(len(order), batch_size, training=True):
                indices = order[batch]
                inputs = data.images.get(indices, augment, self.generator)
                targets = data.targets(indices, device)
                weights = data.batch_weights(indices, device)
                if plan.mixes:
                    mixed = mix_batch(
                        inputs, plan.mixup_alpha, plan.cutmix_alpha, self.generator
                    )
                    loss, logits = self.train_step(
                        mixed.inputs, targets, weights, mixed
                    )
                    targets, weights = _dominant(mixed, targets, weights)
                else:
                    loss, logits = self.train_step(inputs, targets, weights)
                # Sums stay on the device: no host sync per batch. Weights
                # have a mean of 1 over the set, so these are weighted means.
                loss_sum += loss.detach().float() * len(indices)
                hits = self.task.hits(logits.detach(), targets)
                correct_sum += hits.sum() if weights is None else weights @ hits
                self.reporter.end_batch()
        return loss_sum.item() / len(order), correct_sum.item() / len(order)

    def train_step(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
        mixed: MixedBatch | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; ``mixed``, when ``inputs`` are a mixed
        batch, says how, and the task's mixed loss is used."""
        with autocast_context(inputs.device, self.plan.amp_dtype):
            logits = self.forward(inputs)
            if mixed is None:
                loss = self.task.loss(logits, targets, weights)
            else:
                loss = self.task.mixed_loss(
                    logits, targets, mixed.perm, mixed.lam, weights
                )
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss, logits

    @torch.inference_mode()
    def evaluate(
        self, data: LabelledImages
    ) -> tuple[float, float, torch.Tensor | None]:
        """Weighted loss and accuracy of the scored model on ``data``, and its
        logits when a scorer needs them."""
        model = self.scored_model
        model.eval()
        # The (graphed) forward is the training model's; an average runs as is.
        forward = self.forward if self.ema is None else model
        device = data.images.device
        keep_logits = self.scorer.needs_logits
        all_logits = None
        loss_sum = torch.zeros((), device=device)
        correct_sum = torch.zeros((), device=device)
        weight_sum = torch.zeros((), device=device)
        batch_size = self.plan.batch_size
        with _explain_out_of_memory(batch_size):
            for batch in batch_slices(len(data), batch_size, training=False):
                indices = data.indices[batch]
                targets = data.targets(indices, device)
                weights = data.batch_weights(indices, device)
                with autocast_context(device, self.plan.amp_dtype):
                    logits = forward(data.images.get(indices)).float()
                # The plain (unsmoothed) loss: comparable across settings.
                loss_sum += self.task.loss(logits, targets, weights, training=False)
                correct = self.task.hits(logits, targets)
                if weights is None:
                    correct_sum += correct.sum()
                    weight_sum += len(indices)
                else:
                    correct_sum += weights @ correct
                    weight_sum += weights.sum()
                if keep_logits:
                    if all_logits is None:
                        all_logits = torch.empty((len(data), logits.shape[1]))
                    all_logits[batch] = logits.cpu()
        total = weight_sum.item()
        if total == 0:
            return math.nan, math.nan, all_logits
        return loss_sum.item() / total, correct_sum.item() / total, all_logits


def _dominant(
    mixed: MixedBatch, targets: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The targets and weights of the image that dominates each mixed image:
    its own where ``lam >= 0.5``, else its partner's (one ``lam`` per batch).
    Tensors throughout: no value comes back to the host."""
    own = mixed.lam >= 0.5  # 0-d: broadcast over rows and labels alike
    targets = torch.where(own, targets, targets[mixed.perm])
    if weights is not None:
        weights = torch.where(own, weights, weights[mixed.perm])
    return targets, weights
