"""A saved model's settings as plain JSON, and back, building nothing else.

JSON's own values are written as they are. Each other type the parameters
and fitted attributes hold is a one-key object naming it: ``{"tuple": [...]}``,
``{"dict": [[key, value], ...]}``, ``{"path": ...}``, ``{"device": ...}``,
``{"torchvision_weights": "ResNet18_Weights.IMAGENET1K_V1"}``,
``{"random_state": [...]}`` (a ``RandomState``'s state), ``{"head":
["DigitSumHead", {...}]}``; fitted attributes add ``{"array": [dtype, [...]]}``
and ``{"float": "nan"}`` (a diverged loss). Any other value (a function, a
scorer, an object of one's own) is refused: pickle is the way to keep it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models import WeightsEnum

from resnetclf.heads import DigitSumHead

__all__ = ["FITTED_TAGS", "PARAM_TAGS", "from_json", "parse", "to_json"]

PARAM_TAGS = frozenset(
    {"tuple", "dict", "path", "device", "torchvision_weights", "random_state", "head"}
)
FITTED_TAGS = PARAM_TAGS | {"array", "float"}
# The heads a file may name: no other class is looked up.
_HEADS = {"DigitSumHead": DigitSumHead}
_WEIGHTS_NAME = re.compile(r"[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+")
_ARRAY_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248]|U\d{1,4}|O)")
# Far above any model's labels or feature names; a lying file allocates no more.
_MAX_ARRAY_BYTES = 1 << 27
_SCALARS = (bool, int, float, str)


def to_json(value, tags: frozenset):
    """``value`` as JSON, each type JSON lacks as its tag among ``tags``; a
    TypeError or ValueError saying what has no form."""
    if isinstance(value, np.generic):
        value = value.item()
    finite = type(value) is not float or math.isfinite(value)
    if value is None or (type(value) in _SCALARS and finite):
        return value
    if type(value) is list:
        return [to_json(item, tags) for item in value]
    tag, content = _tagged(value)
    if tag not in tags:
        kind = type(value).__name__
        raise TypeError(
            f"{value} is not a finite number"
            if tag == "float"
            else f"a {kind} has no form here (in fitted attributes only)"
        )
    return {tag: to_json(content, tags)}


def _tagged(value) -> tuple[str, object]:
    """The tag of ``value``'s type and what to encode in its place."""
    if type(value) is float:  # not finite
        return "float", repr(value)
    if type(value) is tuple:
        return "tuple", list(value)
    if type(value) is dict:
        return "dict", [list(item) for item in value.items()]
    if isinstance(value, Path):
        return "path", str(value)
    if isinstance(value, torch.device):
        return "device", str(value)
    if isinstance(value, WeightsEnum):
        return "torchvision_weights", f"{type(value).__name__}.{value.name}"
    if type(value) is np.random.RandomState:
        algorithm, keys, *rest = value.get_state(legacy=True)
        return "random_state", [algorithm, keys.tolist(), *rest]
    if type(value) in _HEADS.values():
        return "head", [type(value).__name__, value.get_params()]
    if isinstance(value, np.ndarray) and value.ndim == 1:
        if not _ARRAY_DTYPE.fullmatch(value.dtype.str):
            raise TypeError(f"an array of dtype {value.dtype} has no JSON form")
        return "array", [value.dtype.str, _scalars(value.tolist())]
    raise TypeError(
        f"a {type(value).__module__}.{type(value).__qualname__} has no form in a "
        "model file (numbers, strings, lists, tuples, dicts, paths, devices, "
        "torchvision weights, RandomState and the library's heads only)"
    )


def parse(text: str):
    """Strict JSON: no NaN or Infinity, no number beyond float64 or int64."""
    try:
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_int64,
        )
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not plain JSON ({exc})") from exc


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    if not math.isfinite(float(text)):
        raise ValueError(f"{text[:20]} is not a finite number")
    return float(text)


def _int64(text: str) -> int:
    # By length first: int() of thousands of digits is slow.
    if len(text) > 20 or not -(2**63) <= int(text) < 2**64:
        raise ValueError(f"an integer of {len(text)} digits is out of the int64 range")
    return int(text)


def from_json(value, tags: frozenset):
    """The value ``to_json`` wrote; a ValueError or TypeError for other JSON,
    a tag outside ``tags`` included."""
    if value is None or type(value) in _SCALARS:
        return value
    if type(value) is list:
        return [from_json(item, tags) for item in value]
    if len(value) != 1 or next(iter(value)) not in tags:
        raise ValueError(f"unknown type tag in {str(value)[:60]}")
    ((tag, content),) = value.items()
    # Each constructor refuses content of the wrong kind with a TypeError or
    # ValueError; what its value means is checked by the caller.
    return _DECODERS[tag](from_json(content, tags))


def _weights(name: str) -> WeightsEnum:
    # Looked up among torchvision's weight enums by name: nothing is imported.
    if type(name) is not str or not _WEIGHTS_NAME.fullmatch(name):
        raise ValueError(f"not a torchvision weights name: {str(name)[:60]!r}")
    return torchvision.models.get_weight(name)


def _random_state(state: list) -> np.random.RandomState:
    algorithm, keys, pos, has_gauss, gauss = state
    # numpy checks the algorithm's name only; a position outside the keys
    # would read outside them.
    if not (
        type(keys) is list
        and len(keys) == 624
        and all(type(key) is int and 0 <= key < 2**32 for key in keys)
        and type(pos) is int
        and 0 <= pos <= 624
        and has_gauss in (0, 1)
        and type(gauss) is float
    ):
        raise ValueError("not a RandomState's state (MT19937)")
    rng = np.random.RandomState()
    rng.set_state((algorithm, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    return rng


def _head(entry: list) -> DigitSumHead:
    name, params = entry
    if type(name) is not str or name not in _HEADS:
        raise ValueError(f"unknown head {str(name)[:60]!r}")
    return _HEADS[name](**params)


def _array(entry: list) -> np.ndarray:
    dtype, items = entry
    if type(dtype) is not str or not _ARRAY_DTYPE.fullmatch(dtype):
        raise ValueError(f"an array of dtype {str(dtype)[:20]!r} is not allowed")
    if len(_scalars(items)) * np.dtype(dtype).itemsize > _MAX_ARRAY_BYTES:
        raise ValueError(f"an array of {len(items)} {dtype} is too large")
    array = np.empty(len(items), dtype=dtype)
    array[:] = items
    # Exactly the values written: no string cut short, no integer wrapped.
    if array.tolist() != items:
        raise ValueError(f"{str(items)[:60]} do not fit dtype {dtype}")
    return array


def _scalars(items: list) -> list:
    """An array's items: bools, integers, finite floats and strings only."""
    if type(items) is not list or not all(
        type(i) in _SCALARS and i == i and i not in (math.inf, -math.inf) for i in items
    ):
        raise ValueError("array items must be bools, ints, finite floats or strings")
    return items


_DECODERS = {
    "tuple": tuple,
    "dict": dict,
    "path": Path,
    "device": torch.device,
    "float": float,
    "torchvision_weights": _weights,
    "random_state": _random_state,
    "head": _head,
    "array": _array,
}
