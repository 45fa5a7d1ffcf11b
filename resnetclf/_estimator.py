"""The scikit-learn classifier that fine-tunes a torchvision ResNet."""

from __future__ import annotations

import os
from collections.abc import Callable
from numbers import Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils._available_if import available_if
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from resnetclf._backbone import read_digits, reads_digits
from resnetclf._base import ResNetFineTuneBase
from resnetclf._fit_setup import FitData
from resnetclf._sample_weights import per_class_weights
from resnetclf._tasks import (
    MultiLabelClassification,
    SingleLabelClassification,
    Task,
)
from resnetclf.heads import DigitSumHead

__all__ = ["ResNetFineTuneClassifier"]


class ResNetFineTuneClassifier(ClassifierMixin, ResNetFineTuneBase):
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
        with black: the ``"rotation"`` augmentation's angle, and the rotation
        ``"photo"`` adds to its crop and flip. 0 turns rotation off (and with
        ``augmentation="rotation"``, augmentation). Ignored with
        ``augmentation`` None or a callable.
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
    input_size : None, int, tuple (height, width) or "auto", default=None
        The size images enter the network at. They are resized a batch at a
        time on the device (bilinear, antialiased when shrinking), after
        scaling to [0, 1] and before augmentation, in ``fit`` (training and
        validation) and in everything that predicts; nothing is cropped.
        None keeps the images' own size, resizing nothing. An int is the
        short side, the aspect ratio kept (a 40x168 strip at 80 becomes
        80x336); a pair is exactly that size. ``"auto"`` is the short side
        the pretrained weights were evaluated at (224 for torchvision's
        ResNets); ``fit`` refuses it with ``weights=None`` or a file, which
        carry no resolution. Pretrained weights see small images best
        brought towards their resolution (see the user guide's "Your own
        photos"); the cost of a pass grows with the pixels. The size used is
        ``input_size_``.
    augmentation : {"rotation", "photo"}, None or callable, default="rotation"
        How training images are augmented, each image with its own random
        draw from the fit's generator (seeded by ``random_state``), a batch
        at a time on the device, after resizing; validation and prediction
        images never are. ``"rotation"``: a rotation of up to
        ``rotation_degrees`` (the digits' recipe). ``"photo"``, for
        photographs: a random resized crop (35 to 100% of the area, its
        aspect ratio within 3/4 to 4/3 of the image's), a horizontal flip
        with probability 1/2, a rotation of up to ``rotation_degrees``, and
        brightness, contrast and saturation jitter of up to 40%; not for
        images whose mirror image is another class (digits, text). None: no
        augmentation. A callable ``f(batch, generator) -> batch``: ``batch``
        is a fresh float32 tensor ``(N, C, H, W)`` on the device, values in
        [0, 1] (scaled, resized to ``input_size``, in the images' own
        channels, 1 for grayscale, not normalised), which it may change in
        place; ``generator`` is the fit's :class:`torch.Generator` on that
        device: draw every random value from it, per image
        (``torch.rand(N, generator=generator, device=batch.device)``), for
        fits that repeat. It returns a tensor of the same shape, dtype and
        device, values in [0, 1]. ``fit`` runs it on two training images
        before training and checks its every output: another shape, dtype or
        device is a ValueError. Like a callable ``arch``, a model trained
        with one is kept with pickle, not ``save_model``.
    mixup_alpha : float, default=0.0
        MixUp: each training batch is blended with a shuffled copy of
        itself, ``lam * x_i + (1 - lam) * x_j`` with ``lam ~ Beta(mixup_alpha,
        mixup_alpha)`` once per batch, after augmentation; the loss is the
        same mixture of the two images' losses (for multi-label ``y``, the
        loss against the targets mixed alike). 0 turns it off; 0.2 to 1 are
        common. With ``cutmix_alpha`` as well, each batch gets one or the
        other, with probability 1/2. ``history_``'s ``train_loss`` is then
        the mixed loss, and ``train_accuracy`` scores each mixed image
        against the labels of the image that dominates it (its own when
        ``lam >= 0.5``, else its partner's).
    cutmix_alpha : float, default=0.0
        CutMix: a box of a shuffled partner image is pasted into each
        training image, the same box for the batch, covering about ``1 -
        lam`` of it with ``lam ~ Beta(cutmix_alpha, cutmix_alpha)`` once per
        batch; the loss as with ``mixup_alpha``, ``lam`` being the share not
        pasted over. 0 turns it off; 1 is common.
    tta : int or None, default=None
        Test-time augmentation: ``predict_proba`` averages the probabilities
        of this many fixed views of each image, and ``predict`` takes their
        argmax (multi-label: each probability above 1/2). The views, in
        order: the image itself; its mirror image, only after training that
        flipped (``augmentation="photo"``); two rotations by +-``d`` degrees,
        ``d = min(5, rotation_degrees)``, only after training that rotated
        (``"rotation"`` or ``"photo"``); four shifts by 1/16 of the short
        side, diagonally; after ``"photo"``, the mirror image's rotations and
        shifts. That is up to 14 views after ``"photo"``, 7 after
        ``"rotation"``, 5 otherwise; more is a ValueError. Each view costs a
        forward pass, and each image's views depend on it alone. None (the
        image alone) is the default; validation in ``fit`` always uses the
        image alone, and ``tta`` can be changed after fitting.

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
    input_size_ : tuple of int
        ``(height, width)`` the images entered the network at in ``fit``
        (``input_size`` resolved), and enter it at to predict.
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
        **ResNetFineTuneBase._parameter_constraints,
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
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
        input_size: int | tuple | str | None = None,
        augmentation: str | Callable | None = "rotation",
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        tta: int | None = None,
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
        self.input_size = input_size
        self.augmentation = augmentation
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.tta = tta

    # ---------------------------------------------------------- the task
    def _make_task(self, y=None) -> Task:
        """One label per image, or a label-indicator ``y`` (multi-label)."""
        if y is None:
            check_is_fitted(self)  # the fitted model's task
        if self._multi_label if y is None else y.ndim == 2:
            return MultiLabelClassification(self.label_smoothing)
        return SingleLabelClassification(self.label_smoothing)

    def _output_labels(self) -> np.ndarray:
        return self.classes_

    def _set_fitted_outputs(self, data: FitData) -> None:
        self.classes_ = data.classes
        self._multi_label = isinstance(data.task, MultiLabelClassification)

    def _class_weights(self, outputs: np.ndarray, y) -> np.ndarray | None:
        if self.class_weight is not None and y.ndim == 2:
            raise ValueError(
                "class_weight is for one label per image; with a multi-label y, "
                "weight samples with sample_weight"
            )
        return per_class_weights(self.class_weight, outputs, y)

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
            Rows sum to 1; columns follow ``classes_``. With ``tta``, the
            mean of the views' probabilities.
        """
        task = self._make_task()
        if self.tta is None:
            return task.proba(self._logits(X))
        views = self._view_logits(X)
        return np.mean([task.proba(logits) for logits in views], axis=0)

    def predict(self, X) -> np.ndarray:
        """Predicted class labels of images ``X``.

        Parameters
        ----------
        X : array-like
            Images in any layout ``fit`` accepts, of the fitted image shape.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Labels from ``classes_``; with ``tta``, those of
            ``predict_proba``'s largest probability.
        """
        if self.tta is None:
            return self._make_task().predict(self._logits(X), self.classes_)
        proba = self.predict_proba(X)
        if self._multi_label:
            return (proba > 0.5).astype(np.int64)
        return self.classes_[proba.argmax(axis=1)]

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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
