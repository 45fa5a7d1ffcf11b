"""benchmarks/autoencoder.py: a ResNet18 encoder whose file weights= takes."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from resnetclf import ResNetFineTuneClassifier
from resnetclf._backbone import build_resnet
from resnetclf._checkpoint import load_state_dict_file
from resnetclf.datasets import make_digit_sums

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def ae():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("autoencoder")


@pytest.fixture(scope="module")
def trained(ae):
    X, _ = make_digit_sums(16, n_digits=2, image_shape=(16, 40), random_state=0)
    config = ae.AEConfig(n_samples=16, epochs=2, batch_size=8)
    model, history = ae.train_autoencoder(X, config, verbose=False)
    return X, model, history


def test_reconstructs_at_the_image_size(ae, trained):
    X, model, history = trained
    model.eval()
    with torch.no_grad():
        out = model(ae._normalise(X))
    assert out.shape == (16, 1, 16, 40)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["bce"]) for h in history)
    assert model.features(ae._normalise(X[:3])).shape == (3, 512)


def test_encoder_file_is_a_headless_torchvision_resnet18(ae, trained, tmp_path):
    _, model, _ = trained
    path = ae.save_encoder(model, tmp_path / "encoder.safetensors")
    state = load_state_dict_file(path)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    assert set(state) == {k for k in reference if not k.startswith("fc.")}
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    # Folded back to one channel, the stem is the autoencoder's own.
    network = build_resnet("resnet18", path, n_classes=5, in_channels=1)
    torch.testing.assert_close(
        network.conv1.weight, model.encoder.conv1.weight, rtol=0, atol=0
    )
    torch.testing.assert_close(
        network.layer3[0].conv1.weight, model.encoder.layer3[0].conv1.weight
    )
    assert network.fc.out_features == 5


def test_estimator_takes_the_encoder_file(ae, trained, tmp_path):
    X, model, _ = trained
    path = ae.save_encoder(model, tmp_path / "encoder.safetensors")
    y = np.arange(len(X)) % 2
    X = np.concatenate([X, X])
    y = np.concatenate([y, y])
    clf = ResNetFineTuneClassifier(
        arch="resnet18", weights=path, max_iter=1, batch_size=8, device="cpu",
        random_state=0,
    )  # fmt: skip
    clf.fit(X, y)
    assert clf.predict(X).shape == (32,)


def test_pooled_features_from_the_file(ae, trained, tmp_path):
    X, model, _ = trained
    path = ae.save_encoder(model, tmp_path / "encoder.safetensors")
    features = ae.pooled_features(ae.encoder_body(path), X[:5])
    model.eval()
    with torch.no_grad():
        expected = model.features(ae._normalise(X[:5])).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_latent_logistic_chooses_c_on_validation(ae):
    def data(n: int, seed: int):
        return make_digit_sums(n, n_digits=1, image_shape=(16, 16), random_state=seed)

    result = ae.latent_logistic(
        None, data(30, 0), data(20, 1), data(20, 2), seed=0, cs=(0.01, 1.0)
    )
    assert result["C"] in (0.01, 1.0)
    assert set(result["val_accuracy_per_C"]) == {"0.01", "1.0"}
    assert result["val_accuracy"] == max(result["val_accuracy_per_C"].values())
    assert 0 <= result["test_accuracy"] <= 1


def test_random_encoder_is_one_network_for_every_split(ae, monkeypatch):
    built = []
    original = ae.encoder_body
    monkeypatch.setattr(ae, "encoder_body", lambda *a: built.append(a) or original(*a))

    def data(n: int, seed: int):
        return make_digit_sums(n, n_digits=1, image_shape=(16, 16), random_state=seed)

    ae.latent_logistic(None, data(10, 0), data(10, 1), data(10, 2), seed=0)
    assert len(built) == 1
