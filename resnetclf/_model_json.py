"""estimator.json: a fitted estimator as a fixed schema of plain JSON.

The document holds the format and its version, the versions that wrote it,
what the weights file must be (``weights``: its name, layout, outputs, input
channels and SHA-256), the parameters from ``get_params()`` (``params``) and
the fitted attributes prediction and a warm start read, ``history_``
included (``fitted``), each in one fixed form.

Parameters are JSON values; the few Python types JSON lacks are one-key
objects naming the type (``{"tuple": [...]}``, ``{"dict": [[key, value]]}``,
``{"path": ...}``, ``{"device": ...}``, ``{"torchvision_weights": ...}``,
``{"random_state": ...}``). A value of any other type (a function, a scorer
object) is refused at save time: such an estimator is kept with pickle.
Reading checks every key and value: an unknown key, type or tag, a number out
of range, a non-finite number or a document nested too deeply is a ValueError.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import sklearn
import torch
import torchvision
from torchvision.models import WeightsEnum

from resnetclf._estimator import ResNetFineTuneClassifier
from resnetclf._version import __version__
from resnetclf.heads import DigitSumHead

__all__ = [
    "ESTIMATOR_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "decode_document",
    "describe",
    "read_document",
]

FORMAT_NAME = "resnetclf-model"
FORMAT_VERSION = 2
WEIGHTS_FILE = "model.safetensors"
ESTIMATOR_FILE = "estimator.json"

_MAX_JSON_BYTES = 64 << 20  # a real file is a few kB, plus 0.1 kB per epoch
_MAX_DEPTH = 8  # normalization's (mean, std) of 3-tuples is 3 deep
_WEIGHTS_NAME = re.compile(r"[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+")
_CLASS_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248]|U\d{1,6}|O)")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_SCALARS = (bool, int, float, str)
_PARAM_TAGS = ("tuple", "dict", "path", "device", "torchvision_weights")
_PARAM_TAGS += ("random_state", "head")
# The heads a model file may name, by class name: nothing else is built.
_HEADS = {"DigitSumHead": DigitSumHead}
_TOP_KEYS = {"format", "format_version", "estimator", "versions", "weights"}
_TOP_KEYS |= {"params", "fitted"}
_WEIGHTS_KEYS = {"file", "layout", "num_classes", "input_channels", "sha256"}
_PICKLE_HINT = (
    "keep this estimator with pickle or joblib instead (they store any object, "
    "but run code when loading: load only files you trust)"
)


# ------------------------------------------------------------------- saving
def describe(estimator: ResNetFineTuneClassifier) -> dict:
    """The JSON document of ``estimator``, less the weights' hash."""
    params = estimator.get_params(deep=False)
    fitted = {}
    for name, (encode, _, required) in _FITTED.items():
        if name in vars(estimator):
            where = f"attribute {name!r}"
            fitted[name] = _saving(encode, getattr(estimator, name), where)
        elif required:
            raise ValueError(f"cannot save: the fitted estimator lacks {name}")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "estimator": type(estimator).__name__,
        "versions": {
            "resnetclf": __version__,
            "scikit-learn": sklearn.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "weights": {
            "file": WEIGHTS_FILE,
            "layout": "torchvision",
            "num_classes": len(estimator.classes_),
            "input_channels": int(estimator.module_.conv1.in_channels),
        },
        "params": {
            name: _saving(_param_to_json, value, f"parameter {name!r}")
            for name, value in params.items()
        },
        "fitted": fitted,
    }


def _saving(encode, value, where: str):
    try:
        return encode(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot save {where}: {exc}; {_PICKLE_HINT}") from exc


def _param_to_json(value, depth: int = 0):
    """A parameter as JSON; the types JSON lacks as one-key objects."""
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if value is None or isinstance(value, (bool, str, np.bool_)):
        return value if not isinstance(value, np.bool_) else bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return _finite(value.item() if isinstance(value, np.generic) else value)
    if isinstance(value, (list, tuple)):
        items = [_param_to_json(v, depth + 1) for v in value]
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, dict):
        pairs = [
            [_param_to_json(k, depth + 1), _param_to_json(v, depth + 1)]
            for k, v in value.items()
        ]
        return {"dict": pairs}
    if isinstance(value, Path):
        return {"path": str(value)}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, WeightsEnum):
        return {"torchvision_weights": f"{type(value).__name__}.{value.name}"}
    if type(value) in _HEADS.values():
        params = _param_to_json(value.get_params(), depth + 1)
        return {"head": [type(value).__name__, params]}
    if type(value) is np.random.RandomState:
        algorithm, keys, pos, has_gauss, gauss = value.get_state(legacy=True)
        state = [algorithm, keys.tolist(), int(pos), int(has_gauss), float(gauss)]
        return {"random_state": state}
    raise TypeError(
        f"a {type(value).__module__}.{type(value).__qualname__} has no exact form "
        "in the JSON model file (plain numbers, strings, lists, tuples, dicts, "
        "paths, devices, torchvision weights and RandomState only)"
    )


