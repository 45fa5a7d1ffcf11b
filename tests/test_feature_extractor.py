"""ResNetFeatureExtractor: a pretrained backbone's pooled features, untrained."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

import resnetclf.feature_extractor as feature_extractor
from conftest import predicting_in_fp32
from resnetclf import ResNetFeatureExtractor, save_model
from resnetclf._backbone import resolve_weights
from resnetclf._images import IMAGENET_STATS

IMAGES = np.random.RandomState(0).randint(0, 256, size=(6, 16, 16), dtype=np.uint8)


def _extractor(**params) -> ResNetFeatureExtractor:
    defaults = dict(arch="resnet18", weights=None, random_state=0, device="cpu")
    defaults.update(params)
    return ResNetFeatureExtractor(**defaults)


@pytest.mark.parametrize(
    "layer, n_features",
    [("layer1", 64), ("layer2", 128), ("layer3", 256), ("layer4", 512)],
)
def test_each_stage_gives_its_channels(layer, n_features):
    extractor = _extractor(layer=layer, precision="fp32").fit(IMAGES)
    features = extractor.transform(IMAGES)
    assert features.shape == (6, n_features) and features.dtype == np.float32
    assert extractor.get_feature_names_out()[-1] == (
        f"resnetfeatureextractor{n_features - 1}"
    )
    # The stages after the one asked for are not kept.
    kept = {name.split(".")[0] for name, _ in extractor.module_.named_parameters()}
    assert max(k for k in kept if k.startswith("layer")) == layer


def test_features_are_the_classifiers_for_its_saved_weights(fitted, tmp_path):
    """Loaded from a fitted classifier's folder, with the statistics it was
    trained with, the extractor's layer4 is the classifier's transform."""
    clf, X, _, _ = fitted
    folder = save_model(clf, tmp_path / "model")
    extractor = _extractor(weights=folder, normalization=(0.5, 0.5), precision="fp32")
    np.testing.assert_allclose(
        extractor.fit(X).transform(X[:5]),
        predicting_in_fp32(clf).transform(X[:5]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_auto_normalization_follows_the_weights():
    extractor = _extractor(normalization="auto")
    named = resolve_weights("resnet18", "DEFAULT")  # nothing is downloaded
    assert extractor._statistics(named) == IMAGENET_STATS
    assert extractor._statistics(None) == ((0.5,) * 3, (0.5,) * 3)
    # Not alike in every channel: grayscale goes through an RGB stem.
    fitted = _extractor(normalization="imagenet").fit(IMAGES)
    assert fitted.module_.conv1.in_channels == 3
    assert _extractor().fit(IMAGES).module_.conv1.in_channels == 1


def test_weights_are_read_in_fit_only(monkeypatch):
    calls = []
    build = feature_extractor.build_resnet

    def counted(*args, **kwargs):
        calls.append(args)
        return build(*args, **kwargs)

    monkeypatch.setattr(feature_extractor, "build_resnet", counted)
    extractor = _extractor().fit(IMAGES)
    first = extractor.transform(IMAGES)
    np.testing.assert_array_equal(first, extractor.transform(IMAGES))
    assert len(calls) == 1


def test_random_state_seeds_random_weights():
    same = [_extractor(random_state=3).fit_transform(IMAGES) for _ in range(2)]
    np.testing.assert_array_equal(*same)
    other = _extractor(random_state=4).fit_transform(IMAGES)
    assert not np.allclose(same[0], other)


def test_refusals_come_before_any_work():
    with pytest.raises(NotFittedError):
        _extractor().transform(IMAGES)
    with pytest.raises(ValueError, match="'layer' parameter"):
        _extractor(layer="layer5").fit(IMAGES)
    with pytest.raises(ValueError, match="arch must be one of"):
        _extractor(arch="vgg16").fit(IMAGES)
    extractor = _extractor().fit(IMAGES)
    with pytest.raises(ValueError, match="fitted on"):
        extractor.transform(IMAGES[:, :8])
    # A refused fit leaves an unfitted extractor unfitted.
    refused = _extractor(image_shape=(3, 3))
    with pytest.raises(ValueError, match="image_shape"):
        refused.fit(IMAGES.reshape(6, -1))
    assert not hasattr(refused, "n_features_in_")


def test_flat_rows_and_set_output():
    pd = pytest.importorskip("pandas")
    rows = IMAGES.reshape(6, -1)
    extractor = _extractor(image_shape=(16, 16)).set_output(transform="pandas")
    frame = extractor.fit_transform(rows)
    assert isinstance(frame, pd.DataFrame) and frame.shape == (6, 512)
    assert frame.columns[0] == "resnetfeatureextractor0"
