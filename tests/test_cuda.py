"""The CUDA paths, on a CUDA device: skipped cleanly where none is visible.

Their CPU twins (resident batches, autotuning as a no-op, the compile switch)
are tested on every machine in test_images.py and test_estimator.py.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import small_classifier
from resnetclf import ResNetFineTuneClassifier
from resnetclf._acceleration import cuda_graphs as _cuda_graphs
from resnetclf._acceleration.cuda_graphs import CudaGraphedForward
from resnetclf._acceleration.devices import amp_dtype_for, cudnn_autotuned
from resnetclf._backbone import build_resnet
from resnetclf._checkpoint import load_state_dict_file
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
    assert proba.dtype == np.float64  # softmax of the logits in float64
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


# ------------------------------------------------------------------ CUDA graphs
def _graph_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_resnet("resnet18", None, n_classes=5, in_channels=1)
    return model.to(CUDA, memory_format=torch.channels_last)


def test_graphed_training_step_matches_the_eager_step():
    eager, graphed_model = _graph_model(), _graph_model()
    inputs = torch.randn(8, 1, 24, 32, device=CUDA).contiguous(
        memory_format=torch.channels_last
    )
    targets = torch.arange(8, device=CUDA) % 5
    forward = CudaGraphedForward(graphed_model, torch.device("cuda", 0), 8)
    # Graph and eager launch the same kernels: only their order may differ.
    losses = []
    for model, call in ((eager, eager), (graphed_model, forward)):
        model.train()
        for _ in range(2):  # the second graphed call is a pure replay
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(call(inputs), targets)
            loss.backward()
        losses.append(loss.detach())
    assert forward.captured == ["training"]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for p_eager, p_graphed in zip(eager.parameters(), graphed_model.parameters()):
        torch.testing.assert_close(p_graphed.grad, p_eager.grad, rtol=1e-3, atol=1e-5)
    # Two steps' worth of batch-norm statistics: the capture's warm-up left none.
    for b_eager, b_graphed in zip(eager.buffers(), graphed_model.buffers()):
        torch.testing.assert_close(b_graphed, b_eager, rtol=1e-4, atol=1e-6)
    eager.eval()
    graphed_model.eval()
    with torch.inference_mode():
        expected = eager(inputs)
        forward(inputs)
        torch.testing.assert_close(forward(inputs), expected, rtol=1e-4, atol=1e-5)
    assert forward.captured == ["evaluation", "training"]
    forward.release()
    assert all(p.grad is None for p in graphed_model.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_fit_and_predict_replay_cuda_graphs(tiny_images, monkeypatch, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    captured = []
    release = CudaGraphedForward.release

    def spy(self):
        captured.append(self.captured)
        release(self)

    monkeypatch.setattr(CudaGraphedForward, "release", spy)
    X, y = tiny_images
    X_predict = np.concatenate([X, X])
    params = dict(device="cuda", precision=precision, batch_size=2, max_iter=2)
    graphed = small_classifier(**params).fit(X, y)
    # 21 full training batches an epoch over 2 epochs, 48 to predict; the
    # validation part is too small to be worth a graph.
    assert captured == [["training"]]
    proba = graphed.predict_proba(X_predict)
    assert captured[-1] == ["evaluation"]
    assert all(np.isfinite(r["train_loss"]) for r in graphed.history_)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)

    monkeypatch.setattr(_cuda_graphs, "MIN_REPLAYS", 10**9)
    eager = small_classifier(**params).fit(X, y)
    assert len(captured) == 2  # nothing graphed, nothing released
    np.testing.assert_allclose(
        graphed.history_[0]["train_loss"], eager.history_[0]["train_loss"], rtol=0.05
    )
    atol = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(graphed.predict_proba(X_predict), proba, atol=atol)


def test_predict_on_the_cpu_leaves_a_cuda_fitted_model_on_cuda(tiny_images):
    X, y = tiny_images
    clf = small_classifier(device="cuda", precision="fp32", warm_start=True)
    clf.fit(X, y)
    on_cuda = clf.predict_proba(X)
    module = clf.module_
    on_cpu = clf.set_params(device="cpu").predict_proba(X)
    np.testing.assert_allclose(on_cpu, on_cuda, atol=1e-2)  # TF32 convolutions
    assert clf.module_ is module and _module_device(clf).type == "cuda"
    assert clf.device_.type == "cuda"
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(restored.predict_proba(X), on_cpu, atol=1e-5)
    clf.set_params(device="cuda").fit(X, y)  # warm start on the kept network
    assert clf.module_ is module and clf.n_iter_ == 4
