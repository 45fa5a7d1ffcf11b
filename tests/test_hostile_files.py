"""Hostile files fed to load_model, weights= and ``resnetclf predict --model``.

Each must get a ValueError (the command: a failure status and one line on
stderr) naming the file, without a large allocation and without running code:
the payloads that would run code create a marker file, which must never appear.
"""

from __future__ import annotations

import json
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import model_settings, small_classifier
from resnetclf import load_model, save_model
from resnetclf._checkpoint import (
    load_state_dict_file,
    safetensors_bytes,
    save_state_dict_atomic,
)
from resnetclf._persistence import METADATA_KEY, WEIGHTS_FILE
from resnetclf.cli import main

FEW = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


class _CreatesMarker:
    """Unpickling it opens the marker file for writing: code that must not run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "marker"
    yield path
    assert not path.exists(), "a hostile file ran code"


def _pickle_payload(marker: Path) -> bytes:
    return pickle.dumps({"conv1.weight": _CreatesMarker(marker)})


def _small_file() -> bytes:
    return safetensors_bytes(
        {"a": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(2)}
    )


def _with_header(header, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


INVALID = "is not a valid safetensors file"


def _refused(path: Path, match: str | None = None) -> str:
    with pytest.raises(ValueError, match=match) as error:
        load_state_dict_file(path)
    message = str(error.value)
    assert "\n" not in message and path.name in message
    return message


# ------------------------------------------------------ safetensors headers
@FEW
@given(cut=st.integers(min_value=0, max_value=len(_small_file()) - 1))
def test_a_truncated_safetensors_file_is_refused(tmp_path, cut):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(_small_file()[:cut])
    _refused(path)


@FEW
@given(length=st.integers(min_value=0, max_value=2**64 - 1))
def test_a_lying_header_length_allocates_nothing(tmp_path, length):
    real = _small_file()
    if length == struct.unpack("<Q", real[:8])[0]:
        return
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", length) + real[8:])
    tracemalloc.start()
    try:
        _refused(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # not the 2**64 bytes the header claims


@pytest.mark.parametrize(
    "length", [-1, -(2**63), 2**63, 2**40], ids=["-1", "min-int64", "2^63", "1TB"]
)
def test_a_huge_or_negative_header_length_is_refused(tmp_path, length):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<q" if length < 0 else "<Q", length) + b"{}")
    _refused(path, "is not a valid safetensors file")


@FEW
@given(header=st.binary(max_size=300))
def test_any_header_bytes_give_tensors_or_a_value_error(tmp_path, header, marker):
    path = tmp_path / "random.safetensors"
    path.write_bytes(_with_header(header, _pickle_payload(marker)))
    try:
        loaded = load_state_dict_file(path)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:  # a valid header: tensors, and nothing unpickled
        assert all(isinstance(v, torch.Tensor) for v in loaded.values())


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "I64", "BOOL", "F99", "U8", ""])
        | _json,
        "shape": st.lists(st.integers(-2, 2**40), max_size=4) | _json,
        "data_offsets": st.lists(st.integers(-2, 2**40), max_size=3) | _json,
    }
)


@FEW
@given(entries=st.dictionaries(st.text(max_size=6), _entry | _json, max_size=3))
def test_lying_tensor_entries_give_a_value_error(tmp_path, entries):
    path = tmp_path / "entries.safetensors"
    path.write_bytes(_with_header(entries, bytes(64)))
    try:
        loaded = load_state_dict_file(path)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:  # only entries that exactly tile the 64 bytes get here
        assert sum(v.numel() * v.element_size() for v in loaded.values()) == 64


@pytest.mark.parametrize(
    "header, data, match",
    [
        (b"not json", b"", INVALID),
        (b'{"a": "\xff\xfe"}', b"", INVALID),
        (b"[" * 100_000 + b"]" * 100_000, b"", INVALID),
        (
            json.dumps({"a": {"dtype": "F32"}}).encode()[:-1] + b"[" * 50_000,
            b"",
            INVALID,
        ),
        (b'{"a": NaN}', b"", INVALID),
        ([1, 2], b"", INVALID),
        ({"__metadata__": {"k": [1]}}, b"", INVALID),
        (
            {"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 8]}},
            bytes(8),
            INVALID,
        ),
        (
            {"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 8]}},
            bytes(8),
            INVALID,
        ),
        (
            {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
            bytes(8),
            INVALID,
        ),
        (
            {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
            bytes(8),
            INVALID,
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}},
            bytes(8),
            INVALID,
        ),
        (
            {"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}},
            bytes(8),
            INVALID,
        ),
        (
            {"a": {"dtype": "BOOL", "shape": [8], "data_offsets": [0, 8]}},
            bytes(8),
            "'a' is torch.bool",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}},
            bytes(8),
            INVALID,
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            },
            bytes(8),
            INVALID,
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            bytes(8),
            INVALID,
        ),
    ],
    ids=[
        "not-json",
        "bad-utf-8",
        "deeply-nested",
        "nested-entry",
        "nan",
        "a-list",
        "metadata",
        "shape-vs-bytes",
        "huge-shape",
        "negative-shape",
        "offsets-past-the-end",
        "negative-offset",
        "unknown-dtype",
        "bool-dtype",
        "three-offsets",
        "overlapping",
        "trailing-bytes",
    ],
)
def test_malformed_headers_are_refused(tmp_path, header, data, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_with_header(header, data))
    _refused(path, match)


def test_an_unknown_field_in_an_entry_changes_nothing(tmp_path):
    """safetensors reads a tensor from its dtype, shape and offsets alone."""
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    path = tmp_path / "extra.safetensors"
    data = struct.pack("<2f", 1.5, -2.0)
    for extra in ({"x": 1}, {"dtype_override": "F64", "shape_": [1000]}):
        path.write_bytes(_with_header({"a": {**entry, **extra}}, data))
        assert torch.equal(load_state_dict_file(path)["a"], torch.tensor([1.5, -2.0]))


def test_a_pickle_under_any_name_never_runs(tmp_path, marker, monkeypatch):
    for name in ("evil.safetensors", "evil.pth"):
        path = tmp_path / name
        path.write_bytes(_pickle_payload(marker))
        _refused(path)
    # A torch zip with a code-running object, read on an old torch: refused
    # before torch.load is reached.
    path = tmp_path / "evil.pt"
    torch.save({"w": _CreatesMarker(marker)}, path)
    monkeypatch.setattr(torch, "__version__", "2.9.1")
    _refused(path, "CVE-2025-32434 and CVE-2026-24747.*use .safetensors")


# ----------------------------------------------------------------- weights=
@pytest.fixture(scope="module")
def resnet18_tensors():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).state_dict()


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda sd: sd.pop("layer1.0.conv1.weight"), "missing keys"),
        (lambda sd: sd.update(extra=torch.zeros(2)), "unexpected keys"),
        (lambda sd: sd.update({"fc.bias": torch.zeros(7)}), "shape"),
        (
            lambda sd: sd.update({"bn1.weight": torch.zeros(64, dtype=torch.int8)}),
            "I8|int8",
        ),
    ],
    ids=["missing-key", "extra-key", "wrong-shape", "wrong-dtype"],
)
def test_weights_that_do_not_fit_are_refused_before_training(
    tmp_path, tiny_images, resnet18_tensors, edit, match
):
    state_dict = dict(resnet18_tensors)
    edit(state_dict)
    path = tmp_path / "weights.safetensors"
    path.write_bytes(safetensors_bytes(state_dict))
    X, y = tiny_images
    clf = small_classifier(weights=str(path), max_iter=1)
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")


def test_truncated_weights_are_refused_before_training(
    tmp_path, tiny_images, resnet18_tensors
):
    data = safetensors_bytes(resnet18_tensors)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 3])
    X, y = tiny_images
    with pytest.raises(ValueError, match="cut.safetensors"):
        small_classifier(weights=path).fit(X, y)


def test_safetensors_weights_train_like_the_same_pth(
    tmp_path, tiny_images, resnet18_tensors
):
    X, y = tiny_images
    pth = save_state_dict_atomic(resnet18_tensors, tmp_path / "w.pth")
    safe = save_state_dict_atomic(resnet18_tensors, tmp_path / "w.safetensors")
    a = small_classifier(weights=str(pth), max_iter=1).fit(X, y)
    b = small_classifier(weights=str(safe), max_iter=1).fit(X, y)
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))


# -------------------------------------------------------------- load_model
@pytest.fixture(scope="module")
def saved_folder(fitted, tmp_path_factory):
    return save_model(fitted[0], tmp_path_factory.mktemp("hostile") / "model")


@pytest.fixture(scope="module")
def saved_tensors(saved_folder):
    return load_state_dict_file(saved_folder / WEIGHTS_FILE)


def _folder_with(
    tmp_path: Path, saved_folder: Path, text=None, data=None, tensors=None
) -> Path:
    """A model folder whose file is ``data`` (bytes), or else the saved tensors
    (or ``tensors``) with the settings ``text`` (or the saved ones)."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    if data is None:
        text = json.dumps(_document(saved_folder)) if text is None else text
        if tensors is None:
            tensors = load_state_dict_file(saved_folder / WEIGHTS_FILE)
        data = safetensors_bytes(tensors, {METADATA_KEY: text})
    (folder / WEIGHTS_FILE).write_bytes(data)
    return folder


