"""What ``fit`` checks before any work, and what it hands the training steps.

``fit`` checks in three steps before it trains: the parameters, each against
the estimator's ``_parameter_constraints`` and then together, resolved into
one :class:`FitPlan` (:func:`check_before_data`); the data (the estimator's
own ``_check_data``, giving :class:`FitData`); and the network the two ask
for. Then :func:`training_parts` builds the batches on the device: the
training part and the validation part, with their weights.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import check_scoring

from resnetclf._acceleration.devices import amp_dtype_for, resolve_device
from resnetclf._augment import Augmentation, CheckedAugmentation, resolve_augmentation
from resnetclf._backbone import check_arch, check_new_network, resolve_weights
from resnetclf._images import (
    ImageBatches,
    ImageLayout,
    model_input_channels,
    resolve_normalization,
)
from resnetclf._param_groups import (
    check_layer_lr_decay,
    stage_learning_rates,
    trainable_stages,
)
from resnetclf._resize import resolve_input_size, weights_resolution
from resnetclf._split import random_holdout, stratified_holdout
from resnetclf._tasks import Task
from resnetclf._test_time import ViewSettings
from resnetclf._warnings import user_stacklevel
from resnetclf.heads import resolve_head

__all__ = [
    "FitData",
    "FitPlan",
    "LabelledArray",
    "LabelledImages",
    "TrainingParts",
    "check_before_data",
    "check_writable",
    "probe_augmentation",
    "restored_on_error",
    "torch_seeded",
    "training_parts",
]


@dataclass
class LabelledImages:
    """The samples ``indices`` of ``images``, with their encoded labels and,
    when the fit is weighted, their weights."""

    images: ImageBatches
    indices: np.ndarray
    labels: np.ndarray  # class index per sample of ``images``, not of ``indices``
    weights: np.ndarray | None = None  # float32 per sample of ``images``, or None

    def __len__(self) -> int:
        return len(self.indices)

    def targets(self, batch_indices: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(self.labels[batch_indices]).to(
            device, non_blocking=True
        )

    def batch_weights(
        self, batch_indices: np.ndarray, device: torch.device
    ) -> torch.Tensor | None:
        if self.weights is None:
            return None
        return torch.from_numpy(self.weights[batch_indices]).to(
            device, non_blocking=True
        )

    def index_weights(self) -> np.ndarray | None:
        """The weights of ``indices``, in order (for scorers)."""
        return None if self.weights is None else self.weights[self.indices]


@dataclass(frozen=True)
class FitPlan:
    """Every setting of one fit that is not read straight off a parameter.

    Built once, before the data is read, by :func:`check_before_data`; it is
    the one object that carries settings from ``fit`` down to the training
    step (what the targets ask for is the data's :class:`Task`). What is used
    once, where it is built (the optimizer's name, the schedule, EMA, LoRA,
    ...), is read from the estimator there instead.
    """

    weights: object  # resolved: a WeightsEnum, a file path, or None
    head: object  # resolved: None for torchvision's linear fc, else a callable
    stage_lrs: dict[str, float]  # learning rate of each stage
    mean: tuple[float, ...]  # normalisation, per channel
    std: tuple[float, ...]
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast's dtype; None is fp32
    batch_size: int
    # input_size with "auto" read off the weights: None, a short side or (h, w)
    input_size: int | tuple[int, int] | None
    augmentation: Augmentation | None  # of training batches; None for none
    mixup_alpha: float
    cutmix_alpha: float
    early_stopping: bool
    n_iter_no_change: int
    tol: float

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (MixUp or CutMix)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def augments(self) -> bool:
        """Whether training images differ from one epoch to the next."""
        return self.augmentation is not None or self.mixes


def _plan(estimator) -> FitPlan:
    """The checks ``_parameter_constraints`` cannot express, and the values
    they resolve: an arch by name, the weights, ``layer_lr_decay``'s content
    and its ``"auto"`` (which follows ``weights``), the learning rates against
    ``freeze_epochs`` and ``max_iter``, the normalisation, the device,
    ``input_size`` (its ``"auto"`` follows ``weights`` too), the augmentation
    and ``tta`` against the views it leaves. Only what the data does not
    decide."""
    check_arch(estimator.arch)
    weights = resolve_weights(estimator.arch, estimator.weights)
    layer_lr_decay = estimator.layer_lr_decay
    if isinstance(layer_lr_decay, str) and layer_lr_decay == "auto":
        # From random weights there are no learnt features to protect.
        layer_lr_decay = 1.0 if estimator.weights is None else 0.5
    check_layer_lr_decay(layer_lr_decay)
    if estimator.freeze_epochs > estimator.max_iter:
        raise ValueError(
            f"freeze_epochs={estimator.freeze_epochs} is more than "
            f"max_iter={estimator.max_iter}: the backbone would never train"
        )
    stage_lrs = stage_learning_rates(estimator.lr, layer_lr_decay)
    if not any(stage_lrs.values()):
        raise ValueError(
            "layer_lr_decay freezes every stage: at least one learning rate must be > 0"
        )
    if estimator.freeze_epochs and stage_lrs["fc"] == 0:
        raise ValueError(
            "freeze_epochs > 0 trains the head alone first, but "
            "layer_lr_decay freezes the head (fc)"
        )
    mean, std = resolve_normalization(estimator.normalization)
    device = resolve_device(estimator.device)
    input_size = estimator.input_size
    if isinstance(input_size, str) and input_size == "auto":
        input_size = weights_resolution(weights)
    resolve_input_size(input_size, (1, 1))  # refuses a bad size before the data
    augmentation = resolve_augmentation(
        estimator.augmentation, estimator.rotation_degrees
    )
    if estimator.tta is not None:
        ViewSettings.after(augmentation).check(estimator.tta)
    return FitPlan(
        weights=weights,
        head=resolve_head(estimator.head),
        stage_lrs=stage_lrs,
        mean=mean,
        std=std,
        device=device,
        amp_dtype=amp_dtype_for(device, estimator.precision),
        batch_size=estimator.batch_size,
        input_size=input_size,
        augmentation=augmentation,
        mixup_alpha=float(estimator.mixup_alpha),
        cutmix_alpha=float(estimator.cutmix_alpha),
        early_stopping=estimator.early_stopping,
        n_iter_no_change=estimator.n_iter_no_change,
        tol=estimator.tol,
    )


@dataclass(frozen=True)
class LabelledArray:
    """Validated images with their encoded targets and sample weights."""

    X: np.ndarray
    layout: ImageLayout
    targets: np.ndarray  # encoded: class indices
    weights: np.ndarray | None  # per sample, or None when unweighted


@dataclass(frozen=True)
class FitData:
    """The arrays of one fit, validated, with targets encoded by ``task``,
    and the input they make of the network's."""

    task: Task  # what the targets are: their loss, hits and outputs
    train: LabelledArray
    classes: np.ndarray
    model_channels: int  # the stem's input channels: 1 (a folded gray stem) or 3
    input_size: tuple[int, int]  # (height, width) the images enter the network at
    val: LabelledArray | None = None  # X_val and y_val, when given


@dataclass(frozen=True)
class TrainingParts:
    """The samples that train and those that pick the best epoch."""

    train: LabelledImages
    val: LabelledImages | None
    validation_X: object  # what a scorer gets as X, or None

    def on_features(self, features_of) -> TrainingParts:
        """These parts with ``features_of(images)`` read in place of each
        part's images (the frozen-backbone fast path)."""
        features = {}  # by images: a held-out part shares the training one's

        def read(part: LabelledImages) -> LabelledImages:
            key = id(part.images)
            if key not in features:
                features[key] = features_of(part.images)
            return replace(part, images=features[key])

        val = None if self.val is None else read(self.val)
        return TrainingParts(read(self.train), val, self.validation_X)


def training_parts(
    data: FitData,
    plan: FitPlan,
    validation_fraction: float,
    rng: np.random.RandomState,
    scorer_needs_X: bool,
) -> TrainingParts:
    """The training part, the validation part (None without one) and the
    validation images a scorer gets as X (None when it needs none).

    Without ``X_val``, ``validation_fraction`` of the data is held out,
    stratified when the task's targets are classes; samples keep their
    weights, normalised over each part. Both parts' batches come at
    ``input_size``.
    """
    train = data.train
    channels, size = data.model_channels, data.input_size
    images = ImageBatches(
        train.X, train.layout, plan.device, plan.mean, plan.std, channels,
        size=size,
    )  # fmt: skip
    if data.val is not None:
        val = data.val
        val_images = ImageBatches(
            val.X, val.layout, plan.device, plan.mean, plan.std, channels,
            name="X_val", size=size,
        )  # fmt: skip
        val_part = LabelledImages(
            val_images, np.arange(len(val.X)), val.targets, val.weights
        )
        all_indices = np.arange(len(train.targets))
        train_part = _weighted_part(images, all_indices, train.targets, train.weights)
        return TrainingParts(train_part, val_part, val.X)
    train_part, val_part = _held_out(images, data, validation_fraction, rng)
    needs_X = val_part is not None and scorer_needs_X
    validation_X = np.take(train.X, val_part.indices, axis=0) if needs_X else None
    return TrainingParts(train_part, val_part, validation_X)


def _held_out(
    images: ImageBatches,
    data: FitData,
    fraction: float,
    rng: np.random.RandomState,
) -> tuple[LabelledImages, LabelledImages | None]:
    y_encoded, weights = data.train.targets, data.train.weights
    if fraction == 0:
        all_indices = np.arange(len(y_encoded))
        return _weighted_part(images, all_indices, y_encoded, weights), None
    if not data.task.stratify:
        train_idx, val_idx = random_holdout(len(y_encoded), fraction, rng)
        unsplit = []
    else:
        train_idx, val_idx, unsplit = stratified_holdout(y_encoded, fraction, rng)
    if len(unsplit):
        warnings.warn(
            f"{len(unsplit)} class(es) got no validation sample (too few "
            "samples for their share of validation_fraction) and stay whole "
            "in the training part: "
            f"{data.classes[unsplit][:10].tolist()}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    train = _weighted_part(images, train_idx, y_encoded, weights)
    if len(val_idx) == 0:
        return train, None
    val = _weighted_part(images, val_idx, y_encoded, weights, training=False)
    return train, val


def _weighted_part(
    images: ImageBatches,
    indices: np.ndarray,
    y_encoded: np.ndarray,
    weights: np.ndarray | None,
    training: bool = True,
) -> LabelledImages:
    """The samples ``indices`` with their weights normalised over them.

    Training leaves out samples of weight 0: they would still shift batch-norm
    statistics, and a weight of 0 must train nothing.
    """
    if weights is None:
        return LabelledImages(images, indices, y_encoded)
    if training:
        indices = indices[weights[indices] > 0]
    part = weights[indices]
    name = "sample_weight" if training else "the validation samples' sample_weight"
    if not part.sum() > 0:
        raise ValueError(
            f"{name} gives every {'training' if training else 'validation'} "
            "sample a weight of 0; at least one must be positive"
        )
    if np.all(part == part[0]):
        # Uniform weights: the plain loss, exactly as without weights.
        return LabelledImages(images, indices, y_encoded)
    scaled = (weights * (len(part) / part.sum())).astype(np.float32)
    return LabelledImages(images, indices, y_encoded, scaled)


def probe_augmentation(augmentation: Augmentation | None, part: LabelledImages) -> None:
    """Run a user's augmentation once on two training images, before any
    training, so that one that breaks its contract (a batch of another
    shape, dtype or device) is refused before work is done.

    The presets need no probe. The probe draws from a generator of its own:
    the fit's draws stay those of its seed.
    """
    if not isinstance(augmentation, CheckedAugmentation) or len(part) == 0:
        return
    images = part.images
    generator = torch.Generator(device=images.device).manual_seed(0)
    images.get(part.indices[:2], augmentation, generator)


def check_before_data(estimator, image_channels: int | None = None) -> FitPlan:
    """Every check of ``fit`` that needs no data, in one place; the plan.

    ``fit`` runs it first; ``resnetclf train`` runs it before reading any
    image, so that a bad option is refused at once.

    Parameters
    ----------
    estimator : ResNetFineTuneClassifier
        The estimator whose parameters to check.
    image_channels : int, default=None
        Channels of the images to come (1 for grayscale, 3 for colour), when
        known before the data: then the new network's checks run too (a
        callable ``arch`` builds a ResNet, ``lora_rank`` suits its
        convolutions), which ``fit`` otherwise runs once it has seen the data.

    Returns
    -------
    plan : FitPlan
        The settings the checks resolved.
    """
    estimator._validate_params()
    # What the constraints cannot express: the parameters together.
    plan = _plan(estimator)
    if estimator.scoring is not None:
        check_scoring(estimator, scoring=estimator.scoring)  # as EpochScorer does
    if image_channels is not None:
        # Two classes stand in for the data's: no check below depends on
        # them (the head's output is probed once fit has seen the data).
        check_new_network(
            estimator.arch,
            plan.head,
            np.arange(2),
            model_input_channels(image_channels, plan.mean, plan.std),
            lora_rank=estimator.lora_rank,
            trainable=trainable_stages(plan.stage_lrs),
        )
    return plan


def check_writable(path) -> None:
    """Refuse a ``checkpoint_path`` that is a folder or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint_path must be a file path; '{path}' is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise ValueError(f"checkpoint_path '{path}' is not writable: {exc}") from exc


@contextlib.contextmanager
def restored_on_error(estimator, names: tuple[str, ...]) -> Iterator[None]:
    """Put the attributes ``names`` of ``estimator`` back as they were (or
    absent) if the block raises: a refused fit leaves the estimator as it was."""
    saved = {n: estimator.__dict__[n] for n in names if n in estimator.__dict__}
    try:
        yield
    except BaseException:
        for name in names:
            estimator.__dict__.pop(name, None)
        estimator.__dict__.update(saved)
        raise


@contextlib.contextmanager
def torch_seeded(device: torch.device, seed: int) -> Iterator[None]:
    """torch's global RNG (and ``device``'s) seeded with ``seed`` in the block
    and restored after it, so that ``random_state`` decides what is drawn
    there without touching the user's RNG."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
