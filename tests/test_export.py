"""export_onnx and ``resnetclf export``: one ONNX file from raw images to
probabilities (a regressor's: values), run by onnxruntime as predict_proba
(predict) runs the estimator.

The files are traced from random ResNet18s fitted for one epoch on 16x16
images (a few seconds each); the parity tests skip without the onnx extra.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from torch import nn

import resnetclf.export as export_module
from conftest import assert_same_state, fitted_state, small_classifier
from resnetclf import DigitSumHead, ResNetFineTuneRegressor, save_model
from resnetclf._deployed import ClassProbabilities, RawImagesToOutputs, TargetValues
from resnetclf.cli import main
from resnetclf.export import export_onnx

RNG = np.random.RandomState(0)
GRAY = RNG.randint(0, 256, size=(24, 16, 16), dtype=np.uint8)
RGB = RNG.randint(0, 256, size=(24, 16, 16, 3), dtype=np.uint8)
# Images the estimators never saw.
NEW_GRAY = RNG.randint(0, 256, size=(7, 16, 16), dtype=np.uint8)
NEW_RGB = RNG.randint(0, 256, size=(7, 16, 16, 3), dtype=np.uint8)


def _fitted(X, y, **params):
    defaults = dict(max_iter=1, batch_size=8, validation_fraction=0, precision="fp32")
    return small_classifier(**{**defaults, **params}).fit(X, y)


@pytest.fixture(scope="module")
def gray_clf():
    return _fitted(GRAY, np.arange(24) % 3)


@pytest.fixture(scope="module")
def rgb_clf():
    return _fitted(RGB, np.array(["cat", "dog"])[np.arange(24) % 2])


# Targets whose mean and spread are far from 0 and 1, so that a graph that
# returned the network's standardised outputs, or mapped them back with the
# mean or the scale alone, would be far from predict.
Y_ONE = 3.0 * GRAY.mean(axis=(1, 2)) + 100.0
Y_TWO = np.stack([Y_ONE, -0.05 * GRAY[:, :8].std(axis=(1, 2)) - 7.0], axis=1)


def _fitted_regressor(y, **params):
    defaults = dict(
        arch="resnet18",
        weights=None,
        max_iter=1,
        batch_size=8,
        validation_fraction=0,
        precision="fp32",
        random_state=0,
        device="cpu",
    )
    return ResNetFineTuneRegressor(**{**defaults, **params}).fit(GRAY, y)


@pytest.fixture(scope="module")
def regressors():
    """Fitted on one output (1-D ``y``) and on two."""
    return {1: _fitted_regressor(Y_ONE), 2: _fitted_regressor(Y_TWO)}


def _session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _as_layout(images: np.ndarray, layout: str) -> np.ndarray:
    """``(N, H, W[, C])`` images in ``layout``."""
    if images.ndim == 3:
        images = images[..., None]
    return {
        "NHW": images[..., 0],
        "NHWC": images,
        "NCHW": images.transpose(0, 3, 1, 2),
        "flat": images.reshape(len(images), -1),
    }[layout]


def _check_parity(clf, path, images: np.ndarray, layout: str, dtype: str):
    X = images if dtype == "uint8" else (images / 255.0).astype(dtype)
    X = _as_layout(X, layout)
    session = _session(path)
    for n in (len(X), 1):  # the batch axis is free
        (proba,) = session.run(None, {"images": X[:n]})
        assert proba.dtype == np.float32 and proba.shape == (n, len(clf.classes_))
        np.testing.assert_allclose(proba, clf.predict_proba(X[:n]), atol=1e-4)


@pytest.mark.parametrize("layout, dtype", [("NHW", "uint8"), ("flat", "float64")])
def test_gray_model_gives_predict_probas(gray_clf, tmp_path, layout, dtype):
    pytest.importorskip("onnxscript")
    before = fitted_state(gray_clf)
    path = export_onnx(
        gray_clf, tmp_path / "m.onnx", input_layout=layout, input_dtype=dtype
    )
    assert_same_state(before, fitted_state(gray_clf))  # exporting changes nothing
    _check_parity(gray_clf, path, NEW_GRAY, layout, dtype)


@pytest.mark.parametrize("layout, dtype", [("auto", "uint8"), ("NCHW", "float32")])
def test_rgb_model_gives_predict_probas_and_names_classes(
    rgb_clf, tmp_path, layout, dtype
):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    path = export_onnx(
        rgb_clf, tmp_path / "m.onnx", input_layout=layout, input_dtype=np.dtype(dtype)
    )
    _check_parity(rgb_clf, path, NEW_RGB, "NHWC" if layout == "auto" else layout, dtype)
    metadata = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(metadata["classes"]) == ["cat", "dog"]
    assert json.loads(metadata["image_shape"]) == [16, 16, 3]
    assert metadata["input_dtype"] == dtype
    assert metadata["output"] == "softmax"


def test_classifier_file_keeps_its_output_and_metadata(gray_clf, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = onnx.load(export_onnx(gray_clf, tmp_path / "m.onnx"))
    assert [o.name for o in model.graph.output] == ["probabilities"]
    dims = model.graph.output[0].type.tensor_type.shape.dim
    assert bool(dims[0].dim_param) and dims[1].dim_value == 3
    metadata = {p.key: p.value for p in model.metadata_props}
    assert list(metadata) == [
        "classes",
        "output",
        "input_layout",
        "input_dtype",
        "image_shape",
        "normalization",
        "producer",
    ]
    assert json.loads(metadata["classes"]) == [0, 1, 2]
    assert metadata["output"] == "softmax"
    assert model.doc_string.startswith("ResNetFineTuneClassifier: images NHW uint8")


@pytest.mark.parametrize(
    "n_outputs, layout, dtype", [(1, "NHW", "uint8"), (2, "flat", "float32")]
)
def test_regressor_file_gives_predict_values(
    regressors, tmp_path, n_outputs, layout, dtype
):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    reg = regressors[n_outputs]
    before = fitted_state(reg)
    path = export_onnx(reg, tmp_path / "m.onnx", input_layout=layout, input_dtype=dtype)
    assert_same_state(before, fitted_state(reg))  # exporting changes nothing
    X = NEW_GRAY if dtype == "uint8" else (NEW_GRAY / 255.0).astype(dtype)
    X = _as_layout(X, layout)
    session = _session(path)
    assert [o.name for o in session.get_outputs()] == ["values"]
    mean, scale = reg._target_mean, reg._target_scale
    for n in (len(X), 1):  # the batch axis is free
        (values,) = session.run(None, {"images": X[:n]})
        expected = reg.predict(X[:n])
        # (n,) for one output, (n, 2) for two: as predict.
        assert values.dtype == np.float32 and values.shape == expected.shape
        np.testing.assert_allclose(values, expected, rtol=1e-5)
        # Standardised again, where the network's own rounding shows.
        np.testing.assert_allclose(
            (values - mean) / scale, (expected - mean) / scale, atol=1e-4
        )
    metadata = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert metadata["output"] == "values"
    assert metadata["n_outputs"] == str(n_outputs)
    assert metadata["input_layout"] == layout and metadata["input_dtype"] == dtype
    assert json.loads(metadata["image_shape"]) == [16, 16, 1]
    assert "classes" not in metadata


def test_the_regressor_module_traced_is_predict(regressors):
    """Without onnx: the torch module the regressor's graph is traced from."""
    for n_outputs, reg in regressors.items():
        mean, std = reg._normalization_stats
        module = RawImagesToOutputs(
            reg.module_,
            "NHW",
            reg.image_shape_,
            1 / 255,
            mean,
            std,
            reg.module_.conv1.in_channels,
            TargetValues(reg._target_mean, reg._target_scale),
        )
        with torch.no_grad():
            values = module(torch.from_numpy(NEW_GRAY)).numpy()
        expected = reg.predict(NEW_GRAY)
        assert values.shape == expected.shape == {1: (7,), 2: (7, 2)}[n_outputs]
        np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_gray_images_under_imagenet_statistics_feed_an_rgb_stem(tmp_path):
    pytest.importorskip("onnxscript")
    clf = _fitted(GRAY, np.arange(24) % 3, normalization="imagenet")
    assert clf.module_.conv1.in_channels == 3
    path = export_onnx(clf, tmp_path / "m.onnx")
    _check_parity(clf, path, NEW_GRAY, "NHW", "uint8")


