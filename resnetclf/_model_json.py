"""A saved model's settings as plain JSON, and back, with nothing else built.

JSON's own values (null, booleans, integers, finite floats, strings, lists)
are written as they are. Each other type that the parameters and fitted
attributes hold has one form, a JSON object with one key naming the type:
``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}`` (keys need not be
strings), ``{"path": "..."}``, ``{"device": "cuda:0"}``,
``{"torchvision_weights": "ResNet18_Weights.IMAGENET1K_V1"}``,
``{"random_state": [...]}`` (a ``RandomState``'s state) and ``{"head":
["DigitSumHead", {...}]}``; fitted attributes also use ``{"array": [dtype,
[...]]}`` (``classes_``, ``feature_names_in_``) and ``{"float": "nan"}`` (a
diverged loss in ``history_``). A value of any other type (a function, a
scorer, an object of one's own) has no form here and is refused: such an
estimator is kept with pickle. Reading builds only these types.
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
# The heads a file may name, by class name: no other class is looked up.
_HEADS = {"DigitSumHead": DigitSumHead}
_WEIGHTS_NAME = re.compile(r"[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+")
_ARRAY_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248]|U\d{1,4}|O)")
# Far above any model's labels or feature names; a lying file allocates no more.
_MAX_ARRAY_BYTES = 1 << 27
_NON_FINITE = ("nan", "inf", "-inf")
_SCALARS = (bool, int, float, str)


# ----------------------------------------------------------------- writing
def to_json(value, tags: frozenset = FITTED_TAGS):
    """``value`` as JSON, each type JSON lacks in its form among ``tags``.

    Raises
    ------
    TypeError
        For a value with no form among ``tags``, saying what it is.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if type(value) is float and not math.isfinite(value):
        if "float" not in tags:
            raise TypeError(f"{value} is not a finite number")
        return {"float": repr(value)}
    if value is None or type(value) in _SCALARS:
        return value
    if type(value) is list:
        return [to_json(item, tags) for item in value]
    tag, content = _tagged(value, tags)
    if tag not in tags:
        raise TypeError(f"a {type(value).__name__} has no form here")
    return {tag: content}


def _tagged(value, tags: frozenset) -> tuple[str, object]:
    if type(value) is tuple:
        return "tuple", [to_json(item, tags) for item in value]
    if type(value) is dict:
        return "dict", [[to_json(k, tags), to_json(v, tags)] for k, v in value.items()]
    if isinstance(value, Path):
        return "path", str(value)
    if isinstance(value, torch.device):
        return "device", str(value)
    if isinstance(value, WeightsEnum):
        return "torchvision_weights", f"{type(value).__name__}.{value.name}"
    if type(value) is np.random.RandomState:
        algorithm, keys, *rest = value.get_state(legacy=True)
        return "random_state", [algorithm, keys.tolist(), *to_json(rest, tags)]
    if type(value) in _HEADS.values():
        return "head", [type(value).__name__, to_json(value.get_params(), tags)]
    if isinstance(value, np.ndarray) and value.ndim == 1:
        if not _ARRAY_DTYPE.fullmatch(value.dtype.str):
            raise TypeError(f"an array of dtype {value.dtype} has no JSON form")
        return "array", [value.dtype.str, _scalars(value.tolist())]
    raise TypeError(
        f"a {type(value).__module__}.{type(value).__qualname__} has no form in "
        "a model file (numbers, strings, lists, tuples, dicts, paths, devices, "
        "torchvision weights, RandomState and the library's heads only)"
    )


# ----------------------------------------------------------------- reading
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
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is not a finite number")
    return number


def _int64(text: str) -> int:
    # Checked by length first: int() of thousands of digits is slow.
    if len(text) > 20 or not -(2**63) <= int(text) < 2**64:
        raise ValueError(f"an integer of {len(text)} digits is out of the int64 range")
    return int(text)


def from_json(value, tags: frozenset = FITTED_TAGS):
    """The value ``to_json`` wrote; a ValueError (or the TypeError of a
    constructor) for any other JSON, a tag outside ``tags`` included."""
    if value is None or type(value) in _SCALARS:
        return value
    if type(value) is list:
        return [from_json(item, tags) for item in value]
    if len(value) != 1 or next(iter(value)) not in tags:
        raise ValueError(f"unknown type tag in {str(value)[:60]}")
    ((tag, content),) = value.items()
    if tag == "tuple":
        return tuple(from_json(_expect(content, list), tags))
    if tag == "dict":
        pairs = [_expect(pair, list, 2) for pair in _expect(content, list)]
        if not all(type(k) in _SCALARS for k, _ in pairs):
            raise ValueError("a dict's keys must be numbers or strings")
        return {k: from_json(v, tags) for k, v in pairs}
    if tag == "path":
        return Path(_expect(content, str))
    if tag == "device":
        return torch.device(_expect(content, str))
    if tag == "torchvision_weights":
        # Looked up among torchvision's weight enums by name: nothing is imported.
        if not _WEIGHTS_NAME.fullmatch(_expect(content, str)):
            raise ValueError(f"not a torchvision weights name: {content[:60]!r}")
        return torchvision.models.get_weight(content)
    if tag == "random_state":
        algorithm, keys, *rest = _expect(content, list, 5)
        rng = np.random.RandomState()
        rng.set_state((algorithm, np.array(_expect(keys, list), np.uint32), *rest))
        return rng
    if tag == "head":
        name, params = _expect(content, list, 2)
        if type(name) is not str or name not in _HEADS:
            raise ValueError(f"unknown head {str(name)[:60]!r}")
        return _HEADS[name](**_expect(from_json(params, tags), dict))
    if tag == "array":
        dtype, items = _expect(content, list, 2)
        if type(dtype) is not str or not _ARRAY_DTYPE.fullmatch(dtype):
            raise ValueError(f"an array of dtype {str(dtype)[:20]!r} is not allowed")
        items = _scalars(_expect(items, list))
        if len(items) * np.dtype(dtype).itemsize > _MAX_ARRAY_BYTES:
            raise ValueError(f"an array of {len(items)} {dtype} is too large")
        array = np.empty(len(items), dtype=dtype)
        array[:] = items
        # Exactly the values written: no string cut short, no integer wrapped.
        if array.tolist() != items:
            raise ValueError(f"{str(items)[:60]} do not fit dtype {dtype}")
        return array
    # The one tag left: "float".
    if content not in _NON_FINITE:
        raise ValueError(f"{str(content)[:20]!r} is not nan, inf or -inf")
    return float(content)


def _scalars(items: list) -> list:
    """An array's items: bools, integers, finite floats and strings only."""
    if not all(
        type(item) in _SCALARS and (type(item) is not float or math.isfinite(item))
        for item in items
    ):
        raise ValueError("array items must be bools, ints, finite floats or strings")
    return items


def _expect(value, kind: type, length: int | None = None):
    if not isinstance(value, kind) or (length is not None and len(value) != length):
        what = f"{kind.__name__} of {length}" if length else kind.__name__
        raise ValueError(f"expected a {what}, got {str(value)[:40]!r}")
    return value
