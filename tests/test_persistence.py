"""save_model / load_model: exact round trips, and files that never run code."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import safetensors.torch
import torch
import torchvision
from sklearn.exceptions import NotFittedError

from conftest import model_settings, rewrite_model, small_classifier
from resnetclf import (
    ResNetFineTuneClassifier,
    ResNetFineTuneRegressor,
    load_model,
    save_model,
)
from resnetclf._checkpoint import save_state_dict_atomic
from resnetclf._persistence import METADATA_KEY, WEIGHTS_FILE


def _roundtrip(clf, folder: Path) -> ResNetFineTuneClassifier:
    return load_model(save_model(clf, folder))


def _same_value(a, b) -> bool:
    """Equal, and of the same types all the way down (tuples stay tuples)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same_value, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, np.random.RandomState):
        return _same_value(a.get_state(legacy=True), b.get_state(legacy=True))
    if isinstance(a, float) and np.isnan(a):
        return np.isnan(b)
    return a == b


def _check_same_estimator(loaded, clf) -> None:
    saved_params, loaded_params = clf.get_params(), loaded.get_params()
    for name, value in saved_params.items():
        assert _same_value(loaded_params[name], value), name
    for name, value in vars(clf).items():
        if name != "module_":
            assert _same_value(vars(loaded)[name], value), name


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    clf, X, y, _ = fitted
    folder = save_model(clf, tmp_path_factory.mktemp("saved") / "model")
    return clf, X, folder


def test_roundtrip_predicts_identically_and_keeps_everything(saved):
    clf, X, folder = saved
    assert [p.name for p in folder.iterdir()] == [WEIGHTS_FILE]
    loaded = load_model(folder)
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert np.array_equal(loaded.predict(X), clf.predict(X))
    assert loaded.score(X, fitted_labels(X, clf)) == clf.score(X, fitted_labels(X, clf))
    _check_same_estimator(loaded, clf)
    assert loaded.classes_.dtype == clf.classes_.dtype
    assert loaded.history_ == clf.history_
    # Every tensor of the network, bit for bit (the folded stem refolded).
    expected = clf.module_.state_dict()
    for key, value in loaded.module_.state_dict().items():
        assert value.dtype == expected[key].dtype and torch.equal(value, expected[key])


def fitted_labels(X, clf):
    return clf.classes_[np.arange(len(X)) % len(clf.classes_)]


def test_loading_never_unpickles(saved, monkeypatch):
    clf, X, folder = saved

    def refuse(*args, **kwargs):
        raise AssertionError("load_model must not unpickle anything")

    for module, name in [
        (torch, "load"),
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
    ]:
        monkeypatch.setattr(module, name, refuse)
    loaded = load_model(folder)
    monkeypatch.undo()
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_a_loaded_model_trains_on(saved, tiny_images):
    """Its tensors are its own (not views of read-only file bytes)."""
    clf, _, folder = saved
    X, y = tiny_images
    loaded = load_model(folder).set_params(
        warm_start=True, max_iter=1, validation_fraction=0.0, checkpoint_path=None
    )
    before = loaded.module_.fc.weight.detach().clone()
    loaded.fit(X, y)  # without validation the last epoch is kept
    assert loaded.n_iter_ == clf.n_iter_ + 1
    assert not torch.equal(loaded.module_.fc.weight, before)
    assert np.array_equal(load_model(folder).predict_proba(X), clf.predict_proba(X))


