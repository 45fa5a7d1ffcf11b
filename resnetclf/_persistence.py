"""A model file that runs no code when loaded: tensors plus plain JSON.

``save_model`` writes a folder with two files:

``weights.pth``
    The fitted network's state dict in torchvision's layout, read back with
    ``torch.load(weights_only=True)``: tensors only, no pickled objects.
``estimator.json``
    Everything else the estimator needs, as plain JSON: its parameters, its
    fitted attributes (classes, image shape, history, normalisation, ...),
    the versions that wrote it and a SHA-256 of ``weights.pth``.

Values JSON has no type for (tuples, numpy arrays and scalars, non-finite
floats, dicts with non-string keys, torch devices, paths, torchvision weight
enums, a ``RandomState``) are written as one-key objects whose key names the
type (``{"__tuple__": [...]}``), and only those types are rebuilt on load. A
value of any other type (a function, a scorer object, ...) is refused at save
time: such an estimator is kept with pickle or joblib.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import sklearn
import torch
import torchvision
from sklearn.utils.validation import check_is_fitted
from torchvision.models import WeightsEnum

from resnetclf._backbone import build_resnet, to_torchvision_layout
from resnetclf._checkpoint import load_state_dict_file, save_state_dict_atomic
from resnetclf._estimator import ResNetFineTuneClassifier

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "load_model", "save_model"]

FORMAT_NAME = "resnetclf-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pth"
ESTIMATOR_FILE = "estimator.json"

# numpy dtype kinds stored: bool, ints, unsigned ints, floats, str, object (of
# plain values). Bytes, dates, complex and structured dtypes are refused.
_ARRAY_KINDS = frozenset("biufUO")
_WEIGHTS_NAME = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")
_ATTRIBUTE_NAME = re.compile(r"_[A-Za-z]\w*|[A-Za-z]\w*_")
_PICKLE_HINT = (
    "keep this estimator with pickle or joblib instead (they can store any "
    "object, but run code when loading: load only files you trust)"
)


class _Refused(ValueError):
    """A value the JSON file has no faithful form for."""


# ------------------------------------------------------------------- saving
def save_model(estimator: ResNetFineTuneClassifier, path: str | os.PathLike) -> Path:
    """Save a fitted estimator to a folder that loads without running code.

    The folder gets ``weights.pth``, the network's state dict in torchvision's
    layout (``torchvision.models.<arch>(num_classes=n_classes)`` loads it as
    it is; a grayscale stem is spread over three channels), and
    ``estimator.json``: the parameters, the fitted attributes (``classes_``
    with their dtype, ``image_shape_``, ``n_features_in_``, ``history_``,
    ``best_epoch_``, ``best_score_``, ``n_iter_``, the normalisation
    statistics and the network's input channels, ...), the format version,
    the library, scikit-learn and torch versions, and a SHA-256 of
    ``weights.pth``.

    Unlike pickle, which can store any estimator, this format holds only
    plain values. An estimator with a parameter or attribute it cannot store
    faithfully (a function as ``arch``, a scorer object, ...) is refused with
    a ValueError before anything is written.

    Parameters
    ----------
    estimator : ResNetFineTuneClassifier
        A fitted estimator.
    path : str or path
        The folder to write (created if needed; the two files in it are
        replaced).

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
        If a parameter or attribute cannot be stored in JSON, or ``path`` is
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
    ['estimator.json', 'weights.pth']
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
    # Everything is encoded first, so a refusal leaves no half-written folder.
    document = _describe(estimator)
    weights = to_torchvision_layout(estimator.module_)
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = save_state_dict_atomic(weights, folder / WEIGHTS_FILE)
    document["weights"]["sha256"] = _sha256(weights_path)
    _write_text_atomic(folder / ESTIMATOR_FILE, json.dumps(document, indent=2))
    return folder


def _describe(estimator: ResNetFineTuneClassifier) -> dict:
    """The JSON document of ``estimator``, less the weights' hash."""
    from resnetclf import __version__

    params = estimator.get_params(deep=False)
    attributes = {
        name: value
        for name, value in vars(estimator).items()
        if name not in params and name != "module_"
    }
    module = estimator.module_
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
            "num_classes": int(module.fc.out_features),
            "input_channels": int(module.conv1.in_channels),
        },
        "params": {
            name: _encode(value, f"parameter {name!r}")
            for name, value in params.items()
        },
        "attributes": {
            name: _encode(value, f"attribute {name!r}")
            for name, value in attributes.items()
        },
    }


