"""A fitted estimator as one safetensors file that runs no code when loaded.

``save_model`` writes ``model.safetensors``: the network's tensors in
torchvision's layout and, as JSON in the file's own metadata under
``"resnetclf"``, the parameters and fitted attributes. One file is the whole
model: settings and tensors cannot be separated or paired with another
model's, one atomic write saves it, safetensors checks the whole header
before anything is read, and other readers (torchvision, ``weights=``) see a
plain state dict. ``safetensors.safe_open(path, "pt").metadata()`` shows the
settings.
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
from resnetclf._base import ResNetFineTuneBase
from resnetclf._checkpoint import read_safetensors, safetensors_bytes, write_atomic
from resnetclf._estimator import ResNetFineTuneClassifier
from resnetclf._model_json import FITTED_TAGS, PARAM_TAGS, from_json, parse, to_json
from resnetclf._regressor import ResNetFineTuneRegressor
from resnetclf._version import __version__
from resnetclf.heads import resolve_head

__all__ = ["METADATA_KEY", "WEIGHTS_FILE", "load_model", "save_model"]

WEIGHTS_FILE = "model.safetensors"
METADATA_KEY = "resnetclf"
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


def _values(v, positive: bool = False) -> bool:
    """A 1-D float64 array of finite values (all > 0 if asked)."""
    return (
        isinstance(v, np.ndarray)
        and v.dtype == np.float64
        and v.ndim == 1
        and bool(np.isfinite(v).all() and (not positive or (v > 0).all()))
    )


# What predict, score and a warm start read (set by _set_fitted and the input
# checks), each with what its value must be: those of every estimator, then
# each estimator's own (what its outputs stand for).
_FITTED = {
    "n_features_in_": _count,
    "feature_names_in_": lambda v: isinstance(v, np.ndarray),
    "image_shape_": lambda v: _tuple(v, 3, lambda d: _count(d) and d > 0),
    "_model_channels": lambda v: type(v) is int and v in (1, 3),
    "_normalization_stats": lambda v: (
        _tuple(v, 2, lambda p: _tuple(p, 3, _finite)) and min(v[1]) > 0
    ),
    "history_": _records,
    "n_iter_": _count,
    "best_epoch_": lambda v: v is None or _count(v),
    "best_score_": lambda v: v is None or type(v) is float,
    "n_trainable_params_": _count,
    "device_": lambda v: isinstance(v, torch.device),
    "input_size_": lambda v: _tuple(v, 2, lambda d: _count(d) and d > 0),
    "_tta_flips": lambda v: type(v) is bool,
    "_tta_degrees": lambda v: _finite(v) and 0 <= v <= 180,
}
_OUTPUTS = {
    ResNetFineTuneClassifier: {
        "classes_": lambda v: isinstance(v, np.ndarray) and len(set(v)) == len(v) > 1,
        "_multi_label": lambda v: type(v) is bool,
    },
    ResNetFineTuneRegressor: {
        "n_outputs_": lambda v: _count(v) and v > 0,
        "_target_mean": _values,
        "_target_scale": lambda v: _values(v, positive=True),
    },
}
_ESTIMATORS = {cls.__name__: cls for cls in _OUTPUTS}
# Absent from fits on arrays without column names.
_OPTIONAL = {"feature_names_in_"}


def _fitted_checks(cls: type) -> dict:
    return {**_FITTED, **_OUTPUTS[cls]}


def save_model(estimator: ResNetFineTuneBase, path: str | os.PathLike) -> Path:
    """Save a fitted estimator to a folder that loads without running code.

    The folder gets one file, ``model.safetensors``: the network's tensors in
    torchvision's layout and, in its metadata, the parameters, the fitted
    attributes and the versions. A value with no exact form there (a function
    as ``arch``, ``head`` or ``scoring``, a non-finite number, ...) is refused
    before anything is written: pickle keeps such an estimator.

    Parameters
    ----------
    estimator : ResNetFineTuneClassifier or ResNetFineTuneRegressor
        A fitted estimator.
    path : str or path
        The folder (created if needed; its file is replaced atomically).

    Returns
    -------
    path : Path
        The folder.

    Raises
    ------
    TypeError
        If ``estimator`` is not one of the library's estimators.
    sklearn.exceptions.NotFittedError
        If it is not fitted.
    ValueError
        If a value has no form in the file, or ``path`` is a file.
    """
    if type(estimator) not in _OUTPUTS:
        raise TypeError(
            "save_model stores a ResNetFineTuneClassifier or a "
            f"ResNetFineTuneRegressor; got {type(estimator).__name__}"
        )
    check_is_fitted(estimator)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path must be a folder; '{folder}' is a file")
    attributes = vars(estimator)
    checks = _fitted_checks(type(estimator))
    missing = [n for n in checks if n not in attributes and n not in _OPTIONAL]
    if missing:
        raise ValueError(f"cannot save: the fitted estimator lacks {missing}")
    # Everything is encoded first, so a refusal leaves nothing written.
    settings = {
        "estimator": type(estimator).__name__,
        "versions": {
            "resnetclf": __version__,
            "scikit-learn": sklearn.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "params": {
            name: _encoded(value, PARAM_TAGS, f"parameter {name!r}")
            for name, value in estimator.get_params(deep=False).items()
        },
        "fitted": {
            name: _encoded(attributes[name], FITTED_TAGS, f"attribute {name!r}")
            for name in checks
            if name in attributes
        },
    }
    metadata = {METADATA_KEY: json.dumps(settings, allow_nan=False)}
    tensors = to_torchvision_layout(estimator.module_)
    write_atomic(folder / WEIGHTS_FILE, safetensors_bytes(tensors, metadata))
    return folder


def _encoded(value, tags: frozenset, where: str):
    try:
        return to_json(value, tags)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"cannot save {where}: {exc}; {_PICKLE_HINT}") from exc


def load_model(path: str | os.PathLike) -> ResNetFineTuneBase:
    """Load an estimator saved by :func:`save_model`, without running code.

    Nothing is unpickled or downloaded: safetensors checks the header before
    allocating anything, the settings are strict JSON, the parameters pass the
    estimator's own validation and the fitted attributes must agree with each
    other and with the tensors.

    Parameters
    ----------
    path : str or path
        The folder written by :func:`save_model`, or its ``model.safetensors``.

    Returns
    -------
    estimator : ResNetFineTuneClassifier or ResNetFineTuneRegressor
        The saved one's class, fitted, its network on the CPU.

    Raises
    ------
    FileNotFoundError
        If the folder or its ``model.safetensors`` is missing.
    ValueError
        Naming the file, for anything ``save_model`` does not write.
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