def test_digit_sum_head_exports(tmp_path):
    pytest.importorskip("onnxscript")
    X = RNG.randint(0, 256, size=(16, 12, 24), dtype=np.uint8)
    clf = _fitted(X, np.arange(16) % 5, head=DigitSumHead(n_digits=2))
    path = export_onnx(clf, tmp_path / "m.onnx")
    new = RNG.randint(0, 256, size=(5, 12, 24), dtype=np.uint8)
    _check_parity(clf, path, new, "NHW", "uint8")


def test_multi_label_model_gives_sigmoid_probabilities(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    Y = np.stack([np.arange(24) % 2, np.arange(24) % 3 == 0], axis=1).astype(int)
    clf = _fitted(GRAY, Y)
    path = export_onnx(clf, tmp_path / "m.onnx")
    _check_parity(clf, path, NEW_GRAY, "NHW", "uint8")
    metadata = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert metadata["output"] == "sigmoid"


def test_the_module_traced_is_predict_proba(gray_clf, rgb_clf):
    """Without onnx: the torch module the graph is traced from."""
    for clf, images in ((gray_clf, NEW_GRAY), (rgb_clf, NEW_RGB)):
        mean, std = clf._normalization_stats
        channels = clf.module_.conv1.in_channels
        for layout in ("NHWC", "NCHW", "flat"):
            module = RawImagesToOutputs(
                clf.module_,
                layout,
                clf.image_shape_,
                1 / 255,
                mean,
                std,
                channels,
                ClassProbabilities(),
            )
            inputs = torch.from_numpy(np.ascontiguousarray(_as_layout(images, layout)))
            with torch.no_grad():
                proba = module(inputs).numpy()
            np.testing.assert_allclose(proba, clf.predict_proba(images), atol=1e-5)


class _BatchAsConstant(nn.Module):
    """A head that reads the batch size with len(), which fixes it in a trace."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.fc(feature_map.mean(dim=(2, 3)).reshape(len(feature_map), -1))


def _batch_as_constant(feature_channels, classes):
    return _BatchAsConstant(feature_channels, len(classes))


def test_refusals_before_the_file_is_touched(gray_clf, rgb_clf, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "ONNX_PACKAGES", ())  # with or without
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(NotFittedError):
        export_onnx(small_classifier(), target)
    with pytest.raises(ValueError, match="is a folder"):
        export_onnx(gray_clf, tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot write the ONNX file"):
        export_onnx(gray_clf, tmp_path / "file" / "m.onnx")
    with pytest.raises(ValueError, match="input_layout"):
        export_onnx(gray_clf, target, input_layout="NWHC")
    with pytest.raises(ValueError, match="'NHW' is for grayscale"):
        export_onnx(rgb_clf, target, input_layout="NHW")
    with pytest.raises(ValueError, match="input_dtype"):
        export_onnx(gray_clf, target, input_dtype="int16")
    with pytest.raises(TypeError, match="Classifier or ResNetFineTuneRegressor"):
        export_onnx(object(), target)
    with pytest.raises(NotFittedError):
        export_onnx(ResNetFineTuneRegressor(), target)
    assert target.read_bytes() == b"old"


def test_a_network_the_exporter_fails_on_is_refused(gray_clf, tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("an operator it does not know\nmore detail")

    monkeypatch.setattr(export_module, "ONNX_PACKAGES", ())  # with or without
    monkeypatch.setattr(export_module.torch.onnx, "export", failing)
    with pytest.raises(ValueError, match="RuntimeError: an operator it does not"):
        export_onnx(gray_clf, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_head_that_fixes_the_batch_size_is_refused(tmp_path):
    pytest.importorskip("onnxscript")
    clf = _fitted(GRAY, np.arange(24) % 3, head=_batch_as_constant)
    with pytest.raises(ValueError, match="free batch"):
        export_onnx(clf, tmp_path / "m.onnx")


def test_missing_onnx_tools_are_named(gray_clf, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "ONNX_PACKAGES", ("no_such_package_here",))
    with pytest.raises(ImportError, match=r"resnetclf\[onnx\]"):
        export_onnx(gray_clf, tmp_path / "m.onnx")


def test_export_command(gray_clf, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    folder = save_model(gray_clf, tmp_path / "model")
    out = tmp_path / "deploy" / "model.onnx"
    argv = ["export", "--model", str(folder), "--out", str(out)]
    assert main([*argv, "--input-dtype", "float32"]) == 0
    assert "images NHW float32 of 16x16 -> probabilities of 3 classes" in (
        capsys.readouterr().out
    )
    _check_parity(gray_clf, out, NEW_GRAY, "NHW", "float32")


def test_export_command_writes_a_saved_regressor(regressors, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    reg = regressors[2]
    folder = save_model(reg, tmp_path / "model")
    out = tmp_path / "regressor.onnx"
    assert main(["export", "--model", str(folder), "--out", str(out)]) == 0
    assert "images NHW uint8 of 16x16 -> values of 2 output(s)" in (
        capsys.readouterr().out
    )
    (values,) = _session(out).run(None, {"images": NEW_GRAY})
    np.testing.assert_allclose(values, reg.predict(NEW_GRAY), rtol=1e-5)


def test_export_command_refuses_in_one_line(gray_clf, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_module, "ONNX_PACKAGES", ())  # with or without
    assert main(["export", "--model", str(tmp_path), "--out", "m.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not load the model" in err
    folder = save_model(gray_clf, tmp_path / "model")
    argv = ["export", "--model", str(folder), "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder" in err
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--input-layout", "NWHC"])
    assert exited.value.code == 2
    capsys.readouterr()
    monkeypatch.setattr(export_module, "ONNX_PACKAGES", ("no_such_package_here",))
    assert main(["export", "--model", str(folder), "--out", "m.onnx"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnetclf[onnx]" in err