def _finite(number):
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{number} is not a finite number")
    return number


# ------------------------------------------------------------------ reading
def read_document(json_path: Path) -> dict:
    """Parse ``estimator.json``: bounded in size, strict JSON (no NaN, no
    non-finite or out-of-range numbers), this format and version."""
    with open(json_path, "rb") as file:
        raw = file.read(_MAX_JSON_BYTES + 1)
    if len(raw) > _MAX_JSON_BYTES:
        raise ValueError(
            f"'{json_path}' is not a valid model file: over {_MAX_JSON_BYTES} bytes"
        )
    try:
        document = json.loads(
            raw.decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, NaN, 1e999
        raise ValueError(
            f"'{json_path}' is not a valid model file: not plain JSON "
            f"({_one_line(exc)[:200]})"
        ) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise ValueError(
            f"'{json_path}' is not a valid model file: it does not say "
            f'"format": "{FORMAT_NAME}" (a file of another format)'
        )
    version = document.get("format_version")
    if type(version) is int and version == 1:
        raise ValueError(
            f"'{json_path}' is format version 1 (weights.pth), which this "
            "resnetclf no longer reads; convert it with the resnetclf that "
            "wrote it, as the user guide's 'Saving a fitted model' shows"
        )
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(
            f"'{json_path}' has format version {str(version)[:20]}; this "
            f"resnetclf reads version {FORMAT_VERSION} (a newer resnetclf wrote it?)"
        )
    return document


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _parse_float(text: str) -> float:
    return _finite(float(text))


def _parse_int(text: str) -> int:
    number = int(text)
    if not -(2**63) <= number < 2**64:
        raise ValueError(f"integer of {len(text)} digits out of the int64 range")
    return number


def decode_document(document: dict) -> tuple[dict, dict]:
    """The parameters and fitted attributes of a parsed document, every key and
    value checked against the schema (the parameters' own constraints are
    checked by the caller, through the estimator's validation)."""
    _expect_keys(document, _TOP_KEYS, "the document")
    if document["estimator"] != ResNetFineTuneClassifier.__name__:
        raise ValueError(
            f"it holds a {str(document['estimator'])[:40]!r}, not a "
            f"{ResNetFineTuneClassifier.__name__}"
        )
    weights = _expect(document["weights"], dict, '"weights"')
    _expect_keys(weights, _WEIGHTS_KEYS, '"weights"')
    if weights["file"] != WEIGHTS_FILE or weights["layout"] != "torchvision":
        raise ValueError(f'"weights" must name {WEIGHTS_FILE} in torchvision layout')
    if not isinstance(weights["sha256"], str):
        raise ValueError('"weights" sha256 must be a string')
    known = ResNetFineTuneClassifier().get_params(deep=False)
    params = _expect(document["params"], dict, '"params"')
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"parameters unknown to this resnetclf: {unknown[:5]}")
    params = {name: _param_from_json(value) for name, value in params.items()}
    if not isinstance(params.get("weights"), (str, Path, WeightsEnum, type(None))):
        raise ValueError("weights must be None, a name, a path or torchvision weights")
    raw_fitted = _expect(document["fitted"], dict, '"fitted"')
    unknown = sorted(set(raw_fitted) - set(_FITTED))
    missing = [
        n for n, (*_, needed) in _FITTED.items() if needed and n not in raw_fitted
    ]
    if unknown or missing:
        raise ValueError(f"fitted attributes unknown {unknown[:5]}, missing {missing}")
    fitted = {name: _FITTED[name][1](value) for name, value in raw_fitted.items()}
    _check_fitted(fitted, weights)
    return params, fitted