def _decode(settings) -> tuple[ResNetFineTuneBase, dict]:
    """The estimator of the saved class and parameters, validated, and the
    fitted attributes."""
    keys = {"estimator", "versions", "params", "fitted"}
    if type(settings) is not dict or set(settings) != keys:
        raise ValueError(f"the settings must be an object of {sorted(keys)}")
    cls = _ESTIMATORS.get(settings["estimator"])
    if cls is None:
        raise ValueError(
            f"estimator must be one of {sorted(_ESTIMATORS)}, "
            f"got {str(settings['estimator'])[:40]!r}"
        )
    names = set(cls().get_params(deep=False))
    for what, known, optional in [
        ("params", names, set()),
        ("fitted", set(_fitted_checks(cls)), _OPTIONAL),
    ]:
        given = settings[what]
        if type(given) is not dict:
            raise ValueError(f"{what} must be a JSON object")
        unknown, missing = set(given) - known, known - optional - set(given)
        if unknown or missing:
            raise ValueError(
                f"{what}: unknown {sorted(unknown)[:5]}, missing {sorted(missing)[:5]}"
            )
    params = {k: from_json(v, PARAM_TAGS) for k, v in settings["params"].items()}
    estimator = cls(**params)
    # The estimator's own checks, as fit makes them; arch must name a builder.
    estimator._validate_params()
    check_arch(estimator.arch)
    return estimator, {
        k: from_json(v, FITTED_TAGS) for k, v in settings["fitted"].items()
    }


def _check_fitted(
    estimator: ResNetFineTuneBase, fitted: dict, state_dict: dict
) -> None:
    """The one place a loaded model is checked whole: the fitted attributes
    against their types, each other and the tensors."""
    checks = _fitted_checks(type(estimator))
    wrong = [name for name, value in fitted.items() if not checks[name](value)]
    if wrong:
        raise ValueError(f"fitted attributes of the wrong type or value: {wrong}")
    shape, names = fitted["image_shape_"], fitted.get("feature_names_in_")
    if fitted["n_features_in_"] != math.prod(shape) or (
        names is not None and len(names) != math.prod(shape)
    ):
        raise ValueError("n_features_in_ disagrees with image_shape_ or feature names")
    if shape[2] not in (1, fitted["_model_channels"]):
        raise ValueError("image_shape_'s channels disagree with _model_channels")
    if "n_outputs_" in fitted and not all(
        len(fitted[name]) == fitted["n_outputs_"]
        for name in ("_target_mean", "_target_scale")
    ):
        raise ValueError("the targets' standardisation disagrees with n_outputs_")
    # Exactly the tensors arch, head and outputs build: the head's outputs for
    # these classes (or values), conv1 for RGB (torchvision's layout).
    classes = fitted.get("classes_")
    if classes is None:
        classes = np.arange(fitted["n_outputs_"])
    with torch.device("meta"):
        expected = build_resnet(
            estimator.arch,
            None,
            len(classes),
            3,
            head=resolve_head(estimator.head),
            classes=classes,
        ).state_dict()
    got, want = ({k: f"{tuple(t.shape)} {t.dtype}" for k, t in d.items()}
                 for d in (state_dict, expected))  # fmt: skip
    wrong = [
        f"{k} {got.get(k, 'absent')} (expected {want.get(k, 'absent')})"
        for k in sorted(got.keys() | want.keys())
        if got.get(k) != want.get(k)
    ]
    if wrong:
        raise ValueError(
            f"its tensors do not fit arch={estimator.arch!r} with {len(classes)} "
            f"outputs: {len(wrong)} differ, {', '.join(wrong[:3])}"
        )
