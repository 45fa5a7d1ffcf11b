"""The fit core that every estimator of the family shares.

:class:`ResNetFineTuneBase` holds the parameters that mean the same for every
task and ``fit`` as named steps: check the parameters (one
:class:`~resnetclf._fit_setup.FitPlan`), check the data (encoded by the
task), check the network, build the parts, train, record. A subclass says
what its targets are through a few hooks (``_make_task`` and the others
below): a classifier, multi-label, a regressor are small additions here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
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

from resnetclf._acceleration.compile import COMPILE_MODES, compiled_forward
from resnetclf._acceleration.conv_weight_grad import gemm_weight_grads
from resnetclf._acceleration.cuda_graphs import cuda_graphed
from resnetclf._acceleration.devices import (
    cudnn_autotuned,
    resolve_device,
)
from resnetclf._acceleration.frozen_features import FeatureBatches, features_suffice
from resnetclf._backbone import (
    build_resnet,
    check_kept_network,
    check_new_network,
    layer4_channels,
    rebuilt_network,
)
from resnetclf._features import pooled_features
from resnetclf._fit_setup import (
    FitData,
    FitPlan,
    LabelledArray,
    TrainingParts,
    check_before_data,
    check_writable,
    probe_augmentation,
    restored_on_error,
    torch_seeded,
    training_parts,
)
from resnetclf._images import (
    ImageBatches,
    ImageLayout,
    array_ndim,
    infer_layout,
    model_input_channels,
)
from resnetclf._inference import run_batched
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
from resnetclf._resize import resolve_input_size
from resnetclf._sample_weights import (
    check_every_class_weighted,
    combined_sample_weight,
    normalised_or_none,
)
from resnetclf._schedules import SCHEDULES, EpochSchedule
from resnetclf._scoring import EpochScorer
from resnetclf._tasks import Task
from resnetclf._test_time import ViewSettings
from resnetclf._training import (
    BestWeights,
    EpochLoop,
    autocast_context,
    batch_slices,
    weight_average,
)
from resnetclf.heads import HEAD_NAMES

__all__ = ["ResNetFineTuneBase"]


class ResNetFineTuneBase(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Fine-tune a torchvision ResNet on image arrays: the shared core.

    Not used directly: :class:`~resnetclf.ResNetFineTuneClassifier` and
    :class:`~resnetclf.ResNetFineTuneRegressor` document the parameters.
    Every estimator of the family is also a transformer, whose
    :meth:`transform` gives the fitted network's pooled features. The
    transformer mixins are bases of this class, not of each estimator,
    because scikit-learn's ``set_output`` wraps only a ``transform`` defined
    in a subclass of its mixin, as scikit-learn's own ``_BasePCA`` does it.
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
        "augmentation": [StrOptions({"rotation", "photo"}), None, callable],
        "mixup_alpha": [Interval(Real, 0, None, closed="left")],
        "cutmix_alpha": [Interval(Real, 0, None, closed="left")],
        "normalization": [StrOptions({"imagenet"}), tuple, list],
        "image_shape": [tuple, list, None],
        # A size's content is checked in resolve_input_size.
        "input_size": [
            Interval(Integral, 1, None, closed="left"),
            tuple,
            list,
            StrOptions({"auto"}),
            None,
        ],
        "tta": [Interval(Integral, 1, None, closed="left"), None],
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
        "scoring": [str, callable, None],
        "freeze_epochs": [Interval(Integral, 0, None, closed="left")],
        "ema_decay": [Interval(Real, 0, 1, closed="neither"), None],
        "lora_rank": [Interval(Integral, 1, None, closed="left"), None],
    }

    # ---------------------------------------------------------- the task
    # What a subclass says about its targets; the fit core asks nothing else.
    _numeric_targets = False  # y must be numbers (validate_data's y_numeric)

    def _make_task(self, y=None) -> Task:
        """The task of targets ``y``, or of the fitted model for None."""
        raise NotImplementedError

    def _output_labels(self) -> np.ndarray:
        """What the fitted network's outputs stand for, one entry each."""
        raise NotImplementedError

    def _set_fitted_outputs(self, data: FitData) -> None:
        """Record what the outputs stand for (``classes_``, ...)."""
        raise NotImplementedError

    def _class_weights(self, outputs: np.ndarray, y) -> np.ndarray | None:
        """A weight per output class, or None (the default)."""
        return None

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
    ) -> ResNetFineTuneBase:
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
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets: a classifier's labels (ints, strings, ...) or 0/1
            label-indicator matrix (multi-label); a regressor's values.
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
        self : estimator
            The fitted estimator.
        """
        plan = check_before_data(self)
        # Decided once: a warm start continues the fitted network and history.
        warm = self.warm_start and hasattr(self, "module_")
        # validate_data sets n_features_in_ at once; a refused fit restores it.
        with restored_on_error(self, ("n_features_in_", "feature_names_in_")):
            data = self._check_data(
                X, y, sample_weight, X_val, y_val, sample_weight_val, warm, plan
            )
            self._check_network(plan, data, warm)
            scorer = EpochScorer(self.scoring, self, data.task, data.classes)
            rng = check_random_state(self.random_state)
            parts = training_parts(
                data, plan, self.validation_fraction, rng, scorer.needs_X
            )
            if self.early_stopping and parts.val is None:
                raise ValueError(
                    "early_stopping=True needs validation data: pass X_val and "
                    "y_val or a validation_fraction > 0"
                )
            probe_augmentation(plan.augmentation, parts.train)
            if self.checkpoint_path is not None:
                check_writable(self.checkpoint_path)
        # All checks passed: from here on, work is done.
        seed = int(rng.randint(np.iinfo(np.int32).max))
        model = self._initial_module(plan, data, warm, seed)
        loop = self._epoch_loop(model, plan, data.task, parts, scorer, rng, seed, warm)
        self._train(loop, model, plan)
        self._set_fitted(model, loop, plan, data)
        return self

    def _check_data(
        self,
        X,
        y,
        sample_weight,
        X_val,
        y_val,
        sample_weight_val,
        warm: bool,
        plan: FitPlan,
    ) -> FitData:
        """The arrays of ``fit`` validated; targets encoded, weights combined."""
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val and y_val must be passed together")
        if sample_weight_val is not None and X_val is None:
            raise ValueError("sample_weight_val needs X_val and y_val")
        X, y, layout = self._validate_images(
            X, y, reset=not warm, expected=self.image_shape_ if warm else None
        )
        task = self._make_task(y)
        if plan.mixes and not hasattr(task, "mixed_loss"):
            raise ValueError(
                "mixup_alpha and cutmix_alpha are not available for the targets "
                f"of a {type(task).__name__} task: leave them at 0"
            )
        outputs, targets = task.encode(y, self._output_labels() if warm else None)
        class_weights = self._class_weights(outputs, y)
        weights = combined_sample_weight(sample_weight, class_weights, X, targets)
        if weights is not None and task.stratify:
            check_every_class_weighted(weights, targets, outputs)
        train = LabelledArray(X, layout, targets, weights)
        val = None
        if X_val is not None:
            val = self._check_validation_data(
                X_val, y_val, sample_weight_val, task, outputs, class_weights, layout
            )
        # What the network takes, decided once: its stem's channels and the
        # size the images enter it at.
        channels = model_input_channels(layout.channels, plan.mean, plan.std)
        size = resolve_input_size(plan.input_size, (layout.height, layout.width))
        return FitData(task, train, outputs, channels, size, val)

    def _check_validation_data(
        self, X_val, y_val, sample_weight_val, task, outputs, class_weights, layout
    ) -> LabelledArray:
        """``X_val`` and its labels validated against the training images'
        ``layout`` and ``outputs``, weighted as the training part is."""
        X_val, y_val, val_layout = self._validate_images(
            X_val, y_val, name="X_val", expected=layout.image_shape
        )
        val_targets = task.encode_known(y_val, outputs, "y_val")
        val_weights = combined_sample_weight(
            sample_weight_val, class_weights, X_val, val_targets,
            name="sample_weight_val",
        )  # fmt: skip
        val_weights = normalised_or_none(val_weights, "sample_weight_val")
        return LabelledArray(X_val, val_layout, val_targets, val_weights)

    def _check_network(self, plan: FitPlan, data: FitData, warm: bool) -> None:
        """Refuse a network that cannot take the data: the kept one of a warm
        start, or the new one (``arch``, ``lora_rank``, ``head``)."""
        if warm:
            check_kept_network(
                self.module_, data.model_channels, plan.head, data.classes
            )
        else:
            check_new_network(
                self.arch,
                plan.head,
                data.classes,
                data.model_channels,
                lora_rank=self.lora_rank,
                trainable=trainable_stages(plan.stage_lrs),
                image_size=data.input_size,
            )

    def _initial_module(
        self, plan: FitPlan, data: FitData, warm: bool, seed: int
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
                data.model_channels,
                verbose=self.verbose,
                head=plan.head,
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
            model, trainable, plan.augments, self.ema_decay, self.torch_compile
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
        self._set_fitted_outputs(data)
        self.image_shape_ = data.train.layout.image_shape
        self.input_size_ = data.input_size
        views = ViewSettings.after(plan.augmentation)
        self._tta_flips, self._tta_degrees = views.flips, views.degrees
        self._model_channels = data.model_channels
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
            # y's checks apply only with y (validate_data passes them on).
            y_checks = (
                {"multi_output": True, "y_numeric": self._numeric_targets}
                if with_y
                else {}
            )
            checked = validate_data(
                self, X, y, reset=reset, allow_nd=True, dtype="numeric", **y_checks
            )
            X, y = checked if with_y else (checked, y)
            if with_y:
                y = _one_column_as_1d(y)
            if reset:
                # validate_data counts X.shape[1]; an image's values are its
                # features.
                self.n_features_in_ = int(np.prod(X.shape[1:]))
        else:
            X = check_array(X, allow_nd=True, dtype="numeric", input_name=name)
            if with_y:
                y = _one_column_as_1d(check_array(
                    y, ensure_2d=False, dtype=None, input_name=name.replace("X", "y")
                ))  # fmt: skip
                check_consistent_length(X, y)
        layout = infer_layout(X.shape, self.image_shape if reset else expected)
        if not reset and layout.image_shape != tuple(expected):
            raise ValueError(
                f"{name} has images of shape {layout.image_shape} (height, width, "
                f"channels) but the model was fitted on {tuple(expected)}"
            )
        return X, y, layout

    # -------------------------------------------------------------- predict
    def _logits(self, X) -> torch.Tensor:
        return self._outputs(X, lambda model: model)

    def _view_logits(self, X) -> torch.Tensor:
        """The logits of ``tta`` test-time views of images ``X``:
        ``(n_views, n_samples, n_outputs)``."""
        check_is_fitted(self)
        views = ViewSettings(self._tta_flips, self._tta_degrees)
        return self._outputs(X, lambda model: model, views.views_of(self.tta))

    def _outputs(self, X, forward_of, views=None) -> torch.Tensor:
        """``forward_of(model)`` applied to images ``X`` in batches on the
        device, at the fitted ``input_size_``, as a float32 CPU tensor; with
        ``views`` (a batch's test-time views), one per view, stacked."""
        check_is_fitted(self)
        X, _, layout = self._validate_images(X, expected=self.image_shape_)
        mean, std = self._normalization_stats
        images = ImageBatches(
            X,
            layout,
            resolve_device(self.device),
            mean,
            std,
            self._model_channels,
            size=self.input_size_,
        )
        return run_batched(
            forward_of, self.module_, images, self.batch_size, self.precision, views
        )

    # ------------------------------------------------------------ transform
    def transform(self, X) -> np.ndarray:
        """The fitted network's features of images ``X``: the last stage's
        map averaged over its positions.

        What torchvision's ``avgpool`` hands the linear head, whatever head
        the model has: one value per channel of ``layer4`` (512 for ResNet18
        and ResNet34, 2048 for ResNet50 and deeper). Computed in batches of
        ``batch_size`` on ``device``, at ``precision``, from images checked
        as :meth:`predict` checks them. ``fit_transform(X, y)`` fits first;
        to use an already fitted estimator as a step of a ``Pipeline``
        without fitting it again, wrap it in
        :class:`sklearn.frozen.FrozenEstimator`.

        Parameters
        ----------
        X : array-like
            Images in any layout ``fit`` accepts, of the fitted image shape.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features), dtype float32
            Columns named by :meth:`get_feature_names_out`; a pandas
            DataFrame after ``set_output(transform="pandas")``.
        """

        def pooled(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda inputs: pooled_features(model, inputs)

        return self._outputs(X, pooled).numpy()

    @property
    def _n_features_out(self) -> int:
        """Columns of :meth:`transform` (``get_feature_names_out`` reads it)."""
        return layer4_channels(self.module_)

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
                self.arch, self.head, self._output_labels(), module_state
            )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]  # transform: float32
        return tags


def _one_column_as_1d(y: np.ndarray) -> np.ndarray:
    """A single-column ``y`` as 1-D, with scikit-learn's DataConversionWarning,
    as ``MLPClassifier`` and ``MLPRegressor`` read it."""
    if y.ndim == 2 and y.shape[1] == 1:
        return column_or_1d(y, warn=True)
    return y