def _param_from_json(value, depth: int = 0):
    """The inverse of ``_param_to_json``; any other object is an error."""
    if depth > _MAX_DEPTH:
        raise ValueError("a parameter is nested too deeply")
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) is list:
        return [_param_from_json(v, depth + 1) for v in value]
    _expect(value, dict, "a parameter")
    if len(value) != 1 or next(iter(value)) not in _PARAM_TAGS:
        raise ValueError(f"unknown parameter type {str(sorted(value))[:60]}")
    ((tag, content),) = value.items()
    if tag == "tuple":
        items = _expect(content, list, tag)
        return tuple(_param_from_json(v, depth + 1) for v in items)
    if tag == "dict":
        pairs = [_expect(p, list, "a dict item") for p in _expect(content, list, tag)]
        if not all(len(p) == 2 and type(p[0]) in _SCALARS for p in pairs):
            raise ValueError("a dict's items must be [scalar key, value] pairs")
        return {key: _param_from_json(item, depth + 1) for key, item in pairs}
    if tag == "path":
        return Path(_expect(content, str, tag))
    if tag == "device":
        return torch.device(_expect(content, str, tag))
    if tag == "torchvision_weights":
        # Looked up by name among torchvision's enums; nothing is imported or run.
        if not _WEIGHTS_NAME.fullmatch(_expect(content, str, tag)):
            raise ValueError(f"not a torchvision weights name: {content[:60]!r}")
        return torchvision.models.get_weight(content)
    if tag == "head":
        entry = _expect(content, list, tag)
        if len(entry) != 2 or type(entry[0]) is not str or entry[0] not in _HEADS:
            raise ValueError(f"unknown head {str(entry)[:60]}")
        params = _expect(_param_from_json(entry[1], depth + 1), dict, "a head")
        return _HEADS[entry[0]](**params)
    return _random_state_from_json(_expect(content, list, tag))


def _random_state_from_json(state: list) -> np.random.RandomState:
    if not (
        len(state) == 5
        and state[0] == "MT19937"
        and isinstance(state[1], list)
        and len(state[1]) == 624
        and all(type(k) is int and 0 <= k < 2**32 for k in state[1])
        and type(state[2]) is int
        and 0 <= state[2] <= 624
        and state[3] in (0, 1)
        and type(state[4]) is float
    ):
        raise ValueError("random_state must be a RandomState's MT19937 state")
    rng = np.random.RandomState()
    rng.set_state((state[0], np.array(state[1], dtype=np.uint32), *state[2:]))
    return rng


# ---------------------------------------------------------- fitted schema
def _classes_to_json(classes: np.ndarray) -> dict:
    if not isinstance(classes, np.ndarray) or classes.ndim != 1:
        raise TypeError("classes_ must be a 1-D numpy array")
    values = classes.tolist()
    if not _CLASS_DTYPE.fullmatch(classes.dtype.str) or not all(
        type(v) in _SCALARS for v in values
    ):
        raise TypeError(
            f"classes_ of dtype {classes.dtype} have no JSON form (numbers or "
            "strings only)"
        )
    return {"dtype": classes.dtype.str, "values": [_finite(v) for v in values]}


def _classes_from_json(spec) -> np.ndarray:
    _expect_keys(_expect(spec, dict, "classes_"), {"dtype", "values"}, "classes_")
    dtype = _expect(spec["dtype"], str, "classes_ dtype")
    values = _expect(spec["values"], list, "classes_ values")
    if not _CLASS_DTYPE.fullmatch(dtype) or not all(
        type(v) in _SCALARS for v in values
    ):
        raise ValueError(
            f"classes_ must be numbers or strings of a plain dtype, not {dtype[:20]!r}"
        )
    classes = np.empty(len(values), dtype=dtype)
    classes[:] = values
    # Exactly the values written: no string cut short, no integer wrapped.
    if classes.tolist() != values or len(set(values)) != len(values):
        raise ValueError("classes_ must be distinct labels that their dtype holds")
    if len(values) < 2:
        raise ValueError("classes_ must hold at least 2 labels")
    return classes


def _names_to_json(names: np.ndarray) -> list:
    return [str(name) for name in names]


def _names_from_json(names) -> np.ndarray:
    names = _expect(names, list, "feature_names_in_")
    return np.array([_expect(n, str, "a feature name") for n in names], dtype=object)


def _number_to_json(value):
    """A number or None; non-finite floats as the strings "NaN", "Infinity"."""
    value = value.item() if isinstance(value, np.generic) else value
    if value is None or type(value) in (bool, int):
        return value
    if type(value) is not float:
        raise TypeError(f"{type(value).__name__} is not a number")
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _number_from_json(value):
    if value is None or type(value) in (bool, int, float):
        return value
    if type(value) is str and value in _NON_FINITE:
        return _NON_FINITE[value]
    raise ValueError(f"expected a number or null, got {str(value)[:40]!r}")


def _history_to_json(history: list) -> list:
    return [{str(k): _number_to_json(v) for k, v in rec.items()} for rec in history]


