"""A scikit-learn transformer over a pretrained ResNet that trains nothing."""

from __future__ import annotations

import os
from numbers import Integral

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from torchvision.models import WeightsEnum

from resnetclf._acceleration.devices import (
    amp_dtype_for,
    resolve_device,
)
from resnetclf._backbone import build_resnet, check_arch, resolve_weights
from resnetclf._features import STAGES, stage_channels, truncated_after
from resnetclf._fit_setup import restored_on_error, torch_seeded
from resnetclf._images import (
    ImageBatches,
    ImageLayout,
    array_ndim,
    infer_layout,
    model_input_channels,
    resolve_normalization,
)
from resnetclf._inference import run_batched
from resnetclf._training import module_on

__all__ = ["ResNetFeatureExtractor"]

# torchvision's builders make a 1000-class (ImageNet) head: kept at that size,
# the head of torchvision's weights loads as it is, and is then dropped.
_TORCHVISION_CLASSES = 1000

# What normalization="auto" gives when the weights are not torchvision's:
# the classifier's default, which its checkpoints were trained with.
_CLASSIFIER_DEFAULT_NORMALIZATION = (0.5, 0.5)


class ResNetFeatureExtractor(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Pooled features of a pretrained torchvision ResNet, with no training.

    ``fit`` checks the images, records their shape and builds the network
    with its weights (read once, there); ``transform`` returns, for each
    image, the map of stage ``layer`` averaged over its positions: for
    ``"layer4"``, what the network's head reads. Nothing is learnt from the
    data, so a fitted extractor can compute the features of every image once,
    for any number of models fitted on them (see the gallery example
    ``plot_feature_extractor.py``).

    Images are read as :class:`ResNetFineTuneClassifier` reads them (layouts,
    uint8 scaled by 1/255, grayscale through a folded stem when normalised
    alike in every channel) and are not resized: torchvision's ImageNet preset
    resizes to 224 pixels, which small images may need for the pretrained
    features to be at their best.

    Parameters
    ----------
    arch : str or callable, default="resnet50"
        torchvision builder of the ResNet family, as the classifier's ``arch``:
        ``"resnet18"`` .. ``"resnet152"``, ``"resnext*"``, ``"wide_resnet*"``,
        or a callable returning a ``torchvision.models.ResNet``.
    weights : str, path, torchvision WeightsEnum or None, default="DEFAULT"
        As the classifier's ``weights``: a torchvision weights name of
        ``arch`` (fetched through torchvision's cache), a state-dict file or
        a folder written by :func:`~resnetclf.save_model` (its head is not
        used), or None for random weights (seeded by ``random_state``).
        Without a network and an empty cache, ``fit`` raises
        :class:`~resnetclf.WeightsUnavailableError`.
    layer : {"layer1", "layer2", "layer3", "layer4"}, default="layer4"
        The stage whose pooled map is returned. Earlier stages give fewer,
        more local features (ResNet50: 256, 512, 1024, 2048 channels;
        ResNet18: 64, 128, 256, 512), and keep more of small images, which
        the later stages shrink to a position or two.
    normalization : "auto", "imagenet" or tuple (mean, std), default="auto"
        Statistics applied after scaling pixels to [0, 1]. ``"auto"`` is
        ImageNet's when ``weights`` names torchvision weights (all of them
        were trained on ImageNet-1k), else ``(0.5, 0.5)``, the classifier's
        default, which its checkpoints were trained with. ``mean`` and
        ``std`` are floats or sequences of 3 floats.
    image_shape : tuple of int, default=None
        Shape ``(height, width)`` or ``(height, width, channels)`` of each row
        of a 2-D ``X``; without it a row is one ``1 x n_features`` grayscale
        image. Ignored for 3-D and 4-D ``X``.
    batch_size : int, default=64
        Images per batch of ``transform``.
    device : str or torch.device, default="auto"
        ``"auto"`` takes CUDA when available, else the CPU. ``transform``
        runs on the device this names at call time.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Autocast precision of ``transform``, as the classifier's: ``"auto"``
        is bf16 on CUDA devices that support it (else fp16), bf16 on CPUs
        that compute it in hardware, fp32 elsewhere. The features are float32
        whatever the precision.
    random_state : int, RandomState instance or None, default=None
        Seeds the random weights of ``weights=None``; unused otherwise.

    Attributes
    ----------
    n_features_in_ : int
        Values per image (height * width * channels).
    feature_names_in_ : ndarray of str
        Column names of a 2-D ``X`` that had them.
    image_shape_ : tuple of int
        ``(height, width, channels)`` of the images seen in ``fit``.
    normalization_ : tuple
        The ``(mean, std)`` applied, three floats each: ``normalization``
        resolved.
    module_ : torch.nn.Module
        The network, in evaluation mode: a torchvision ResNet whose stages
        after ``layer`` and head are identities, so that ``module_(images)``
        returns the features of normalised images.
    device_ : torch.device
        Device of the last ``fit``.

    See Also
    --------
    ResNetFineTuneClassifier.transform : the same features of a fine-tuned
        network.

    Examples
    --------
    >>> import numpy as np
    >>> from resnetclf import ResNetFeatureExtractor
    >>> X = np.random.RandomState(0).randint(0, 256, (5, 16, 16), dtype=np.uint8)
    >>> extractor = ResNetFeatureExtractor(arch="resnet18", weights=None,
    ...                                    random_state=0)
    >>> extractor.fit_transform(X).shape
    (5, 512)
    """

    _parameter_constraints: dict = {
        "arch": [str, callable],  # checked in check_arch
        # A name or a file is checked against arch in resolve_weights.
        "weights": [str, os.PathLike, WeightsEnum, None],
        "layer": [StrOptions(set(STAGES))],
        "normalization": [StrOptions({"auto", "imagenet"}), tuple, list],
        "image_shape": [tuple, list, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        arch="resnet50",
        weights="DEFAULT",
        layer: str = "layer4",
        normalization: str | tuple = "auto",
        image_shape: tuple | None = None,
        batch_size: int = 64,
        device: str | torch.device = "auto",
        precision: str = "auto",
        random_state=None,
    ) -> None:
        self.arch = arch
        self.weights = weights
        self.layer = layer
        self.normalization = normalization
        self.image_shape = image_shape
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> ResNetFeatureExtractor:
        """Check images ``X``, record their shape and build the network.

        Parameters
        ----------
        X : array-like of images
            Shape ``(n_samples, height, width)`` (grayscale),
            ``(n_samples, height, width, channels)``,
            ``(n_samples, channels, height, width)`` with 1 or 3 channels, or
            ``(n_samples, n_features)`` rows read with ``image_shape``. Only
            their shape is used.
        y : None
            Ignored.

        Returns
        -------
        self : ResNetFeatureExtractor
            The fitted extractor.
        """
        weights = resolve_weights(check_arch(self.arch), self.weights)
        mean, std = self._statistics(weights)
        device = resolve_device(self.device)
        amp_dtype_for(device, self.precision)
        # validate_data sets n_features_in_ at once; a refused fit restores it.
        with restored_on_error(self, ("n_features_in_", "feature_names_in_")):
            X = validate_data(self, X, reset=True, allow_nd=True, dtype="numeric")
            self.n_features_in_ = int(np.prod(X.shape[1:]))
            layout = infer_layout(X.shape, self.image_shape)
        channels = model_input_channels(layout.channels, mean, std)
        # Seeded so that weights=None follows random_state, without touching
        # the global torch RNG.
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        with torch_seeded(torch.device("cpu"), seed):
            model = build_resnet(self.arch, weights, _TORCHVISION_CLASSES, channels)
        self._n_features_out = stage_channels(model, self.layer)
        model = truncated_after(model, self.layer).requires_grad_(False)
        self.module_ = model.to(device, memory_format=torch.channels_last).eval()
        self.image_shape_ = layout.image_shape
        self.normalization_ = (mean, std)
        self.device_ = device
        return self

    def _statistics(self, weights) -> tuple[tuple[float, ...], ...]:
        """``normalization`` as per-channel ``(mean, std)``, ``"auto"`` resolved."""
        normalization = self.normalization
        if isinstance(normalization, str) and normalization == "auto":
            # Every torchvision ResNet weight was trained on ImageNet-1k.
            trained_on_imagenet = isinstance(weights, WeightsEnum)
            normalization = (
                "imagenet" if trained_on_imagenet else _CLASSIFIER_DEFAULT_NORMALIZATION
            )
        return resolve_normalization(normalization)

    def transform(self, X) -> np.ndarray:
        """The pooled features of stage ``layer`` for images ``X``.

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
        check_is_fitted(self)
        X, layout = self._validate_images(X)
        mean, std = self.normalization_
        channels = self.module_.conv1.in_channels
        device = resolve_device(self.device)
        images = ImageBatches(X, layout, device, mean, std, channels)
        features = run_batched(
            lambda model: model, self.module_, images, self.batch_size, self.precision
        )
        return features.numpy()

    def _validate_images(self, X) -> tuple[np.ndarray, ImageLayout]:
        """``X`` checked as images of the fitted shape, and their layout.

        Flattened rows go through ``validate_data`` (feature count and
        names); 3-D and 4-D images are checked against the fitted image shape
        instead, since ``validate_data`` would count ``X.shape[1]`` as their
        features.
        """
        if array_ndim(X) <= 2:
            X = validate_data(self, X, reset=False, allow_nd=True, dtype="numeric")
        else:
            X = check_array(X, allow_nd=True, dtype="numeric")
        layout = infer_layout(X.shape, self.image_shape_)
        if layout.image_shape != tuple(self.image_shape_):
            raise ValueError(
                f"X has images of shape {layout.image_shape} (height, width, "
                f"channels) but the extractor was fitted on {self.image_shape_}"
            )
        return X, layout

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: it may be our __dict__
        if "module_" in state:
            # On the CPU, so that an extractor fitted on a GPU loads anywhere.
            state["module_"] = module_on(state["module_"], torch.device("cpu"))
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        # The features are float32 whatever the input's dtype.
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
