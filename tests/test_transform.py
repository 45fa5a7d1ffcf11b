"""The fitted classifier and regressor as transformers: the pooled
last-stage features."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from conftest import (
    assert_same_state,
    fitted_state,
    predicting_in_fp32,
    small_classifier,
)
from resnetclf import DigitSumHead, ResNetFineTuneRegressor


def _pooled_layer4(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    """torchvision's own path to the head, on images normalised by hand."""
    inputs = torch.from_numpy(X).float().unsqueeze(1) * (2 / 255) - 1
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(inputs))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return torch.flatten(model.avgpool(x), 1).numpy()


def test_transform_gives_the_pooled_last_stage(fitted):
    clf, X, _, _ = fitted
    features = predicting_in_fp32(clf).transform(X[:5])
    assert features.shape == (5, 512) and features.dtype == np.float32
    np.testing.assert_allclose(
        features, _pooled_layer4(clf.module_, X[:5]), rtol=1e-4, atol=1e-5
    )
    # The head's input: the linear head applied to them gives the logits.
    logits = features @ clf.module_.fc.weight.detach().numpy().T
    logits += clf.module_.fc.bias.detach().numpy()
    proba = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    np.testing.assert_allclose(
        proba, predicting_in_fp32(clf).predict_proba(X[:5]), atol=1e-5
    )


def test_transform_names_its_columns_and_changes_nothing(fitted):
    clf, X, _, _ = fitted
    before = fitted_state(clf)
    clf.transform(X[:3])
    names = clf.get_feature_names_out()
    assert names.shape == (512,)
    assert names[0] == "resnetfinetuneclassifier0"
    assert_same_state(before, fitted_state(clf))


def test_transform_reads_any_head_at_the_last_stage():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(16, 12, 24), dtype=np.uint8)
    y = np.arange(16) % 3
    clf = small_classifier(
        head=DigitSumHead(n_digits=2), max_iter=1, validation_fraction=0
    )
    clf.fit(X, y)
    features = predicting_in_fp32(clf).transform(X[:4])
    assert features.shape == (4, 512)
    np.testing.assert_allclose(
        features, _pooled_layer4(clf.module_, X[:4]), rtol=1e-4, atol=1e-5
    )


def test_transform_checks_images_as_predict_does(fitted):
    clf, X, _, _ = fitted
    with pytest.raises(NotFittedError):
        small_classifier().transform(X)
    with pytest.raises(ValueError, match="fitted on"):
        clf.transform(X[:, :, :10])


def test_a_frozen_classifier_is_a_pipeline_step_that_is_not_refitted(fitted):
    clf, X, y, _ = fitted
    before = fitted_state(clf)
    pipeline = make_pipeline(FrozenEstimator(clf), LogisticRegression(max_iter=200))
    pipeline.fit(X[:36], y[:36])
    assert pipeline.predict(X[36:]).shape == (12,)
    assert_same_state(before, fitted_state(clf))


def test_set_output_pandas_names_the_columns(fitted):
    pd = pytest.importorskip("pandas")
    clf, X, _, _ = fitted
    # A copy: set_output reaches through FrozenEstimator to the classifier.
    frozen = FrozenEstimator(copy.deepcopy(clf))
    frame = make_pipeline(frozen).set_output(transform="pandas").transform(X[:2])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(clf.get_feature_names_out())


# ------------------------------------------------------------------ regressor
@pytest.fixture(scope="module")
def regressor_fit(tiny_images):
    """A regressor fitted on two outputs, and its images; read only."""
    X, _ = tiny_images
    y = np.stack([X.mean(axis=(1, 2)) * 3 + 100, X[:, :6].std(axis=(1, 2))], axis=1)
    reg = ResNetFineTuneRegressor(
        arch="resnet18",
        weights=None,
        max_iter=1,
        batch_size=16,
        random_state=0,
        device="cpu",
        validation_fraction=0,
    )
    return reg.fit(X, y), X


def test_regressor_transform_gives_what_its_head_reads(regressor_fit):
    reg, X = regressor_fit
    fp32 = copy.copy(reg).set_params(precision="fp32")
    features = fp32.transform(X[:5])
    assert features.shape == (5, 512) and features.dtype == np.float32
    np.testing.assert_allclose(
        features, _pooled_layer4(reg.module_, X[:5]), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(features, fp32.transform(X[:5]))  # repeatable
    # The linear head on them gives the standardised outputs predict maps back.
    outputs = features @ reg.module_.fc.weight.detach().numpy().T
    outputs += reg.module_.fc.bias.detach().numpy()
    values = outputs.astype(np.float64) * reg._target_scale + reg._target_mean
    np.testing.assert_allclose(values, fp32.predict(X[:5]), rtol=1e-5)


def test_regressor_names_its_columns_and_transform_changes_nothing(regressor_fit):
    reg, X = regressor_fit
    before = fitted_state(reg)
    reg.transform(X[:3])
    names = reg.get_feature_names_out()
    assert names.shape == (512,)
    assert names[0] == "resnetfinetuneregressor0"
    assert_same_state(before, fitted_state(reg))
    assert reg.__sklearn_tags__().transformer_tags.preserves_dtype == ["float32"]


def test_regressor_fit_transform_fits_then_transforms(tiny_images):
    X, _ = tiny_images
    y = X.mean(axis=(1, 2))
    params = dict(arch="resnet18", weights=None, max_iter=1, batch_size=16)
    params.update(random_state=0, device="cpu", precision="fp32")
    features = ResNetFineTuneRegressor(**params).fit_transform(X, y)
    reg = ResNetFineTuneRegressor(**params).fit(X, y)
    assert features.shape == (len(X), 512)
    np.testing.assert_allclose(features, reg.transform(X), rtol=1e-5, atol=1e-6)
    with pytest.raises(NotFittedError):
        ResNetFineTuneRegressor().transform(X)


def test_regressor_set_output_pandas_names_the_columns(regressor_fit):
    pd = pytest.importorskip("pandas")
    reg, X = regressor_fit
    frame = copy.deepcopy(reg).set_output(transform="pandas").transform(X[:2])
    assert isinstance(frame, pd.DataFrame) and frame.shape == (2, 512)
    assert list(frame.columns) == list(reg.get_feature_names_out())
