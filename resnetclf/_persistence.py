"""A fitted estimator as one safetensors file that runs no code when loaded.

``save_model`` writes ``model.safetensors`` into a folder: the network's
tensors in torchvision's layout and, in the file's own metadata (its header's
``__metadata__``, strings to strings), the parameters and fitted attributes
as JSON under the key ``"resnetclf"`` (see ``resnetclf._model_json``).

The settings live in the metadata, not in a JSON file beside the tensors,
because then one file is the whole model: settings and tensors cannot be
separated, half replaced or paired with another model's, so no hash has to
bind two files, and one atomic write saves it. safetensors checks the whole
header, metadata included, before anything is read (bounded in size, strict
JSON, strings only), and every other reader (torchvision through
``safetensors.torch.load_file``, ``weights=``, other tools) ignores the
metadata and sees a plain state dict. The cost: the settings are not a text
file to open in an editor; ``safetensors.safe_open(path, "pt").metadata()``
shows them.

Loading never unpickles: no ``torch.load``, no ``pickle``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import sklearn
import torch
import torchvision
from sklearn.utils.validation import check_is_fitted

from resnetclf._backbone import build_resnet, check_arch, to_torchvision_layout
from resnetclf._checkpoint import read_safetensors, safetensors_bytes, write_atomic
from resnetclf._estimator import ResNetFineTuneClassifier
from resnetclf._model_json import FITTED_TAGS, PARAM_TAGS, from_json, parse, to_json
from resnetclf._version import __version__

__all__ = ["METADATA_KEY", "WEIGHTS_FILE", "load_model", "save_model"]

WEIGHTS_FILE = "model.safetensors"
METADATA_KEY = "resnetclf"
_DOCUMENT_KEYS = {"estimator", "versions", "params", "fitted"}
_PICKLE_HINT = (
    "keep this estimator with pickle or joblib instead (they store any object, "
    "but run code when loading: load only files you trust)"
)


def _count(value) -> bool:
    return type(value) is int and value >= 0


def _tuple(value, n: int, item) -> bool:
    return type(value) is tuple and len(value) == n and all(map(item, value))


def _finite(value) -> bool:
    return type(value) is float and math.isfinite(value)


def _records(history) -> bool:
    numbers = (type(None), bool, int, float)
    return type(history) is list and all(
        type(record) is dict
        and all(type(k) is str and type(v) in numbers for k, v in record.items())
        for record in history
    )


# What predict, score and a warm start read (_set_fitted and the input checks
# set them), each with what its value must be.
_FITTED = {
    "classes_": lambda v: isinstance(v, np.ndarray) and len(set(v)) == len(v) > 1,
    "n_features_in_": _count,
    "feature_names_in_": lambda v: isinstance(v, np.ndarray),
    "image_shape_": lambda v: (
        _tuple(v, 3, lambda d: _count(d) and d > 0) and v[2] in (1, 3)
    ),
    "_model_channels": lambda v: type(v) is int and v in (1, 3),
    "_normalization_stats": lambda v: (
        _tuple(v, 2, lambda s: _tuple(s, 3, _finite)) and min(v[1]) > 0
    ),
    "history_": _records,
    "n_iter_": _count,
    "best_epoch_": lambda v: v is None or _count(v),
    "best_score_": lambda v: v is None or type(v) is float,
    "n_trainable_params_": _count,
    "device_": lambda v: isinstance(v, torch.device),
}
_OPTIONAL = {"feature_names_in_"}


# ------------------------------------------------------------------- saving
def save_model(estimator: ResNetFineTuneClassifier, path: str | os.PathLike) -> Path:
    """Save a fitted estimator to a folder that loads without running code.

    The folder gets one file, ``model.safetensors``: the network's tensors in
    torchvision's layout (``torchvision.models.<arch>(num_classes=n_classes)``
    loads them as they are; a grayscale stem is spread over three channels)
    and, in the file's metadata, the parameters and the fitted attributes
    (``classes_`` with their dtype, ``image_shape_``, ``n_features_in_``,
    ``feature_names_in_``, ``history_``, ``best_epoch_``, ``best_score_``,
    ``n_iter_``, ``n_trainable_params_``, ``device_``, the normalisation
    statistics and the network's input channels) as JSON, with the library,
    scikit-learn, torch and torchvision versions. Other attributes set on the
    estimator are not kept.

    Unlike pickle, which can store any estimator, this format holds only
    plain values. An estimator with a parameter it cannot store exactly (a
    function as ``arch``, ``head`` or ``scoring``, a non-finite number, ...)
    is refused with a ValueError before anything is written.

    Parameters
    ----------
    estimator : ResNetFineTuneClassifier
        A fitted estimator.
    path : str or path
        The folder to write (created if needed; ``model.safetensors`` in it
        is replaced atomically).

    Returns
    -------
    path : Path
        The folder.

    Raises
    ------
    TypeError
        If ``estimator`` is not a ResNetFineTuneClassifier.
    sklearn.exceptions.NotFittedError
        If it is not fitted.
    ValueError
        If a parameter or attribute has no form in the file, or ``path`` is
        a file.

    See Also
    --------
    load_model : read the folder back.

    Examples
    --------
    >>> import numpy as np
    >>> from resnetclf import ResNetFineTuneClassifier, load_model, save_model
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(0, 256, size=(16, 12, 12), dtype=np.uint8)
    >>> y = np.arange(16) % 2
    >>> clf = ResNetFineTuneClassifier(arch="resnet18", weights=None, max_iter=1,
    ...                                batch_size=8, random_state=0).fit(X, y)
    >>> import tempfile, os
    >>> folder = save_model(clf, os.path.join(tempfile.mkdtemp(), "model"))
    >>> sorted(p.name for p in folder.iterdir())
    ['model.safetensors']
    >>> bool(np.array_equal(load_model(folder).predict_proba(X),
    ...                     clf.predict_proba(X)))
    True
    """
    if not isinstance(estimator, ResNetFineTuneClassifier):
        raise TypeError(
            "save_model stores a ResNetFineTuneClassifier; got "
            f"{type(estimator).__name__}"
        )
    check_is_fitted(estimator)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path must be a folder; '{folder}' is a file")
    # Everything is encoded first, so a refusal leaves nothing written.
    settings = json.dumps(_describe(estimator), allow_nan=False)
    tensors = to_torchvision_layout(estimator.module_)
    write_atomic(
        folder / WEIGHTS_FILE, safetensors_bytes(tensors, {METADATA_KEY: settings})
    )
    return folder


def _describe(estimator: ResNetFineTuneClassifier) -> dict:
    missing = [n for n in _FITTED if n not in vars(estimator) and n not in _OPTIONAL]
    if missing:
        raise ValueError(f"cannot save: the fitted estimator lacks {missing}")
    params = estimator.get_params(deep=False)
    return {
        "estimator": type(estimator).__name__,
        "versions": {
            "resnetclf": __version__,
            "scikit-learn": sklearn.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "params": {
            name: _encoded(value, PARAM_TAGS, f"parameter {name!r}")
            for name, value in params.items()
        },
        "fitted": {
            name: _encoded(vars(estimator)[name], FITTED_TAGS, f"attribute {name!r}")
            for name in _FITTED
            if name in vars(estimator)
        },
    }


def _encoded(value, tags: frozenset, where: str):
    try:
        return to_json(value, tags)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"cannot save {where}: {exc}; {_PICKLE_HINT}") from exc


# ------------------------------------------------------------------ loading
def load_model(path: str | os.PathLike) -> ResNetFineTuneClassifier:
    """Load an estimator saved by :func:`save_model`, without running code.

    ``model.safetensors`` is read by safetensors, which checks its header
    against its size before allocating anything; its metadata is parsed as
    strict JSON and decoded into plain values and the few types the format
    names (nothing else is built); the parameters go through the estimator's
    own validation; the fitted attributes must be of their types and agree
    with each other and with the tensors, which must be exactly those of the
    network for ``arch``, ``head`` and ``classes_``. Nothing is unpickled
    (neither ``torch.load`` nor ``pickle`` runs) and nothing is downloaded,
    so the loaded estimator predicts exactly as the saved one did.

    Parameters
    ----------
    path : str or path
        The folder written by :func:`save_model`, or the
        ``model.safetensors`` in it.

    Returns
    -------
    estimator : ResNetFineTuneClassifier
        Fitted, with the saved parameters and attributes; the network is on
        the CPU and moves to ``device`` when predicting.

    Raises
    ------
    FileNotFoundError
        If the folder or its ``model.safetensors`` is missing.
    ValueError
        If the file is not what ``save_model`` writes: not a valid
        safetensors file, a plain state dict without the settings, settings
        that are not strict JSON or hold unknown keys, types or values, or
        tensors that do not fit the settings. The message names the file.

    See Also
    --------
    save_model : write the folder.
    """
    file = Path(path) / WEIGHTS_FILE if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"'{file}' not found: load_model reads a folder written by save_model "
            f"(or the {WEIGHTS_FILE} in it)"
        )
    state_dict, metadata = read_safetensors(file.read_bytes(), file)
    if METADATA_KEY not in metadata:
        raise ValueError(
            f"'{file}' holds tensors but no resnetclf settings in its metadata: "
            "a state dict, not a model written by save_model (weights= takes it)"
        )
    try:
        estimator, fitted = _decode(parse(metadata[METADATA_KEY]))
        _check_fitted(estimator, fitted, state_dict)
    # RuntimeError: torch.device of a string that names no device.
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError,
            RuntimeError) as exc:  # fmt: skip
        raise ValueError(
            f"'{file}' is not a valid model file: {' '.join(str(exc).split())[:400]}"
        ) from exc
    if fitted["_model_channels"] == 1:
        # Exact: save_model spread the kernel so that its channels sum back to it.
        kernel = state_dict["conv1.weight"]
        state_dict["conv1.weight"] = kernel.sum(dim=1, keepdim=True)
    # The estimator's own unpickling step builds module_ from these tensors.
    estimator.__setstate__({**vars(estimator), **fitted, "_module_state": state_dict})
    return estimator


def _decode(document) -> tuple[ResNetFineTuneClassifier, dict]:
    """The estimator with the saved parameters, validated, and the fitted
    attributes, decoded."""
    if type(document) is not dict or set(document) != _DOCUMENT_KEYS:
        raise ValueError(f"the settings must be an object of {sorted(_DOCUMENT_KEYS)}")
    if document["estimator"] != ResNetFineTuneClassifier.__name__:
        raise ValueError(
            f"it holds a {str(document['estimator'])[:40]!r}, not a "
            f"{ResNetFineTuneClassifier.__name__}"
        )
    names = set(ResNetFineTuneClassifier().get_params(deep=False))
    params = _named(document["params"], names, set(), "parameters")
    fitted = _named(document["fitted"], set(_FITTED), _OPTIONAL, "fitted attributes")
    estimator = ResNetFineTuneClassifier(
        **{name: from_json(value, PARAM_TAGS) for name, value in params.items()}
    )
    # The estimator's own checks, as fit makes them; arch must name a builder.
    estimator._validate_params()
    check_arch(estimator.arch)
    return estimator, {
        name: from_json(value, FITTED_TAGS) for name, value in fitted.items()
    }


def _named(mapping, names: set, optional: set, what: str) -> dict:
    if type(mapping) is not dict:
        raise ValueError(f"{what} must be a JSON object")
    unknown = sorted(set(mapping) - names)
    missing = sorted(names - optional - set(mapping))
    if unknown or missing:
        raise ValueError(f"{what} unknown {unknown[:5]}, missing {missing[:5]}")
    return mapping


def _check_fitted(
    estimator: ResNetFineTuneClassifier, fitted: dict, state_dict: dict
) -> None:
    """The fitted attributes must be of their types and agree with each other
    and with the tensors: the one place where a loaded model is checked whole."""
    wrong = [name for name, value in fitted.items() if not _FITTED[name](value)]
    if wrong:
        raise ValueError(f"fitted attributes of the wrong type or value: {wrong}")
    shape, n_features = fitted["image_shape_"], fitted["n_features_in_"]
    names = fitted.get("feature_names_in_")
    if n_features != math.prod(shape) or (
        names is not None and len(names) != n_features
    ):
        raise ValueError(
            "n_features_in_ disagrees with image_shape_ or feature_names_in_"
        )
    if shape[2] == 3 and fitted["_model_channels"] != 3:
        raise ValueError("_model_channels must be 3 for RGB images")
    # The tensors must be exactly the network's that arch, head and classes
    # build: the head's for these classes, conv1 for RGB (torchvision's layout).
    classes = fitted["classes_"]
    with torch.device("meta"):
        expected = build_resnet(
            estimator.arch, None, len(classes), 3, head=estimator.head, classes=classes
        ).state_dict()
    wrong = [
        f"{key} {_spec(state_dict.get(key))} (expected {_spec(expected.get(key))})"
        for key in sorted(expected.keys() | state_dict.keys())
        if _spec(state_dict.get(key)) != _spec(expected.get(key))
    ]
    if wrong:
        raise ValueError(
            f"its tensors do not fit arch={estimator.arch!r} with {len(classes)} "
            f"classes: {len(wrong)} differ, {', '.join(wrong[:3])}"
        )


def _spec(tensor: torch.Tensor | None) -> str:
    return "absent" if tensor is None else f"{tuple(tensor.shape)} {tensor.dtype}"