def test_weights_load_into_torchvision_as_they_are(saved):
    clf, X, folder = saved
    state_dict = safetensors.torch.load_file(folder / WEIGHTS_FILE)
    model = torchvision.models.resnet18(num_classes=len(clf.classes_))
    model.load_state_dict(state_dict)  # strict: every key, every shape
    # The gray stem spread over RGB computes the same on channel-repeated input.
    images = (torch.from_numpy(X[:4]).float() / 255 - 0.5) / 0.5
    gray = images.unsqueeze(1)
    with torch.no_grad():
        expected = clf.module_.to("cpu").eval()(gray)
        got = model.eval()(gray.repeat(1, 3, 1, 1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_metadata_says_what_it_holds(saved):
    clf, _, folder = saved
    with safetensors.safe_open(folder / WEIGHTS_FILE, "pt") as file:
        assert set(file.metadata()) == {"format", METADATA_KEY}
        assert file.metadata()["format"] == "pt"
    document = model_settings(folder)
    assert set(document) == {"estimator", "versions", "params", "fitted"}
    assert document["estimator"] == "ResNetFineTuneClassifier"
    assert document["versions"]["torch"] == torch.__version__
    assert document["params"]["arch"] == "resnet18"
    assert document["params"]["normalization"] == {"tuple": [0.5, 0.5]}
    assert document["fitted"]["best_epoch_"] == clf.best_epoch_
    assert document["fitted"]["classes_"] == {"array": ["<i8", [0, 1, 2]]}
    assert document["fitted"]["_model_channels"] == 1
    assert set(clf.get_params()) == set(document["params"])
    assert set(document["fitted"]) == set(vars(clf)) - set(clf.get_params()) - {
        "module_"
    }


def test_rgb_bool_labels_and_unusual_parameters_roundtrip(tmp_path):
    rng = np.random.RandomState(1)
    X = rng.rand(16, 10, 14, 3).astype(np.float32)  # NHWC floats in [0, 1]
    y = np.arange(16) % 2 == 0
    clf = small_classifier(
        max_iter=1,
        batch_size=8,
        normalization="imagenet",  # per-channel statistics: a 3-channel stem
        layer_lr_decay={"fc": 1e-3, "layer4": 5e-4},  # a dict parameter
        random_state=np.random.RandomState(0),
        checkpoint_path=tmp_path / "ckpt.pth",  # a Path, not a str
        device=torch.device("cpu"),
        validation_fraction=0.0,
    ).fit(X, y)
    loaded = _roundtrip(clf, tmp_path / "model")
    assert loaded.classes_.dtype == np.bool_
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    _check_same_estimator(loaded, clf)


@pytest.mark.parametrize(
    "labels",
    [
        np.array([3, 7, 11]),
        np.array([-1, 0, 1], dtype=np.int8),
        np.array(["cat", "dog", "owl"]),
        np.array([0.5, 1.0, 2.5]),
        np.array([0.5, 1.0, 2.5], dtype=np.float32),
        np.array(["a", "b", "c"], dtype=object),
    ],
    ids=["int64", "int8", "str", "float", "float32", "object"],
)
def test_labels_keep_their_dtype(fitted, tmp_path, labels):
    clf = copy.deepcopy(fitted[0])
    clf.classes_ = labels
    loaded = _roundtrip(clf, tmp_path / "model")
    assert loaded.classes_.dtype == labels.dtype
    assert _same_value(loaded.classes_, labels)
    assert np.array_equal(loaded.predict(fitted[1]), clf.predict(fitted[1]))


def test_the_schema_keeps_feature_names_and_odd_history_only(fitted, tmp_path):
    clf = copy.deepcopy(fitted[0])
    clf.feature_names_in_ = np.array([f"p{i}" for i in range(240)], dtype=object)
    clf.history_ = [
        dict(r, val_loss=float("nan"), train_loss=float("inf"), val_score=None)
        for r in clf.history_
    ]
    clf.best_score_ = float("-inf")
    clf.notes_ = {"sizes": (1, 2)}  # not a fitted attribute the schema holds
    loaded = _roundtrip(clf, tmp_path / "model")
    del clf.notes_
    _check_same_estimator(loaded, clf)
    assert not hasattr(loaded, "notes_")
    assert loaded.feature_names_in_.dtype == object


@pytest.mark.parametrize(
    "change, what",
    [
        (lambda c: c.set_params(arch=lambda **kw: None), "parameter 'arch'"),
        (lambda c: c.set_params(scoring=lambda *a: 0.0), "parameter 'scoring'"),
        (lambda c: c.set_params(tol=float("inf")), "parameter 'tol'.*finite"),
        (lambda c: c.set_params(class_weight={object(): 1.0}), "class_weight"),
        (lambda c: c.set_params(random_state=np.random.default_rng(0)), "Generator"),
        (lambda c: setattr(c, "classes_", np.array([b"x", b"y"])), "dtype"),
        (lambda c: setattr(c, "classes_", np.array([0, 1, np.inf])), "finite"),
    ],
    ids=[
        "callable-arch",
        "callable-scoring",
        "non-finite",
        "object-key",
        "generator",
        "bytes-classes",
        "inf-classes",
    ],
)
def test_what_json_cannot_hold_is_refused_before_writing(
    fitted, tmp_path, change, what
):
    clf = copy.deepcopy(fitted[0])
    change(clf)
    with pytest.raises(ValueError, match=what) as error:
        save_model(clf, tmp_path / "model")
    assert "pickle or joblib" in str(error.value)
    assert not (tmp_path / "model").exists()


def test_save_refuses_unfitted_foreign_and_file_targets(fitted, tmp_path):
    with pytest.raises(NotFittedError):
        save_model(small_classifier(), tmp_path / "a")
    with pytest.raises(TypeError, match="ResNetFineTuneRegressor"):
        save_model(object(), tmp_path / "b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        save_model(fitted[0], tmp_path / "file")


def test_the_file_alone_loads_and_is_a_weights_source(saved, tmp_path, tiny_images):
    """One file is the whole model: copied anywhere, it loads, and weights=
    reads it (or its folder) as a plain state dict."""
    clf, X, folder = saved
    alone = tmp_path / "anywhere.safetensors"
    alone.write_bytes((folder / WEIGHTS_FILE).read_bytes())
    assert np.array_equal(load_model(alone).predict_proba(X), clf.predict_proba(X))
    X_fit, y_fit = tiny_images
    for weights in (alone, folder):
        refit = small_classifier(weights=weights, max_iter=1).fit(X_fit, y_fit)
        assert refit.module_.fc.out_features == 3


def test_pickle_and_joblib_still_work(fitted, tmp_path):
    clf, X, *_ = fitted
    expected = clf.predict_proba(X)
    assert np.array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), expected)
    joblib.dump(clf, tmp_path / "clf.joblib")
    assert np.array_equal(
        joblib.load(tmp_path / "clf.joblib").predict_proba(X), expected
    )


# ---------------------------------------------------------- foreign files
@pytest.fixture
def copy_of_saved(saved, tmp_path):
    """A folder of its own to tamper with."""
    _, _, folder = saved
    target = tmp_path / "model"
    target.mkdir()
    (target / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes())
    return target


def _edit_settings(folder: Path, edit) -> None:
    """What anyone who can write the file can do: change its settings."""
    document = model_settings(folder)
    edit(document)
    rewrite_model(folder, document)


class _OpensAFile:
    """Unpickling it calls open(marker, "w"): code a model file must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("target", ["folder", "file"])
def test_a_pickle_with_code_never_runs(copy_of_saved, tmp_path, target):
    marker = tmp_path / "marker"
    weights = copy_of_saved / WEIGHTS_FILE
    with open(weights, "wb") as file:  # a pickle under the safetensors name
        torch.save({"conv1.weight": _OpensAFile(marker)}, file)
    # The file does run code when unpickled without weights_only.
    with open(weights, "rb") as file:
        torch.load(file, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match="is not a valid safetensors file"):
        load_model(copy_of_saved if target == "folder" else weights)
    assert not marker.exists()


def test_other_files_in_the_folder_are_never_read(copy_of_saved, tmp_path):
    marker = tmp_path / "marker"
    (copy_of_saved / WEIGHTS_FILE).unlink()
    torch.save({"conv1.weight": _OpensAFile(marker)}, copy_of_saved / "weights.pth")
    (copy_of_saved / "estimator.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_model(copy_of_saved)
    assert not marker.exists()


def test_a_plain_state_dict_is_refused(copy_of_saved):
    # The same network, tensors only: what save_state_dict_atomic writes.
    tensors = safetensors.torch.load_file(copy_of_saved / WEIGHTS_FILE)
    save_state_dict_atomic(tensors, copy_of_saved / WEIGHTS_FILE)
    with pytest.raises(ValueError, match="no resnetclf settings in its metadata"):
        load_model(copy_of_saved)


def test_weights_of_another_network_are_refused(copy_of_saved):
    other = torchvision.models.resnet18(num_classes=5).state_dict()
    rewrite_model(copy_of_saved, tensors=other)
    with pytest.raises(ValueError, match=r"safetensors' .*do not fit.*fc\.weight"):
        load_model(copy_of_saved)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(format="sklearn-onnx"), "settings must be an object"),
        (lambda d: d.pop("versions"), "settings must be an object"),
        (lambda d: d.update(estimator="MLPClassifier"), "estimator must be one of"),
        (
            lambda d: d.update(estimator="ResNetFineTuneRegressor"),
            r"params: unknown \['class_weight', 'label_smoothing'\]",
        ),
        (lambda d: d["params"].update(max_iter="many"), "max_iter"),
        (lambda d: d["params"].update(new_knob=1), "new_knob"),
        (lambda d: d["fitted"].update(predict="x"), "predict"),
        (lambda d: d["fitted"].update(arch_="x", weights="y"), "weights"),
        (lambda d: d["params"].update(tol={"__eval__": "1"}), "__eval__"),
        (lambda d: d["fitted"].pop("classes_"), "classes_"),
        (
            lambda d: d["fitted"].update(classes_={"array": ["<i8", [0, 1, 2, 3]]}),
            "4 outputs",
        ),
        (
            lambda d: d["fitted"].update(classes_={"array": ["|V8", [0, 1, 2]]}),
            "dtype",
        ),
        (lambda d: d["fitted"].update(n_iter_="3"), r"wrong type.*n_iter_"),
        (
            lambda d: d["fitted"].update(
                image_shape_={"tuple": [12, 20, 3]}, n_features_in_=720
            ),
            "channels disagree with _model_channels",
        ),
        (
            lambda d: d["fitted"].update(image_shape_={"tuple": [12, 21, 1]}),
            "n_features_in_ disagrees",
        ),
    ],
    ids=[
        "extra-key",
        "missing-key",
        "estimator",
        "another-estimator",
        "param-type",
        "param-unknown",
        "method-name",
        "param-as-attribute",
        "unknown-tag",
        "no-classes",
        "classes-vs-head",
        "odd-dtype",
        "fitted-type",
        "rgb-but-one-channel",
        "shape-vs-features",
    ],
)
def test_tampered_settings_are_refused(copy_of_saved, edit, match):
    _edit_settings(copy_of_saved, edit)
    with pytest.raises(ValueError, match=match):
        load_model(copy_of_saved)


@pytest.mark.parametrize("name", ["input_size_", "_tta_flips", "_multi_label"])
def test_every_attribute_a_fit_sets_is_required(copy_of_saved, name):
    # Every fit records these; a file without one was not written by save_model.
    _edit_settings(copy_of_saved, lambda d: d["fitted"].pop(name))
    with pytest.raises(ValueError, match=rf"missing \['{name}'\]"):
        load_model(copy_of_saved)


@pytest.mark.parametrize("text", ["not json {", "", "[1, 2]", '{"format": NaN}'])
def test_garbage_settings_are_refused(copy_of_saved, text):
    rewrite_model(copy_of_saved, text)
    with pytest.raises(ValueError, match="model.safetensors' is not a valid model"):
        load_model(copy_of_saved)


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, None])
def test_missing_files_are_named(copy_of_saved, missing):
    folder = copy_of_saved
    if missing is None:
        folder = folder / "nowhere"
    else:
        (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_model(folder)


def test_a_fit_with_the_accuracy_methods_roundtrips(tiny_images, tmp_path):
    X, y = tiny_images
    clf = small_classifier(
        max_iter=2,
        class_weight={0: 2.0, 2: 0.5},
        scoring="neg_log_loss",
        freeze_epochs=1,
        label_smoothing=0.1,
        ema_decay=0.9,
        lora_rank=2,
    ).fit(X, y)
    loaded = _roundtrip(clf, tmp_path / "model")
    _check_same_estimator(loaded, clf)
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_a_multi_label_fit_roundtrips(tiny_images, tmp_path):
    X, y = tiny_images
    indicator = np.stack([y == 0, y != 1, y == 2], axis=1).astype(int)
    clf = small_classifier(max_iter=1).fit(X, indicator)
    loaded = _roundtrip(clf, tmp_path / "model")
    assert loaded._multi_label is True
    _check_same_estimator(loaded, clf)
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert np.array_equal(loaded.predict(X), clf.predict(X))


def test_a_regressor_roundtrips_and_its_standardisation_is_checked(
    tiny_images, tmp_path
):
    X, y = tiny_images
    values = np.c_[y * 10.0 + 3.0, -y]
    reg = ResNetFineTuneRegressor(
        arch="resnet18", weights=None, max_iter=1, batch_size=16, random_state=0
    ).fit(X, values)
    loaded = _roundtrip(reg, tmp_path / "model")
    assert type(loaded) is ResNetFineTuneRegressor
    _check_same_estimator(loaded, reg)
    assert np.array_equal(loaded.predict(X), reg.predict(X))
    _edit_settings(
        tmp_path / "model",
        lambda d: d["fitted"].update(_target_scale=d["fitted"]["_target_mean"]),
    )
    with pytest.raises(ValueError, match="_target_scale"):
        load_model(tmp_path / "model")