def _encode(value, where: str):
    """``value`` as JSON, with tagged one-key objects for the types JSON lacks."""
    if isinstance(value, np.generic):
        return {"__numpy__": {"dtype": value.dtype.str, "value": _scalar(value)}}
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if type(value) is list:
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if type(value) is tuple:
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if type(value) is dict:
        return _encode_dict(value, where)
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _encode_array(value, where)}
    if isinstance(value, torch.device):
        return {"__torch_device__": str(value)}
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, WeightsEnum):
        return {"__weights_enum__": f"{type(value).__name__}.{value.name}"}
    if type(value) is np.random.RandomState:
        return {"__random_state__": _encode_random_state(value)}
    raise _Refused(
        f"cannot save {where}: a {type(value).__module__}.{type(value).__qualname__}"
        " has no faithful form in the JSON model file, which holds only plain "
        "values (numbers, strings, lists, dicts, tuples, numpy arrays, torch "
        f"devices, paths, torchvision weights); {_PICKLE_HINT}"
    )


def _encode_dict(value: dict, where: str):
    plain = all(isinstance(k, str) and not k.startswith("__") for k in value)
    if plain and all(type(k) is str for k in value):
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    # Keys that are not plain strings (class labels as ints, say) keep their type.
    return {
        "__dict__": [
            [_encode(k, f"{where} key {k!r}"), _encode(v, f"{where}[{k!r}]")]
            for k, v in value.items()
        ]
    }


def _scalar(value: np.generic):
    if value.dtype.kind not in _ARRAY_KINDS - {"O"}:
        raise _Refused(f"cannot save a numpy scalar of dtype {value.dtype}")
    item = value.item()
    if isinstance(item, float) and not math.isfinite(item):
        return {"__float__": repr(item)}
    return item


def _encode_array(array: np.ndarray, where: str) -> dict:
    if array.dtype.kind not in _ARRAY_KINDS:
        raise _Refused(
            f"cannot save {where}: numpy arrays of dtype {array.dtype} have no "
            f"form in the JSON model file; {_PICKLE_HINT}"
        )
    items = array.ravel().tolist()
    if array.dtype.kind == "O":
        items = [_encode(v, f"{where}[{i}]") for i, v in enumerate(items)]
    elif array.dtype.kind == "f":
        items = [v if math.isfinite(v) else {"__float__": repr(v)} for v in items]
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": items}


def _encode_random_state(rng: np.random.RandomState) -> dict:
    name, keys, pos, has_gauss, cached_gaussian = rng.get_state(legacy=True)
    return {
        "algorithm": name,
        "keys": keys.tolist(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


# ------------------------------------------------------------------ loading
def load_model(path: str | os.PathLike) -> ResNetFineTuneClassifier:
    """Load an estimator saved by :func:`save_model`, without running code.

    ``estimator.json`` is parsed as plain JSON and checked strictly (format
    and version, the types of every value, the parameters against the
    estimator's, the classes against the network's outputs); ``weights.pth``
    must match the SHA-256 recorded at save time and is read with
    ``torch.load(weights_only=True)``, and its tensors must fit the
    architecture exactly. The network is built from the architecture alone
    (nothing is downloaded) and takes the saved weights, so the loaded
    estimator predicts exactly as the saved one did.

    Parameters
    ----------
    path : str or path
        The folder written by :func:`save_model`.

    Returns
    -------
    estimator : ResNetFineTuneClassifier
        Fitted, with the saved parameters and attributes; the network is on
        the CPU and moves to ``device`` when predicting.

    Raises
    ------
    FileNotFoundError
        If the folder or one of its two files is missing.
    ValueError
        If a file is not what ``save_model`` writes: another format or a
        newer version, JSON that does not parse or has unexpected values,
        weights that were changed, hold anything but tensors, or do not fit.

    See Also
    --------
    save_model : write the folder.
    """
    folder = Path(path)
    json_path, weights_path = folder / ESTIMATOR_FILE, folder / WEIGHTS_FILE
    for file in (json_path, weights_path):
        if not file.is_file():
            raise FileNotFoundError(
                f"'{file}' not found: load_model reads a folder written by "
                f"save_model, holding {ESTIMATOR_FILE} and {WEIGHTS_FILE}"
            )
    document = _read_document(json_path)
    try:
        params, attributes = _decode_document(document)
        estimator = ResNetFineTuneClassifier(**params)
        estimator._validate_params()
        _check_attributes(attributes, document["weights"])
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"'{json_path}' is not a valid model file: {exc}") from exc
    if _sha256(weights_path) != document["weights"].get("sha256"):
        raise ValueError(
            f"'{weights_path}' is not the file saved with '{json_path}' (its "
            "SHA-256 differs from the one recorded): the folder was changed "
            "after save_model"
        )
    state_dict = load_state_dict_file(weights_path)
    _check_state_dict(state_dict, estimator.arch, document["weights"], weights_path)
    # The estimator's own unpickling builds module_ from CPU tensors, as for pickle.
    module_state = _fitted_layout(state_dict, document["weights"]["input_channels"])
    estimator.__setstate__(
        {**vars(estimator), **attributes, "_module_state": module_state}
    )
    return estimator


def _read_document(json_path: Path) -> dict:
    try:
        document = json.loads(
            json_path.read_text(encoding="utf-8"), parse_constant=_no_constants
        )
    except ValueError as exc:  # bad UTF-8, bad JSON, NaN or Infinity
        raise ValueError(
            f"'{json_path}' is not a valid model file: not JSON ({exc})"
        ) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise ValueError(
            f"'{json_path}' is not a valid model file: it does not say "
            f'"format": "{FORMAT_NAME}" (a file of another format)'
        )
    version = document.get("format_version")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"'{json_path}' has format version {version!r}; this resnetclf reads "
            f"versions up to {FORMAT_VERSION} (a newer resnetclf wrote it?)"
        )
    return document


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _decode_document(document: dict) -> tuple[dict, dict]:
    if document.get("estimator") != ResNetFineTuneClassifier.__name__:
        raise ValueError(
            f"it holds a {document.get('estimator')!r}, not a "
            f"{ResNetFineTuneClassifier.__name__}"
        )
    for key in ("params", "attributes", "weights"):
        if not isinstance(document.get(key), dict):
            raise ValueError(f'"{key}" must be an object')
    params = {k: _decode(v) for k, v in document["params"].items()}
    known = ResNetFineTuneClassifier().get_params(deep=False)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"parameters unknown to this ResNetFineTuneClassifier: {unknown} "
            "(written by another version?)"
        )
    attributes = {k: _decode(v) for k, v in document["attributes"].items()}
    # Only fitted (name_) or private (_name) data; never a method or a parameter.
    refused = [
        name
        for name in attributes
        if not _ATTRIBUTE_NAME.fullmatch(name)
        or name in known
        or name in ("module_", "_module_state")
        or hasattr(ResNetFineTuneClassifier, name)
    ]
    if refused:
        raise ValueError(f"attributes that may not be set from a file: {refused}")
    return params, attributes


