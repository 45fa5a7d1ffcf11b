"""What ``fit`` checks before any work, and what it hands the training steps.

``fit`` runs in three steps before it trains: the parameters, each checked
against the estimator's ``_parameter_constraints`` and then together
(:func:`check_params`); the data (the estimator's own ``_check_data``); and
the parts built from them (:func:`training_parts`): image batches on the
device, the training part and the validation part, with their weights.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import check_scoring
from torch import nn

from resnetclf._acceleration.devices import amp_dtype_for, resolve_device
from resnetclf._backbone import (
    build_resnet,
    check_arch,
    layer4_channels,
    make_head,
    resolve_weights,
)
from resnetclf._images import (
    ImageBatches,
    ImageLayout,
    model_input_channels,
    resolve_normalization,
)
from resnetclf._lora import check_lora_rank
from resnetclf._param_groups import (
    check_layer_lr_decay,
    stage_learning_rates,
    trainable_stages,
)
from resnetclf._scoring import EpochScorer
from resnetclf._split import stratified_holdout
from resnetclf._training import LabelledImages
from resnetclf._warnings import user_stacklevel
from resnetclf.heads import resolve_head

__all__ = [
    "FitData",
    "FitParams",
    "FitSetup",
    "check_before_data",
    "check_kept_network",
    "check_new_network",
    "check_params",
    "check_writable",
    "restored_on_error",
    "torch_seeded",
    "training_parts",
]


@dataclass(frozen=True)
class FitParams:
    """The estimator's parameters resolved as ``fit`` uses them."""

    stage_lrs: dict[str, float]  # learning rate of each stage
    mean: tuple[float, ...]  # normalisation, per channel
    std: tuple[float, ...]
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast's dtype; None is fp32


def check_params(estimator) -> FitParams:
    """The checks ``_parameter_constraints`` cannot express, and the values
    they resolve: an arch by name, ``layer_lr_decay``'s content and its
    ``"auto"`` (which follows ``weights``), the learning rates against
    ``freeze_epochs`` and ``max_iter``, the normalisation and the device.
    Only what the data does not decide."""
    check_arch(estimator.arch)
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
    amp_dtype = amp_dtype_for(device, estimator.precision)
    return FitParams(stage_lrs, mean, std, device, amp_dtype)


@dataclass
class FitData:
    """The arrays of one fit, validated, with labels encoded by ``classes``."""

    X: np.ndarray
    y_encoded: np.ndarray
    layout: ImageLayout
    classes: np.ndarray
    class_weights: np.ndarray | None  # per class of ``classes``, or None
    weights: np.ndarray | None  # per sample: sample_weight times class weight
    X_val: np.ndarray | None = None
    y_val_encoded: np.ndarray | None = None
    val_layout: ImageLayout | None = None
    val_weights: np.ndarray | None = None  # normalised to a mean of 1


@dataclass
class FitSetup:
    """What the checks of ``fit`` found, for the steps that do the work."""

    train: LabelledImages
    val: LabelledImages | None
    validation_X: object  # what a scorer gets as X, or None
    classes: np.ndarray
    layout: ImageLayout
    stage_lrs: dict[str, float]
    initial_weights: object
    scorer: EpochScorer
    rng: np.random.RandomState
    seed: int
    device: torch.device
    amp_dtype: torch.dtype | None
    normalization: tuple
    warm: bool


def training_parts(
    data: FitData,
    params: FitParams,
    model_channels: int,
    validation_fraction: float,
    rng: np.random.RandomState,
    scorer: EpochScorer,
) -> tuple[LabelledImages, LabelledImages | None, object]:
    """The training part, the validation part (None without one) and the
    validation images a scorer gets as X (None when it needs none).

    Without ``X_val``, ``validation_fraction`` of the data is held out,
    stratified; samples keep their weights, normalised over each part.
    """
    images = ImageBatches(
        data.X, data.layout, params.device, params.mean, params.std, model_channels
    )
    if data.X_val is not None:
        val_images = ImageBatches(
            data.X_val, data.val_layout, params.device, params.mean, params.std,
            model_channels, name="X_val",
        )  # fmt: skip
        val = LabelledImages(
            val_images, np.arange(len(data.X_val)), data.y_val_encoded, data.val_weights
        )
        all_indices = np.arange(len(data.y_encoded))
        train = _weighted_part(images, all_indices, data.y_encoded, data.weights)
        return train, val, data.X_val
    train, val = _held_out(images, data, validation_fraction, rng)
    needs_X = val is not None and scorer.needs_logits
    return train, val, np.take(data.X, val.indices, axis=0) if needs_X else None