def _history_from_json(history) -> list:
    records = _expect(history, list, "history_")
    return [
        {k: _number_from_json(v) for k, v in _expect(r, dict, "a record").items()}
        for r in records
    ]


def _count(value) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected an int >= 0, got {str(value)[:40]!r}")
    return value


def _optional_count(value) -> int | None:
    return None if value is None else _count(value)


def _shape_from_json(value) -> tuple:
    shape = tuple(_count(v) for v in _expect(value, list, "image_shape_"))
    if len(shape) != 3 or min(shape[:2]) < 1 or shape[2] not in (1, 3):
        raise ValueError("image_shape_ must be (height >= 1, width >= 1, 1 or 3)")
    return shape


def _size_from_json(value) -> tuple:
    size = tuple(_count(v) for v in _expect(value, list, "input_size_"))
    if len(size) != 2 or min(size) < 1:
        raise ValueError("input_size_ must be (height >= 1, width >= 1)")
    return size


def _degrees_from_json(value) -> float:
    if type(value) not in (int, float) or not 0 <= value <= 180:
        raise ValueError(f"expected degrees in [0, 180], got {str(value)[:40]!r}")
    return float(value)


def _stats_to_json(stats: tuple) -> list:
    return [[float(v) for v in part] for part in stats]


def _stats_from_json(value) -> tuple:
    parts = _expect(value, list, "_normalization_stats")
    if len(parts) != 2 or not all(
        isinstance(p, list) and len(p) == 3 and all(type(v) is float for v in p)
        for p in parts
    ):
        raise ValueError("_normalization_stats must be ((3 means), (3 stds)) of floats")
    if not all(v > 0 for v in parts[1]):
        raise ValueError("_normalization_stats' stds must be > 0")
    return tuple(tuple(part) for part in parts)


def _device_from_json(value) -> torch.device:
    return torch.device(_expect(value, str, "device_"))


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


# name -> (to JSON, from JSON, required): what predict, predict_proba, score
# and a warm start read, and history_.
def _flag_from_json(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"a flag must be a JSON bool, got {str(value)[:40]!r}")
    return value


_FITTED = {
    "classes_": (_classes_to_json, _classes_from_json, True),
    "n_features_in_": (int, _count, True),
    "feature_names_in_": (_names_to_json, _names_from_json, False),
    "image_shape_": (list, _shape_from_json, True),
    "_model_channels": (int, _count, True),
    "_normalization_stats": (_stats_to_json, _stats_from_json, True),
    "history_": (_history_to_json, _history_from_json, True),
    "best_epoch_": (_optional_int, _optional_count, True),
    "best_score_": (_number_to_json, _number_from_json, True),
    "n_iter_": (int, _count, True),
    "n_trainable_params_": (int, _count, True),
    "device_": (str, _device_from_json, True),
    "_multi_label": (bool, _flag_from_json, False),
    # Absent from files saved before input_size and test-time views.
    "input_size_": (list, _size_from_json, False),
    "_tta_flips": (bool, _flag_from_json, False),
    "_tta_degrees": (float, _degrees_from_json, False),
}


def _check_fitted(fitted: dict, weights: dict) -> None:
    """The fitted attributes must agree with each other and with the network."""
    if fitted["n_features_in_"] != math.prod(fitted["image_shape_"]):
        raise ValueError("n_features_in_ does not match image_shape_")
    names = fitted.get("feature_names_in_")
    if names is not None and len(names) != fitted["n_features_in_"]:
        raise ValueError("feature_names_in_ does not match n_features_in_")
    if fitted["_model_channels"] not in (1, 3):
        raise ValueError("_model_channels must be 1 or 3")
    for key in ("num_classes", "input_channels"):
        _count(weights[key])
    if weights["num_classes"] != len(fitted["classes_"]):
        raise ValueError(
            f"the network has {str(weights['num_classes'])[:20]} outputs for "
            f"{len(fitted['classes_'])} classes"
        )
    if weights["input_channels"] != fitted["_model_channels"]:
        raise ValueError("the network's input channels differ from _model_channels")


# ----------------------------------------------------------------- helpers
def _expect(value, kind: type, what: str):
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(
            f"{what} must be a JSON {kind.__name__}, got {str(value)[:40]!r}"
        )
    return value


def _expect_keys(mapping: dict, keys: set, what: str) -> None:
    if set(mapping) != keys:
        unexpected, missing = sorted(set(mapping) - keys), sorted(keys - set(mapping))
        raise ValueError(
            f"{what} has unexpected keys {unexpected[:5]}, lacks {missing}"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
