"""The scikit-learn estimator that fine-tunes a torchvision ResNet."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils._available_if import available_if
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)
from torch import nn
from torchvision.models import WeightsEnum

from resnetclf._acceleration.bn_folding import folded_for_inference, worth_folding
from resnetclf._acceleration.compile import COMPILE_MODES, compiled_forward
from resnetclf._acceleration.conv_weight_grad import gemm_weight_grads
from resnetclf._acceleration.cuda_graphs import cuda_graphed
from resnetclf._acceleration.devices import (
    amp_dtype_for,
    cudnn_autotuned,
    resolve_device,
)
from resnetclf._acceleration.frozen_features import FeatureBatches, features_suffice
from resnetclf._backbone import (
    build_resnet,
    read_digits,
    reads_digits,
    rebuilt_network,
)
from resnetclf._fit_setup import (
    FitData,
    FitPlan,
    LabelledArray,
    TrainingParts,
    check_before_data,
    check_kept_network,
    check_new_network,
    check_writable,
    restored_on_error,
    torch_seeded,
    training_parts,
)
from resnetclf._images import (
    ImageBatches,
    ImageLayout,
    array_ndim,
    infer_layout,
)
from resnetclf._lora import add_lora_adapters, merge_lora_adapters
from resnetclf._param_groups import (
    OPTIMIZERS,
    StageParamGroups,
    freeze_stages,
    make_optimizer,
    trainable_stages,
    training_phases,
)
from resnetclf._progress import ProgressReporter
from resnetclf._sample_weights import (
    check_every_class_weighted,
    combined_sample_weight,
    normalised_or_none,
    per_class_weights,
)
from resnetclf._schedules import SCHEDULES, EpochSchedule
from resnetclf._scoring import EpochScorer
from resnetclf._tasks import SingleLabelClassification, Task
from resnetclf._training import (
    BestWeights,
    EpochLoop,
    autocast_context,
    batch_slices,
    module_on,
    predict_logits,
    weight_average,
)
from resnetclf.heads import HEAD_NAMES, DigitSumHead

__all__ = ["ResNetFineTuneClassifier"]


class ResNetFineTuneClassifier(ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained torchvision ResNet on numpy image arrays.

    The estimator follows the recipe of the merged-digits report: a pretrained
    ResNet with a new ``len(classes_)``-way head, grayscale images fed as if
    repeated to three channels, random-rotation augmentation, normalisation
    with mean = std = 0.5, cross-entropy, Adam with weight decay, learning rates
    growing from the stem to the head, and the weights of the epoch with the
    best validation score kept (and optionally written to a file).

    Parameters
    ----------
    arch : str, default="resnet50"
        torchvision builder of the ResNet family: ``"resnet18"``, ``"resnet34"``,
        ``"resnet50"``, ``"resnet101"``, ``"resnet152"``, ``"resnext50_32x4d"``,
        ``"resnext101_32x8d"``, ``"resnext101_64x4d"``, ``"wide_resnet50_2"``
        or ``"wide_resnet101_2"``; or a callable taking no arguments that
        returns a ``torchvision.models.ResNet`` (fewer or narrower blocks, say:
        ``functools.partial(torchvision.models.resnet.ResNet, BasicBlock,
        [1, 1, 1, 1])``), whose ``fc`` is replaced like a named builder's. To
        pickle, clone in parallel or save, it must be a module-level function
        or a ``functools.partial`` of one; its weights are None or a file.
    weights : str, path, torchvision WeightsEnum or None, default="DEFAULT"
        Initial weights: ``"DEFAULT"`` or another torchvision weights name of
        ``arch`` (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``), fetched through
        torchvision's cache (``TORCH_HOME``); a path to a state dict in
        torchvision's layout (a checkpoint written by this estimator loads too,
        and resumes its head when the class count matches), a ``.safetensors``
        file or a ``.pth`` one (read with ``torch.load(weights_only=True)``, on
        torch >= 2.10 only); or None for random initialisation.
        Without a network and an empty cache, ``fit`` fails at once with
        :class:`~resnetclf.WeightsUnavailableError`, which says how to go on.
    head : {"linear", "digit-sum"} or callable, default="linear"
        What reads the last stage's feature map. ``"linear"`` is
        torchvision's: average pooling and a ``len(classes_)``-way
        ``Linear`` (``fc``); a checkpoint then loads into
        ``torchvision.models.<arch>(num_classes=n)``. ``"digit-sum"`` is
        ``DigitSumHead()``: for images of 4 digits labelled with their sum, it
        learns to read each digit from the sums alone (see
        :class:`~resnetclf.DigitSumHead`, and :meth:`predict_digits`). A
        callable is called as ``head(feature_channels, classes)`` and must
        return a ``torch.nn.Module`` that maps the map ``(N, C, h, w)`` to
        ``(N, len(classes))`` logits; its output shape is checked before
        training. It takes ``fc``'s place (its parameters are the ``"fc"``
        stage: its learning rate, ``freeze_epochs`` and checkpoints treat it
        as the head; low-rank adapters and batch-norm folding leave it as it
        is). ``save_model`` stores the library's heads; a model with a head
        of your own is kept with pickle, as one with a callable ``arch``.
    max_iter : int, default=50
        Epochs per call to ``fit``.
    batch_size : int, default=64
        Images per optimizer step and per prediction batch.
    lr : float, default=1e-3
        Learning rate of the head (``fc``); the stages below get
        ``layer_lr_decay``'s share of it.
    layer_lr_decay : "auto", float or dict, default="auto"
        Layer-wise learning rates. ``"auto"`` is 0.5 (the report's recipe) when
        ``weights`` starts from trained weights, and 1.0, one rate for every
        stage, when ``weights=None``: from random initialisation there are no
        learnt features to protect, and halving rates per stage cost accuracy
        (``benchmarks/bench_recipes.py``; see the user guide). A float ``d``
        in [0, 1] gives the stage ``k`` steps below the head ``lr * d**k``
        (stages, input to head: ``"stem"``
        (conv1, bn1), ``"layer1"`` .. ``"layer4"``, ``"fc"``). A dict maps stage
        names to learning rates; stages left out train at ``lr``. A stage at 0 is
        frozen: no gradient, no update, its batch-norm statistics fixed, and
        back-propagation stops at the first trainable stage. A folded grayscale
        ``conv1`` kernel (see the user guide) trains at 3x the stem's rate with
        a third of the weight decay, as the three kernels it stands for would.
    lr_schedule : {"constant", "cosine", "plateau"}, default="constant"
        Schedule over epochs, applied to all stages alike so that their ratios
        hold. ``"cosine"`` anneals towards 0 after ``warmup_epochs``;
        ``"plateau"`` divides the rates by 10 when the validation score (the
        training loss without validation data) has not improved by more than
        ``tol`` for ``max(1, n_iter_no_change // 2)`` epochs.
    warmup_epochs : int, default=0
        Epochs of linear warm-up, for any schedule.
    optimizer : {"adam", "adamw", "sgd"}, default="adam"
        ``"adam"`` adds ``weight_decay`` to the gradient (as the report's
        ``torch.optim.Adam``), ``"adamw"`` decays weights decoupled, ``"sgd"`` has
        momentum 0.9. Norm weights and biases are never decayed.
    weight_decay : float, default=1e-4
        Weight decay of convolution and linear weights.
    rotation_degrees : float, default=10.0
        Training images are rotated by a random angle in ``[-rotation_degrees,
        rotation_degrees]``, a batch at a time on the device, corners filled
        with black. 0 turns augmentation off.
    normalization : "imagenet" or tuple (mean, std), default=(0.5, 0.5)
        Statistics applied after scaling pixels to [0, 1]; ``mean`` and ``std``
        are floats or sequences of 3 floats. ``"imagenet"`` uses ImageNet's.
    image_shape : tuple of int, default=None
        Shape ``(height, width)`` or ``(height, width, channels)`` of each row of
        a 2-D ``X`` (flattened images, row-major). Without it a 2-D row is read
        as one ``1 x n_features`` grayscale image. Ignored for 3-D and 4-D ``X``.
    validation_fraction : float, default=0.1
        Share of the training data held out, stratified, to pick the best epoch
        when ``fit`` gets no ``X_val``. Classes too small to give a sample stay
        whole in the training part (with a warning). With 0 and no ``X_val``
        there is no validation: the last epoch is kept.
    early_stopping : bool, default=False
        Stop when the validation score has not improved by more than ``tol``
        for ``n_iter_no_change`` epochs. Needs validation data.
    n_iter_no_change : int, default=10
        Patience of early stopping (and, halved, of the ``"plateau"`` schedule).
    tol : float, default=0.0
        Least gain of the validation score that counts as an improvement for
        early stopping and the ``"plateau"`` schedule.
    checkpoint_path : str or path, default=None
        Where to write the best weights whenever the validation score
        improves (the report's ``resnet-step.pth``; without validation data,
        after every epoch). Written atomically in
        torchvision's layout: ``torchvision.models.<arch>(num_classes=n)``
        loads it as it is; a path ending in ``.safetensors`` gets the
        safetensors format (no pickle), any other ``torch.save``'s.
    device : str or torch.device, default="auto"
        ``"auto"`` takes CUDA when available, else the CPU. Prediction runs on
        the device this names at call time, so a model fitted on a GPU predicts
        on a CPU-only machine (``module_`` stays where it is).
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast precision. ``"auto"`` is bf16 on CUDA devices that support it,
        fp16 (with gradient scaling) on older ones. On the CPU it is bf16 where
        the processor computes bf16 in hardware (AVX512-BF16 or AMX-BF16, as
        ``torch.cpu.get_capabilities()`` reports, with oneDNN's bf16 support,
        ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), and fp32 elsewhere,
        including when that check is unavailable or oneDNN is disabled.
        ``"fp32"`` and ``"bf16"`` are taken as given. Under bf16 the weights,
        the optimizer's state, batch-norm statistics, the loss, the weight
        average and the kept best weights stay float32; predictions
        come from bf16 logits (8 significant bits, about 3 decimal digits).
    torch_compile : bool or str, default=False
        Train through ``torch.compile`` (prediction stays eager): a slower first
        epoch, in exchange for fused kernels. True compiles in torch's default
        mode; a string names the mode (``"default"``, ``"reduce-overhead"``,
        ``"max-autotune"``, ``"max-autotune-no-cudagraphs"``). Shapes are
        compiled static: one graph per batch size seen, a handful per fit.
        Without it, training on CUDA already replays each full batch's
        forward and backward from a CUDA graph; compiling replaces that.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, the validation split, shuffling and
        augmentation. An int makes CPU training repeatable.
    verbose : int, default=0
        0 is silent; 1 reports each epoch (a tqdm bar when tqdm is installed);
        2 adds a bar over batches.
    warm_start : bool, default=False
        Continue from the fitted model (weights, history, best score) instead
        of starting anew. The optimizer and schedule restart.
    class_weight : "balanced", dict or None, default=None
        Weights of the classes in the loss, as scikit-learn's classifiers take
        them (:func:`sklearn.utils.class_weight.compute_class_weight`):
        ``"balanced"`` weights each class by ``n_samples / (n_classes *
        count)``; a dict maps labels to weights (others get 1). Multiplied into
        ``sample_weight``, and so into the validation score too.
    scoring : str, callable or None, default=None
        What picks the best epoch, drives early stopping and the
        ``"plateau"`` schedule, and what ``best_score_`` and ``history_``'s
        ``val_score`` record: None is the validation accuracy; otherwise a
        scikit-learn scorer name (``"balanced_accuracy"``,
        ``"neg_log_loss"``, ``"f1_macro"``, ...) or a callable
        ``scorer(estimator, X, y)``, as ``HistGradientBoostingClassifier``
        takes it. Scorers get the validation pass's predictions, so they cost
        no second pass; higher is better.
    freeze_epochs : int, default=0
        Gradual unfreezing, as fastai's ``fine_tune``: the first
        ``freeze_epochs`` epochs train the head alone (the backbone frozen,
        its batch-norm statistics fixed), the others every stage at its
        ``layer_lr_decay`` rate. At most ``max_iter``; the schedule runs over
        all ``max_iter`` epochs.
    label_smoothing : float, default=0.0
        Share of each target's probability spread over all classes in the
        training loss (``torch.nn.CrossEntropyLoss(label_smoothing=...)``).
        The validation loss stays the plain cross-entropy.
    ema_decay : float or None, default=None
        Keep an exponential moving average of the weights and batch-norm
        buffers, updated after every step with this decay
        (``torch.optim.swa_utils.get_ema_multi_avg_fn``; 0.99 averages over
        about the last 100 steps). The average is what validation scores,
        what the best epoch keeps, what the checkpoint holds and what
        ``module_`` ends with. None turns it off.
    lora_rank : int or None, default=None
        None fine-tunes every weight of the trainable stages. An int trains
        low-rank adapters (LoRA) of that rank on the convolution weights of
        the trainable stages instead, their pretrained weights frozen; the
        new head and the batch norms of those stages train in full. At the
        end of ``fit`` the adapters are merged into plain weights, so
        ``module_``, checkpoints and pickles are a plain torchvision ResNet.
        At most ``min(out, in * kh * kw)`` of the smallest adapted layer.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Values per image (height * width * channels).
    feature_names_in_ : ndarray of str
        Column names of a 2-D ``X`` that had them.
    image_shape_ : tuple of int
        ``(height, width, channels)`` of the images seen in ``fit``.
    module_ : torch.nn.Module
        The fitted network (best epoch restored), in evaluation mode.
        ``predict`` never changes it: on another device than its own, it
        predicts with a copy made there.
    history_ : list of dict
        One record per epoch: ``epoch`` (1-based), ``train_loss``,
        ``train_accuracy``, ``val_loss``, ``val_accuracy``, ``val_score``
        (``scoring``'s; the three are None without validation, and weighted
        with sample weights), ``lr_<stage>`` for each stage, ``seconds``.
    best_epoch_ : int
        Epoch whose weights ``module_`` holds (the last one without validation).
    best_score_ : float or None
        Validation score (``scoring``; accuracy by default) of
        ``best_epoch_``; None without validation.
    n_trainable_params_ : int
        Number of values the last ``fit`` trained (frozen stages and, with
        ``lora_rank``, the frozen pretrained weights left out; the adapters
        counted).
    n_iter_ : int
        Epochs trained, all ``fit`` calls of a warm start included.
    device_ : torch.device
        Device of the last ``fit``.

    See Also
    --------
    sklearn.neural_network.MLPClassifier : the naming model for the parameters.
    resnetclf.plot_history : loss and accuracy curves from ``history_``.

    Examples
    --------
    >>> import numpy as np
    >>> from resnetclf import ResNetFineTuneClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(0, 256, size=(24, 16, 16), dtype=np.uint8)
    >>> y = np.arange(24) % 2
    >>> clf = ResNetFineTuneClassifier(arch="resnet18", weights=None, max_iter=1,
    ...                                batch_size=8, random_state=0)
    >>> clf.fit(X, y).predict(X[:3]).shape
    (3,)
    """

    _parameter_constraints: dict = {
        "arch": [str, callable],  # checked in check_arch
        # A name or a file is checked against arch in resolve_weights.
        "weights": [str, os.PathLike, WeightsEnum, None],
        "head": [StrOptions(set(HEAD_NAMES)), callable],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "layer_lr_decay": [
            StrOptions({"auto"}),
            Interval(Real, 0, 1, closed="both"),
            dict,
        ],
        "lr_schedule": [StrOptions(set(SCHEDULES))],
        "warmup_epochs": [Interval(Integral, 0, None, closed="left")],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "rotation_degrees": [Interval(Real, 0, 180, closed="both")],
        "normalization": [StrOptions({"imagenet"}), tuple, list],
        "image_shape": [tuple, list, None],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "early_stopping": ["boolean"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "checkpoint_path": [str, os.PathLike, None],
        "device": [str, torch.device],
        "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
        "torch_compile": ["boolean", StrOptions(set(COMPILE_MODES))],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "scoring": [str, callable, None],
        "freeze_epochs": [Interval(Integral, 0, None, closed="left")],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "ema_decay": [Interval(Real, 0, 1, closed="neither"), None],
        "lora_rank": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        arch: str = "resnet50",
        weights="DEFAULT",
        head="linear",
        max_iter: int = 50,
        batch_size: int = 64,
        lr: float = 1e-3,
        layer_lr_decay: str | float | dict = "auto",
        lr_schedule: str = "constant",
        warmup_epochs: int = 0,
        optimizer: str = "adam",
        weight_decay: float = 1e-4,
        rotation_degrees: float = 10.0,
        normalization: str | tuple = (0.5, 0.5),
        image_shape: tuple | None = None,
        validation_fraction: float = 0.1,
        early_stopping: bool = False,
        n_iter_no_change: int = 10,
        tol: float = 0.0,
        checkpoint_path: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        torch_compile: bool | str = False,
        random_state=None,
        verbose: int = 0,
        warm_start: bool = False,
        class_weight: str | dict | None = None,
        scoring=None,
        freeze_epochs: int = 0,
        label_smoothing: float = 0.0,
        ema_decay: float | None = None,
        lora_rank: int | None = None,
    ) -> None:
        self.arch = arch
        self.weights = weights
        self.head = head
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.lr = lr
        self.layer_lr_decay = layer_lr_decay
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.rotation_degrees = rotation_degrees
        self.normalization = normalization
        self.image_shape = image_shape
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.checkpoint_path = checkpoint_path
        self.device = device
        self.precision = precision
        self.torch_compile = torch_compile
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.class_weight = class_weight
        self.scoring = scoring
        self.freeze_epochs = freeze_epochs
        self.label_smoothing = label_smoothing
        self.ema_decay = ema_decay
        self.lora_rank = lora_rank

    def _make_task(self) -> SingleLabelClassification:
        """What this estimator learns: its targets, loss and outputs."""
        return SingleLabelClassification(self.label_smoothing)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        X,
        y,
        sample_weight=None,
        *,
        X_val=None,
        y_val=None,
        sample_weight_val=None,
    ) -> ResNetFineTuneClassifier:
        """Fine-tune the network on images ``X`` with labels ``y``.

        Parameters
        ----------
        X : array-like of images
            Shape ``(n_samples, height, width)`` (grayscale),
            ``(n_samples, height, width, channels)``,
            ``(n_samples, channels, height, width)`` with 1 or 3 channels, or
            ``(n_samples, n_features)`` rows read with ``image_shape``. uint8
            values are scaled by 1/255; other dtypes are taken as already in
            [0, 1].
        y : array-like of shape (n_samples,)
            Class labels (ints, strings, ...).
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sample's loss (finite, >= 0), multiplied by
            ``class_weight``'s. Weights are normalised to a mean of 1 over the
            training part, so uniform weights train exactly as none; samples
            of weight 0 are left out of training. Held-out validation samples
            keep their weights, which weight the validation loss, accuracy
            and score.
        X_val, y_val : array-like, default=None
            Validation images of the same size and channel count as ``X`` (in
            any accepted layout) and their labels, all seen in ``y``. When
            given, nothing is held out of ``X`` and the best epoch is the one
            with the best validation score. Keyword-only.
        sample_weight_val : array-like of shape (n_val_samples,), default=None
            Weights of the validation samples (with ``class_weight``'s), as
            ``HistGradientBoostingClassifier.fit`` takes them. Keyword-only.

        Returns
        -------
        self : ResNetFineTuneClassifier
            The fitted estimator.
        """
        plan = check_before_data(self)
        # Decided once: a warm start continues the fitted network and history.
        warm = self.warm_start and hasattr(self, "module_")
        # validate_data sets n_features_in_ at once; a refused fit restores it.
        with restored_on_error(self, ("n_features_in_", "feature_names_in_")):
            data = self._check_data(
                plan, X, y, sample_weight, X_val, y_val, sample_weight_val, warm
            )
            self._check_network(plan, data, warm)
            scorer = EpochScorer(self.scoring, self, data.classes)
            rng = check_random_state(self.random_state)
            parts = training_parts(
                data, plan, self.validation_fraction, rng, scorer.needs_logits
            )
            if self.early_stopping and parts.val is None:
                raise ValueError(
                    "early_stopping=True needs validation data: pass X_val and "
                    "y_val or a validation_fraction > 0"
                )
            if self.checkpoint_path is not None:
                check_writable(self.checkpoint_path)
        # All checks passed: from here on, work is done.
        seed = int(rng.randint(np.iinfo(np.int32).max))
        model = self._initial_module(plan, data, parts, warm, seed)
        loop = self._epoch_loop(model, plan, data.task, parts, scorer, rng, seed, warm)
        self._train(loop, model, plan)
        self._set_fitted(model, loop, plan, data)
        return self

    def _check_data(
        self, plan: FitPlan, X, y, sample_weight, X_val, y_val, sample_weight_val, warm
    ) -> FitData:
        """The arrays of ``fit`` validated; targets encoded, weights combined."""
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val and y_val must be passed together")
        if sample_weight_val is not None and X_val is None:
            raise ValueError("sample_weight_val needs X_val and y_val")
        X, y, layout = self._validate_images(
            X, y, reset=not warm, expected=self.image_shape_ if warm else None
        )
        task = self._make_task()
        classes, y_encoded = task.encode(y, self.classes_ if warm else None)
        class_weights = per_class_weights(self.class_weight, classes, y)
        weights = combined_sample_weight(sample_weight, class_weights, X, y_encoded)
        if weights is not None:
            check_every_class_weighted(weights, y_encoded, classes)
        train = LabelledArray(X, layout, y_encoded, weights)
        if X_val is None:
            return FitData(task, train, classes)
        X_val, y_val, val_layout = self._validate_images(
            X_val, y_val, name="X_val", expected=layout.image_shape
        )
        y_val_encoded = task.encode_known(y_val, classes, "y_val")
        val_weights = combined_sample_weight(
            sample_weight_val, class_weights, X_val, y_val_encoded,
            name="sample_weight_val",
        )  # fmt: skip
        val_weights = normalised_or_none(val_weights, "sample_weight_val")
        val = LabelledArray(X_val, val_layout, y_val_encoded, val_weights)
        return FitData(task, train, classes, val)

    def _check_network(self, plan: FitPlan, data: FitData, warm: bool) -> None:
        """Refuse a network that cannot take the data: the kept one of a warm
        start, or the new one (``arch``, ``lora_rank``, ``head``)."""
        layout = data.train.layout
        channels = plan.model_channels(layout.channels)
        if warm:
            check_kept_network(self.module_, channels, self.head, data.classes)
        else:
            check_new_network(
                self, plan, data.classes, channels, image_size=layout.image_shape[:2]
            )

    def _initial_module(
        self, plan: FitPlan, data: FitData, parts: TrainingParts, warm: bool, seed: int
    ) -> nn.Module:
        if warm:
            return self.module_.to(plan.device)
        # Seeded here, so the new head (and a randomly initialised backbone)
        # follow random_state without touching the global torch RNG.
        with torch_seeded(plan.device, seed):
            model = build_resnet(
                self.arch,
                plan.weights,
                len(data.classes),
                parts.model_channels,
                verbose=self.verbose,
                head=self.head,
                classes=data.classes,
            )
        return model.to(plan.device, memory_format=torch.channels_last)

    def _epoch_loop(
        self,
        model: nn.Module,
        plan: FitPlan,
        task: Task,
        parts: TrainingParts,
        scorer: EpochScorer,
        rng: np.random.RandomState,
        seed: int,
        warm: bool,
    ) -> EpochLoop:
        device = plan.device
        best = BestWeights(checkpoint_path=self.checkpoint_path)
        if warm and parts.val is not None and self.best_score_ is not None:
            # The weights now in the model are the previous fit's best.
            best = BestWeights(
                self.best_score_,
                self.best_epoch_,
                {k: v.detach().clone() for k, v in model.state_dict().items()},
                self.checkpoint_path,
            )
        freeze_stages(model, plan.stage_lrs)
        if self.lora_rank is not None:
            # The factors are drawn from the global RNG: seeded here.
            with torch_seeded(device, seed + 2):
                stages = trainable_stages(plan.stage_lrs)
                add_lora_adapters(model, self.lora_rank, stages)
        # A 1-channel conv1 is always the RGB stem folded over repeated gray.
        stem_fold = 3 if model.conv1.in_channels == 1 else 1
        groups = StageParamGroups(model, plan.stage_lrs, self.weight_decay, stem_fold)
        optimizer = make_optimizer(self.optimizer, groups.groups, device)
        schedule = EpochSchedule(
            self.lr_schedule,
            optimizer,
            n_epochs=self.max_iter,
            warmup_epochs=self.warmup_epochs,
            patience=max(1, self.n_iter_no_change // 2),
            tol=self.tol,
        )
        forward = compiled_forward(model, self.torch_compile)
        trainable = trainable_stages(plan.stage_lrs)
        if features_suffice(
            model, trainable, plan.rotation_degrees, self.ema_decay, self.torch_compile
        ):
            # Only the head trains on fixed images: read it features, not images.
            parts = parts.on_features(
                lambda images: FeatureBatches(
                    images,
                    model,
                    self.batch_size,
                    lambda: autocast_context(device, plan.amp_dtype),
                )
            )
            forward = model.fc
        n_batches = len(batch_slices(len(parts.train), self.batch_size, training=True))
        return EpochLoop(
            model=model,
            forward=forward,
            optimizer=optimizer,
            param_groups=groups,
            schedule=schedule,
            plan=plan,
            task=task,
            parts=parts,
            rng=rng,
            generator=torch.Generator(device=device).manual_seed(seed + 1),
            best=best,
            reporter=ProgressReporter(self.verbose, self.max_iter, n_batches),
            grad_scaler=(
                torch.amp.GradScaler(device.type)
                if plan.amp_dtype == torch.float16
                else None
            ),
            history=list(self.history_) if warm else [],
            ema=weight_average(model, self.ema_decay),
            scorer=scorer,
        )

    def _train(self, loop: EpochLoop, model: nn.Module, plan: FitPlan) -> None:
        """Run the training phases: the head alone first when
        ``freeze_epochs`` asks for it, then every stage at its rate."""
        plain_forward = loop.forward
        try:
            phases = training_phases(plan.stage_lrs, self.freeze_epochs, self.max_iter)
            for n_epochs, stage_lrs in phases:
                loop.frozen_stages = freeze_stages(model, stage_lrs)
                # A phase that changes what trains needs graphs of its own.
                with self._accelerated(model, plain_forward, n_epochs, loop):
                    loop.run(n_epochs)
                loop.forward = plain_forward
                if loop.stopped:
                    break
        finally:
            # Adapters merged, the model is a plain torchvision ResNet again,
            # whatever happened (an adapted module does not pickle).
            merge_lora_adapters(model)
        freeze_stages(model, plan.stage_lrs)
        loop.keep_final_weights()
        # The last step's gradients would double the fitted model's memory.
        model.zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def _accelerated(self, model, forward, n_epochs: int, loop: EpochLoop):
        """The speed-ups of one training phase; sets ``loop.forward``."""
        device = loop.plan.device
        n_train = len(loop.parts.train)
        n_val = len(loop.parts.val) if loop.parts.val is not None else 0
        # Compiled graphs get inductor's own kernels, not the switched modules;
        # the loop trains through the forward that cuda_graphed hands back.
        with (
            cudnn_autotuned(device),
            gemm_weight_grads(model, enabled=self.torch_compile is False),
            cuda_graphed(
                forward,
                model,
                device,
                self.batch_size,
                training_batches=n_epochs * (n_train // self.batch_size),
                # A weight average is evaluated eagerly, not the graphed model.
                evaluation_batches=(
                    n_epochs * (n_val // self.batch_size) if loop.ema is None else 0
                ),
            ) as loop.forward,
        ):
            yield

    def _set_fitted(
        self, model: nn.Module, loop: EpochLoop, plan: FitPlan, data: FitData
    ) -> None:
        self.classes_ = data.classes
        self.image_shape_ = data.train.layout.image_shape
        self._model_channels = loop.parts.model_channels
        self._normalization_stats = (plan.mean, plan.std)
        # Ready for inference, so that predict changes nothing about it.
        self.module_ = model.eval()
        self.device_ = plan.device
        self.n_trainable_params_ = loop.param_groups.n_parameters
        self.history_ = loop.history
        self.n_iter_ = len(loop.history)
        self.best_epoch_ = loop.best.epoch
        self.best_score_ = (
            float(loop.best.score) if loop.best.state_dict is not None else None
        )

    def _validate_images(
        self, X, y="no_validation", *, reset=False, name="X", expected=None
    ) -> tuple[np.ndarray, object, ImageLayout]:
        """``X`` checked as images (with its labels ``y`` when given), and the
        layout of its images.

        ``X`` goes through ``validate_data``, which records (``reset``) or
        checks ``n_features_in_`` and the column names, but not ``X_val``, nor
        3-D and 4-D images after the first fit: ``validate_data`` would count
        their ``X.shape[1]`` as features. Flattened rows are read with
        ``image_shape`` on ``reset``, else with ``expected``, the
        ``(height, width, channels)`` the images must have.
        """
        with_y = not (isinstance(y, str) and y == "no_validation")
        if name == "X" and (reset or array_ndim(X) <= 2):
            checked = validate_data(
                self, X, y, reset=reset, allow_nd=True, dtype="numeric"
            )
            X, y = checked if with_y else (checked, y)
            if reset:
                # validate_data counts X.shape[1]; an image's values are its
                # features.
                self.n_features_in_ = int(np.prod(X.shape[1:]))
        else:
            X = check_array(X, allow_nd=True, dtype="numeric", input_name=name)
            if with_y:
                y = column_or_1d(y, warn=True)
                check_consistent_length(X, y)
        layout = infer_layout(X.shape, self.image_shape if reset else expected)
        if not reset and layout.image_shape != tuple(expected):
            raise ValueError(
                f"{name} has images of shape {layout.image_shape} (height, width, "
                f"channels) but the model was fitted on {tuple(expected)}"
            )
        return X, y, layout

    # -------------------------------------------------------------- predict
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of images ``X``.

        Parameters
        ----------
        X : array-like
            Images in any layout ``fit`` accepts, of the fitted image shape.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Rows sum to 1; columns follow ``classes_``.
        """
        return self._make_task().proba(self._logits(X))

    def predict(self, X) -> np.ndarray:
        """Predicted class labels of images ``X``.

        Parameters
        ----------
        X : array-like
            Images in any layout ``fit`` accepts, of the fitted image shape.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        return self._make_task().predict(self._logits(X), self.classes_)

    def _reads_digits(self) -> bool:
        """Whether the head reads digits: the fitted one, else the one asked for."""
        if hasattr(self, "module_"):
            return reads_digits(self.module_)
        return self.head == "digit-sum" or isinstance(self.head, DigitSumHead)

    @available_if(_reads_digits)
    def predict_digits(self, X) -> np.ndarray:
        """The digits the head reads in images ``X``, left to right.

        Available with a head that reads digits, such as
        :class:`~resnetclf.DigitSumHead`: after a fit on sums alone, each
        slot's most likely digit, the slots ordered by the centre of their
        attention on the image.

        Parameters
        ----------
        X : array-like
            Images in any layout ``fit`` accepts, of the fitted image shape.

        Returns
        -------
        digits : ndarray of shape (n_samples, n_digits), dtype int64
            Digits 0..9, left to right.
        """

        def read(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda inputs: read_digits(model, inputs)

        return self._outputs(X, read).round().to(torch.int64).numpy()

    def _logits(self, X) -> torch.Tensor:
        return self._outputs(X, lambda model: model)

    def _outputs(self, X, forward_of) -> torch.Tensor:
        """``forward_of(model)`` applied to images ``X`` in batches on the
        device, as a float32 CPU tensor."""
        check_is_fitted(self)
        X, _, layout = self._validate_images(X, expected=self.image_shape_)
        device = resolve_device(self.device)
        model = module_on(self.module_, device)
        mean, std = self._normalization_stats
        images = ImageBatches(X, layout, device, mean, std, self._model_channels)
        amp_dtype = amp_dtype_for(device, self.precision)
        inference_model = model
        height, width, _ = self.image_shape_
        if device.type == "cpu" and worth_folding(model, len(images), height, width):
            # Measured on CPUs only; on CUDA the graphs below take the launches.
            inference_model = folded_for_inference(model)
        with (
            cudnn_autotuned(device),
            cuda_graphed(
                forward_of(inference_model),
                inference_model,
                device,
                self.batch_size,
                evaluation_batches=len(images) // self.batch_size,
            ) as forward,
        ):
            return predict_logits(
                forward, inference_model, images, self.batch_size, amp_dtype
            )

    # ---------------------------------------------------------- persistence
    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: it may be our __dict__
        module = state.pop("module_", None)
        if module is not None:
            # Stored as CPU tensors, so a model fitted on a GPU loads anywhere.
            state["_module_state"] = {
                k: v.detach().cpu() for k, v in module.state_dict().items()
            }
        return state

    def __setstate__(self, state):
        module_state = state.pop("_module_state", None)
        super().__setstate__(state)
        if module_state is not None:
            self.module_ = rebuilt_network(
                self.arch, self.head, self.classes_, module_state
            )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
