"""The CUDA paths, on a CUDA device: skipped cleanly where none is visible.

Their CPU twins (resident batches, autotuning as a no-op, the compile switch)
are tested on every machine in test_images.py and test_estimator.py.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from conftest import small_classifier
from resnetclf import ResNetFineTuneClassifier
from resnetclf._checkpoint import load_state_dict_file
from resnetclf._devices import amp_dtype_for, cudnn_autotuned
from resnetclf._images import ImageBatches, infer_layout

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"
)

CUDA = torch.device("cuda")


def _module_device(clf: ResNetFineTuneClassifier) -> torch.device:
    return next(clf.module_.parameters()).device


def test_auto_device_trains_on_cuda_in_mixed_precision(tiny_images):
    X, y = tiny_images
    clf = small_classifier(device="auto", max_iter=3).fit(X, y)
    assert clf.device_.type == "cuda" and _module_device(clf).type == "cuda"
    assert amp_dtype_for(CUDA, "auto") in (torch.bfloat16, torch.float16)
    assert all(np.isfinite(r["train_loss"]) for r in clf.history_)
    proba = clf.predict_proba(X)
    assert proba.dtype == np.float32 or proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert set(clf.predict(X)) <= set(clf.classes_)


def test_fp16_trains_with_a_grad_scaler(tiny_images):
    X, y = tiny_images
    clf = small_classifier(device="cuda", precision="fp16").fit(X, y)
    assert all(np.isfinite(r["train_loss"]) for r in clf.history_)


def test_cpu_fitted_model_predicts_the_same_on_cuda(tiny_images):
    X, y = tiny_images
    clf = small_classifier(precision="fp32").fit(X, y)
    on_cpu = clf.predict_proba(X)
    on_cuda = clf.set_params(device="cuda").predict_proba(X)
    np.testing.assert_allclose(on_cuda, on_cpu, atol=1e-2)  # TF32 convolutions


def test_cuda_fitted_model_pickles_to_cpu_and_checkpoint_loads_on_cpu(
    tiny_images, tmp_path
):
    X, y = tiny_images
    path = tmp_path / "resnet-step.pth"
    clf = small_classifier(device="cuda", precision="fp32", checkpoint_path=path)
    clf.fit(X, y)
    restored = pickle.loads(pickle.dumps(clf))
    assert _module_device(restored).type == "cpu"
    on_cpu = restored.set_params(device="cpu").predict_proba(X)
    np.testing.assert_allclose(on_cpu, clf.predict_proba(X), atol=1e-2)
    raw = torch.load(path, weights_only=True)  # no map_location needed
    assert all(t.device.type == "cpu" for t in raw.values())
    assert load_state_dict_file(path)["fc.weight"].shape[0] == len(clf.classes_)


@pytest.mark.parametrize("contiguous", [True, False])
def test_batches_on_cuda_equal_cpu_batches(contiguous):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(9, 6, 14), dtype=np.uint8)
    if not contiguous:
        X = X[:, :, ::2]  # a strided view: streamed through pinned memory
    layout = infer_layout(X.shape)
    stats = ((0.5,) * 3, (0.5,) * 3)
    on_cuda = ImageBatches(X, layout, CUDA, *stats, model_channels=1)
    on_cpu = ImageBatches(X, layout, torch.device("cpu"), *stats, model_channels=1)
    indices = np.array([8, 1, 3, 3])
    torch.testing.assert_close(on_cuda.get(indices).cpu(), on_cpu.get(indices))
    assert on_cuda.is_resident == contiguous


def test_cudnn_autotuning_is_scoped_to_the_call(tiny_images):
    X, y = tiny_images
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        with cudnn_autotuned(CUDA):
            assert torch.backends.cudnn.benchmark
        assert not torch.backends.cudnn.benchmark
        small_classifier(device="cuda", max_iter=1).fit(X, y).predict(X)
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("torch_compile", [True, "reduce-overhead"])
def test_torch_compile_on_cuda(tiny_images, torch_compile):
    X, y = tiny_images
    clf = small_classifier(device="cuda", torch_compile=torch_compile, max_iter=2)
    clf.fit(X, y)
    assert all(np.isfinite(r["train_loss"]) for r in clf.history_)
    assert all(0 <= r["val_accuracy"] <= 1 for r in clf.history_)
    assert clf.predict(X).shape == y.shape