def _decode(value):
    """The inverse of ``_encode``; any other tagged object is an error."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) is list:
        return [_decode(v) for v in value]
    if type(value) is not dict:
        raise ValueError(f"unexpected JSON value {value!r}")
    tags = [k for k in value if k.startswith("__")]
    if not tags:
        return {k: _decode(v) for k, v in value.items()}
    if len(value) != 1 or tags[0] not in _DECODERS:
        raise ValueError(f"unknown tagged value with keys {sorted(value)[:5]}")
    tag = tags[0]
    return _DECODERS[tag](value[tag])


def _decode_tuple(items):
    return tuple(_decode(v) for v in _expect(items, list, "__tuple__"))


def _decode_dict(pairs):
    result = {}
    for pair in _expect(pairs, list, "__dict__"):
        key, item = _expect(pair, list, "__dict__ pair")
        result[_decode(key)] = _decode(item)
    return result


def _decode_float(text):
    if text not in ("nan", "inf", "-inf"):
        raise ValueError(f"__float__ must be 'nan', 'inf' or '-inf'; got {text!r}")
    return float(text)


def _decode_numpy(spec):
    spec = _expect(spec, dict, "__numpy__")
    dtype = _safe_dtype(spec["dtype"], scalar=True)
    return np.array(_decode(spec["value"]), dtype=dtype)[()]


def _decode_array(spec):
    spec = _expect(spec, dict, "__ndarray__")
    dtype = _safe_dtype(spec["dtype"])
    shape = tuple(_expect(spec["shape"], list, "__ndarray__ shape"))
    if not all(type(s) is int and s >= 0 for s in shape):
        raise ValueError(f"__ndarray__ shape must hold ints >= 0; got {shape}")
    items = [_decode(v) for v in _expect(spec["data"], list, "__ndarray__ data")]
    if len(items) != math.prod(shape):
        raise ValueError(f"__ndarray__ of shape {shape} has {len(items)} values")
    if dtype.kind == "O":
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    return np.array(items, dtype=dtype).reshape(shape)


def _decode_device(text):
    return torch.device(_expect(text, str, "__torch_device__"))


def _decode_path(text):
    return Path(_expect(text, str, "__path__"))


def _decode_weights_enum(text):
    # Looked up by name in torchvision's registry; nothing is imported or run.
    if not isinstance(text, str) or not _WEIGHTS_NAME.match(text):
        raise ValueError(f"__weights_enum__ is not a weights name: {text!r}")
    weights = torchvision.models.get_weight(text)
    if not isinstance(weights, WeightsEnum):
        raise ValueError(f"{text!r} is not a torchvision weights enum")
    return weights


def _decode_random_state(spec):
    spec = _expect(spec, dict, "__random_state__")
    keys = np.array(_expect(spec["keys"], list, "keys"), dtype=np.uint32)
    rng = np.random.RandomState()
    rng.set_state(
        (
            _expect(spec["algorithm"], str, "algorithm"),
            keys,
            int(spec["pos"]),
            int(spec["has_gauss"]),
            float(spec["cached_gaussian"]),
        )
    )
    return rng


_DECODERS = {
    "__tuple__": _decode_tuple,
    "__dict__": _decode_dict,
    "__float__": _decode_float,
    "__numpy__": _decode_numpy,
    "__ndarray__": _decode_array,
    "__torch_device__": _decode_device,
    "__path__": _decode_path,
    "__weights_enum__": _decode_weights_enum,
    "__random_state__": _decode_random_state,
}


def _expect(value, kind: type, what: str):
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{what} must be a JSON {kind.__name__}; got {value!r}")
    return value


def _safe_dtype(text, scalar: bool = False) -> np.dtype:
    if not isinstance(text, str) or not re.fullmatch(r"[<>|=]?[a-zA-Z]\d*", text):
        raise ValueError(f"not a plain numpy dtype: {text!r}")
    dtype = np.dtype(text)
    kinds = _ARRAY_KINDS - {"O"} if scalar else _ARRAY_KINDS
    if dtype.kind not in kinds:
        raise ValueError(f"numpy dtype {text!r} is not one the model file stores")
    return dtype


def _check_attributes(attributes: dict, weights: dict) -> None:
    """The fitted attributes prediction relies on, with their types."""
    required = (
        "classes_",
        "image_shape_",
        "n_features_in_",
        "_model_channels",
        "_normalization_stats",
    )
    missing = [name for name in required if name not in attributes]
    if missing:
        raise ValueError(f"missing fitted attributes {missing}")
    classes = attributes["classes_"]
    if not isinstance(classes, np.ndarray) or classes.ndim != 1 or len(classes) < 2:
        raise ValueError("classes_ must be a 1-D array of at least 2 labels")
    if len(np.unique(classes)) != len(classes):
        raise ValueError("classes_ has repeated labels")
    shape = attributes["image_shape_"]
    if (
        type(shape) is not tuple
        or len(shape) != 3
        or not all(type(s) is int and s > 0 for s in shape)
        or shape[2] not in (1, 3)
    ):
        raise ValueError(f"image_shape_ must be (height, width, 1 or 3); got {shape!r}")
    if attributes["n_features_in_"] != math.prod(shape):
        raise ValueError("n_features_in_ does not match image_shape_")
    channels = attributes["_model_channels"]
    if channels not in (1, 3) or type(channels) is not int:
        raise ValueError(f"_model_channels must be 1 or 3; got {channels!r}")
    stats = attributes["_normalization_stats"]
    if not (
        type(stats) is tuple
        and len(stats) == 2
        and all(type(s) is tuple and len(s) == 3 for s in stats)
        and all(type(v) is float and math.isfinite(v) for s in stats for v in s)
        and all(v > 0 for v in stats[1])
    ):
        raise ValueError(
            "_normalization_stats must be ((3 means), (3 stds > 0)) of floats"
        )
    if weights.get("num_classes") != len(classes):
        raise ValueError(
            f"the network has {weights.get('num_classes')!r} outputs for "
            f"{len(classes)} classes"
        )
    if weights.get("input_channels") != channels:
        raise ValueError("the network's input channels differ from _model_channels")
    if weights.get("file") != WEIGHTS_FILE or weights.get("layout") != "torchvision":
        raise ValueError(f'"weights" must name {WEIGHTS_FILE} in torchvision layout')


def _check_state_dict(
    state_dict: dict, arch: str, weights: dict, weights_path: Path
) -> None:
    """Keys, shapes and dtypes must be those of the architecture, exactly."""
    with torch.device("meta"):
        expected = build_resnet(arch, None, weights["num_classes"], 3).state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} {state_dict[k].dtype} (expected "
        f"{tuple(expected[k].shape)} {expected[k].dtype})"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
        or state_dict[k].dtype != expected[k].dtype
    ]
    problems = [
        f"{len(keys)} {label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for label, keys in (
            ("missing tensors", missing),
            ("unexpected tensors", unexpected),
            ("tensors of the wrong shape or dtype", wrong),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"'{weights_path}' does not fit arch={arch!r} with "
            f"{weights['num_classes']} classes: " + "; ".join(problems)
        )


def _fitted_layout(state_dict: dict, input_channels: int) -> dict:
    """torchvision's layout -> the fitted network's: a grayscale stem refolded."""
    if input_channels == 1:
        state_dict = dict(state_dict)
        # Exact: save_model spread the kernel so that its channels sum back to it.
        state_dict["conv1.weight"] = state_dict["conv1.weight"].sum(dim=1, keepdim=True)
    return state_dict


# -------------------------------------------------------------------- files
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # as readable as a plain open() makes it
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text + "\n")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