def _document(saved_folder: Path) -> dict:
    return model_settings(saved_folder)


def _load_refused(folder: Path, match: str | None = None) -> str:
    with pytest.raises(ValueError, match=match) as error:
        load_model(folder)
    assert "\n" not in str(error.value)
    return str(error.value)


def _paths(value, prefix=()):
    """Every place in a JSON document, as key paths."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from _paths(item, (*prefix, index))


@pytest.fixture(scope="module")
def document_paths(saved_folder):
    return [p for p in _paths(_document(saved_folder)) if p]


# JSON that names the format's types, with contents of any shape.
_TAGS = ["tuple", "dict", "path", "device", "torchvision_weights", "random_state"]
_TAGS += ["head", "array", "float", "__reduce__"]
_tagged_json = st.recursive(
    st.none()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["nan", "-inf", "cpu", "meta", "DigitSumHead", "<i8", "|O"])
    | st.sampled_from(["<U3", "ResNet18_Weights.IMAGENET1K_V1", "MT19937", "x.y"]),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(_TAGS), inner, min_size=1, max_size=2)
    ),
    max_leaves=20,
)


@FEW
@given(data=st.data())
def test_any_json_value_anywhere_loads_or_gives_a_value_error(
    tmp_path, saved_folder, saved_tensors, document_paths, data
):
    document = _document(saved_folder)
    where = data.draw(st.sampled_from(document_paths))
    parent = document
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = data.draw(_json | _tagged_json)
    text = json.dumps(document)
    folder = _folder_with(tmp_path, saved_folder, text=text, tensors=saved_tensors)
    try:
        loaded = load_model(folder)
    except ValueError as exc:
        assert "\n" not in str(exc) and WEIGHTS_FILE in str(exc)
    else:  # a value the format allows there (a history entry, say)
        assert len(loaded.classes_) == 3


@pytest.mark.parametrize(
    "old, new, match",
    [
        ('"max_iter": 3', '"max_iter": ' + "9" * 5000, "not plain JSON"),
        ('"max_iter": 3', '"max_iter": ' + "9" * 30, "int64 range"),
        ('"max_iter": 3', '"max_iter": 1e999', "not a finite number"),
        ('"tol": 0.0', '"tol": NaN', "not plain JSON"),
        ('"tol": 0.0', '"tol": -Infinity', "not plain JSON"),
        ('"best_score_": ', '"best_score_": Infinity, "x": ', "not plain JSON"),
        ('"max_iter": 3', '"max_iter": 3, "__class__": "os.system"', "__class__"),
        (
            '"tol": 0.0',
            '"tol": {"__reduce__": ["os.system", ["touch x"]]}',
            "unknown type tag",
        ),
        ('"arch": "resnet18"', '"arch": "/tmp/evil.py"', "arch must be one of"),
        ('"arch": "resnet18"', '"arch": {"path": "/tmp/evil.py"}', "arch"),
        ('"arch": "resnet18"', '"arch": "resnet34"', "do not fit arch='resnet34'"),
        (
            '"versions": ',
            '"weights": {"file": "../../etc/passwd"}, "versions": ',
            "settings must be an object",
        ),
        ('"versions": ', '"loader": "pickle", "versions": ', "settings must be"),
        (
            '"normalization": {"tuple": [0.5, 0.5]}',
            '"normalization": {"tuple": [0.5, 0.5], "mmap": true}',
            "unknown type tag",
        ),
        ('"n_iter_": 3', '"n_iter_": 3, "module_": "x"', "module_"),
        ('"n_iter_": 3', '"n_iter_": -3', "n_iter_"),
        (
            '{"array": ["<i8", [0, 1, 2]]}',
            '{"array": ["<i8", [0, 1, 2]], "pickle": true}',
            "unknown type tag",
        ),
        ('["<i8", [0, 1, 2]]', '["|O", [0, 1, 2]]', ""),
        ('["<i8", [0, 1, 2]]', '["<M8[s]", [0, 1, 2]]', "dtype"),
        ('["<i8", [0, 1, 2]]', '["|u1", [0, 1, 2]]', ""),
        ('["<i8", [0, 1, 2]]', '["<U999", ' + str([0] * 10**6) + "]", "too large"),
        (
            '"estimator": "ResNetFineTuneClassifier"',
            '"estimator": "Pipeline"',
            "estimator must be one of",
        ),
    ],
    ids=[
        "5000-digits",
        "huge-int",
        "1e999",
        "nan",
        "-infinity",
        "infinity",
        "extra-param",
        "reduce-tag",
        "arch-path",
        "arch-tag",
        "arch-lies",
        "weights-elsewhere",
        "extra-top-key",
        "extra-tag-key",
        "module-attribute",
        "negative-count",
        "extra-classes-key",
        "object-classes",
        "date-classes",
        "uint8-classes",
        "huge-classes",
        "another-estimator",
    ],
)
def test_hostile_settings_are_refused(
    tmp_path, saved_folder, saved_tensors, old, new, match
):
    compact = json.dumps(_document(saved_folder))  # one known spacing
    assert old in compact, old
    text = compact.replace(old, new, 1)
    folder = _folder_with(tmp_path, saved_folder, text=text, tensors=saved_tensors)
    if new in ('["|O", [0, 1, 2]]', '["|u1", [0, 1, 2]]'):
        # Labels 0, 1, 2 as objects or uint8 are valid: they load, as those types.
        assert load_model(folder).classes_.dtype == np.dtype(new.split('"')[1])
        return
    message = _load_refused(folder, match)
    assert WEIGHTS_FILE in message


def test_paths_in_parameters_are_never_opened(
    tmp_path, saved_folder, saved_tensors, marker
):
    document = _document(saved_folder)
    document["params"]["weights"] = {"path": str(marker)}
    document["params"]["checkpoint_path"] = str(marker)
    text = json.dumps(document)
    folder = _folder_with(tmp_path, saved_folder, text=text, tensors=saved_tensors)
    loaded = load_model(folder)
    assert loaded.get_params()["weights"] == marker  # kept as a value, not read


@pytest.mark.parametrize(
    "state",
    [
        ["MT19937", [0] * 624, -5, 0, 0.0],
        ["MT19937", [0] * 624, 625, 0, 0.0],
        ["MT19937", [2**32] + [0] * 623, 0, 0, 0.0],
        ["MT19937", [0] * 623, 0, 0, 0.0],
        ["PCG64", [0] * 624, 0, 0, 0.0],
        ["MT19937", [0] * 624, 0, 2, 0.0],
    ],
    ids=["negative-pos", "pos-past-keys", "key-33-bits", "623-keys", "pcg", "gauss"],
)
def test_a_lying_random_state_is_refused(tmp_path, saved_folder, saved_tensors, state):
    """numpy checks little of a state: a position outside the keys would read
    outside them."""
    document = _document(saved_folder)
    document["params"]["random_state"] = {"random_state": state}
    text = json.dumps(document)
    folder = _folder_with(tmp_path, saved_folder, text=text, tensors=saved_tensors)
    _load_refused(folder, "RandomState|MT19937")


def test_a_state_dict_swapped_in_for_the_model_is_refused(
    tmp_path, saved_folder, resnet18_tensors
):
    # The same architecture and class count: only the missing settings tell.
    other = save_state_dict_atomic(resnet18_tensors, tmp_path / "other.safetensors")
    folder = _folder_with(tmp_path, saved_folder, data=other.read_bytes())
    _load_refused(folder, "no resnetclf settings")


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda sd: sd.pop("layer1.0.conv1.weight"),
            r"1 differ, layer1\.0\.conv1\.weight absent",
        ),
        (lambda sd: sd.update(extra=torch.zeros(2)), r"1 differ, extra \(2,\)"),
        (lambda sd: sd.update({"fc.bias": torch.zeros(4)}), r"fc\.bias \(4,\)"),
        (lambda sd: sd.update({"fc.bias": sd["fc.bias"].double()}), "torch.float64"),
    ],
    ids=["missing", "extra", "shape", "dtype"],
)
def test_tensors_that_do_not_fit_the_settings_are_refused(
    tmp_path, saved_folder, saved_tensors, edit, match
):
    state_dict = dict(saved_tensors)
    edit(state_dict)
    folder = _folder_with(tmp_path, saved_folder, tensors=state_dict)
    _load_refused(folder, match)


@settings(FEW, max_examples=12)
@given(cut=st.integers(min_value=0, max_value=20_000) | st.integers(0, 44_000_000))
def test_truncated_model_files_are_refused(tmp_path, saved_folder, cut):
    data = (saved_folder / WEIGHTS_FILE).read_bytes()[:cut]
    folder = _folder_with(tmp_path, saved_folder, data=data)
    _load_refused(folder, "model.safetensors")


# ------------------------------------------------------------ the command
def _predict(tmp_path: Path, folder: Path, capsys) -> tuple[int, str]:
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((2, 12, 20), dtype=np.uint8))
    capsys.readouterr()
    status = main(
        [
            "predict",
            "--model",
            str(folder),
            "--images",
            str(images),
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "case", ["pickle-weights", "lying-header", "bad-json", "swapped", "deep-json"]
)
def test_the_predict_command_refuses_hostile_models_in_one_line(
    tmp_path, saved_folder, resnet18_tensors, marker, capsys, case
):
    if case == "pickle-weights":
        folder = _folder_with(tmp_path, saved_folder, data=_pickle_payload(marker))
    elif case == "lying-header":
        data = struct.pack("<Q", 2**62) + b"{}"
        folder = _folder_with(tmp_path, saved_folder, data=data)
    elif case == "bad-json":
        folder = _folder_with(tmp_path, saved_folder, text='{"format": NaN}')
    elif case == "swapped":
        data = safetensors_bytes(resnet18_tensors)
        folder = _folder_with(tmp_path, saved_folder, data=data)
    else:
        folder = _folder_with(tmp_path, saved_folder, text="[" * 100_000)
    status, err = _predict(tmp_path, folder, capsys)
    # A model the command refuses is a bad --model argument: status 2.
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnetclf: error:"), err
    assert "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def test_the_predict_command_runs_a_sound_model(tmp_path, saved_folder, capsys):
    status, err = _predict(tmp_path, _folder_with(tmp_path, saved_folder), capsys)
    assert status == 0, err
    assert (tmp_path / "p.csv").exists()