def _held_out(
    images: ImageBatches,
    data: FitData,
    fraction: float,
    rng: np.random.RandomState,
) -> tuple[LabelledImages, LabelledImages | None]:
    y_encoded, weights = data.y_encoded, data.weights
    if fraction == 0:
        all_indices = np.arange(len(y_encoded))
        return _weighted_part(images, all_indices, y_encoded, weights), None
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


def check_new_network(
    arch,
    classes: np.ndarray,
    in_channels: int,
    lora_rank: int | None,
    stage_lrs,
    *,
    head="linear",
    image_size: tuple[int, int] = (32, 32),
) -> None:
    """Check what only the network can tell, on a weightless copy of it (on
    the meta device): that a callable ``arch`` builds a ResNet, that
    ``lora_rank`` suits the convolutions of the trainable stages, and that a
    head gives one logit per class for images of ``image_size``."""
    custom_head = resolve_head(head) is not None
    if lora_rank is None and not callable(arch) and not custom_head:
        return
    n_classes = len(classes)
    with torch.device("meta"):
        probe = build_resnet(
            arch, None, n_classes, in_channels, head=head, classes=classes
        )
        if custom_head:
            output = probe(torch.empty(2, in_channels, *image_size))
            if tuple(output.shape) != (2, n_classes):
                raise ValueError(
                    f"head={head!r} returned logits of shape "
                    f"{tuple(output.shape)} for 2 images; expected (2, {n_classes}): "
                    "one per class"
                )
    if lora_rank is not None:
        check_lora_rank(probe, lora_rank, trainable_stages(stage_lrs))


def check_before_data(estimator, image_channels: int | None = None) -> FitParams:
    """Every check of ``fit`` that needs no data, in one place.

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
    params : FitParams
        The values the checks resolved.
    """
    estimator._validate_params()
    # What the constraints cannot express: the parameters together.
    params = check_params(estimator)
    resolve_weights(estimator.arch, estimator.weights)
    if estimator.scoring is not None:
        check_scoring(estimator, scoring=estimator.scoring)  # as EpochScorer does
    if image_channels is not None:
        channels = model_input_channels(image_channels, params.mean, params.std)
        # Two classes stand in for the data's: no check below depends on
        # them (the head's output is probed once fit has seen the data).
        check_new_network(
            estimator.arch, np.arange(2), channels, estimator.lora_rank,
            params.stage_lrs,
        )  # fmt: skip
    return params


def check_kept_network(
    module: nn.Module, in_channels: int, head, classes: np.ndarray
) -> None:
    """Refuse a warm start whose data or head the fitted network cannot take."""
    if module.conv1.in_channels != in_channels:
        raise ValueError(
            "warm_start=True continues the fitted network, whose stem takes "
            f"{module.conv1.in_channels} channel(s); this fit needs "
            f"{in_channels}. The stem's channels follow the images and "
            "normalization (1 for grayscale normalised alike in every channel, "
            "else 3): keep the first fit's normalization, or set warm_start=False"
        )
    with torch.device("meta"):
        wanted = make_head(head, layer4_channels(module), classes).state_dict()
    kept = module.fc.state_dict()
    if {k: v.shape for k, v in wanted.items()} != {k: v.shape for k, v in kept.items()}:
        raise ValueError(
            f"warm_start=True continues the fitted network, whose head differs "
            f"from head={head!r}: keep the first fit's head, or set "
            "warm_start=False"
        )


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
