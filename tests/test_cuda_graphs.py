"""The CUDA-graph dispatch, on any machine.

The captures themselves need CUDA and are tested in test_cuda.py; here the
capture functions are replaced by spies, so which pass is graphed, when, and
what happens around a capture are checked on the CPU.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import small_classifier
from resnetclf._acceleration import cuda_graphs as _cuda_graphs
from resnetclf._acceleration.cuda_graphs import (
    MIN_REPLAYS,
    CudaGraphedForward,
    cuda_graphed,
)
from resnetclf._training import autocast_context

CPU = torch.device("cpu")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


class _Spy:
    """Stands in for a capture: records it, then runs the model eagerly."""

    def __init__(self, fail: bool = False) -> None:
        self.captures = 0
        self.replays = 0
        self.fail = fail

    def __call__(self, model, sample):
        self.captures += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")

        def replay(inputs):
            self.replays += 1
            return model(inputs)

        return replay


@pytest.fixture
def spies(monkeypatch):
    training, evaluation = _Spy(), _Spy()
    monkeypatch.setattr(_cuda_graphs, "_capture_training", training)
    monkeypatch.setattr(_cuda_graphs, "_capture_evaluation", evaluation)
    return training, evaluation


def _batch(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 6, 6)


def test_training_pass_is_captured_once_and_replayed(spies):
    training, evaluation = spies
    model = _model().train()
    forward = CudaGraphedForward(model, CPU, batch_size=4)
    for _ in range(3):
        F.cross_entropy(forward(_batch()), torch.zeros(4, dtype=torch.long)).backward()
    assert (training.captures, training.replays) == (1, 3)
    assert evaluation.captures == 0
    assert forward.captured == ["training"]
    assert all(p.grad is not None for p in model.parameters())


def test_evaluation_pass_is_graphed_only_under_inference_mode(spies):
    training, evaluation = spies
    model = _model().eval()
    forward = CudaGraphedForward(model, CPU, batch_size=4)
    with torch.no_grad():
        forward(_batch())  # no_grad is not inference mode: eager
    assert evaluation.captures == 0
    with torch.inference_mode():
        forward(_batch())
        forward(_batch())
    assert (evaluation.captures, evaluation.replays) == (1, 2)
    assert training.captures == 0


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param(_batch(3), id="smaller-last-batch"),
        pytest.param(_batch(4).to(memory_format=torch.channels_last), id="strides"),
        pytest.param(torch.randn(4, 1, 8, 6), id="image-size"),
    ],
)
def test_batches_unlike_the_captured_one_run_eagerly(spies, inputs):
    training, _ = spies
    model = _model().train()
    forward = CudaGraphedForward(model, CPU, batch_size=4)
    forward(_batch())
    out = forward(inputs)
    assert (training.captures, training.replays) == (1, 1)
    assert out.shape == (inputs.shape[0], 3)


def test_training_mode_without_grad_and_other_devices_run_eagerly(spies):
    training, _ = spies
    model = _model().train()
    with torch.no_grad():
        CudaGraphedForward(model, CPU, batch_size=4)(_batch())
    CudaGraphedForward(model, torch.device("meta"), batch_size=4)(_batch())
    assert training.captures == 0


def test_disabled_passes_are_not_captured(spies):
    training, evaluation = spies
    model = _model()
    forward = CudaGraphedForward(model, CPU, 4, training=False, evaluation=False)
    forward(_batch())
    with torch.inference_mode():
        model.eval()
        forward(_batch())
    assert training.captures == evaluation.captures == 0


def test_a_failed_capture_warns_once_and_falls_back_to_eager(monkeypatch):
    failing = _Spy(fail=True)
    monkeypatch.setattr(_cuda_graphs, "_capture_training", failing)
    model = _model().train()
    forward = CudaGraphedForward(model, CPU, batch_size=4)
    with pytest.warns(RuntimeWarning, match="could not capture the training pass"):
        out = forward(_batch())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forward(_batch())
    assert failing.captures == 1
    assert out.shape == (4, 3)
    assert forward.captured == []


def test_release_drops_graphs_and_gradients(spies):
    training, _ = spies
    model = _model().train()
    forward = CudaGraphedForward(model, CPU, batch_size=4)
    forward(_batch()).sum().backward()
    forward.release()
    assert forward.captured == []
    assert all(p.grad is None for p in model.parameters())
    forward(_batch())
    assert training.captures == 1  # no new capture after release


def test_training_capture_leaves_batch_norm_statistics_as_they_were(monkeypatch):
    def fake_make_graphed_callables(module, sample_args):
        for _ in range(3):  # warm-up passes in training mode, as torch's
            module(*sample_args)
        return module

    monkeypatch.setattr(
        torch.cuda, "make_graphed_callables", fake_make_graphed_callables
    )
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graphed = _cuda_graphs._capture_training(model, _batch() * 5 + 3)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert graphed(_batch()).shape == (4, 3)
    assert model.forward.__func__ is type(model).forward  # model untouched


def test_cuda_graphed_yields_forward_unchanged_off_cuda_and_when_not_worth_it():
    model = _model()
    with cuda_graphed(model, model, CPU, 4, MIN_REPLAYS, MIN_REPLAYS) as forward:
        assert forward is model

    def compiled(inputs):
        return model(inputs)

    cuda = torch.device("cuda")
    with cuda_graphed(compiled, model, cuda, 4, MIN_REPLAYS, MIN_REPLAYS) as forward:
        assert forward is compiled
    with cuda_graphed(model, model, cuda, 4, MIN_REPLAYS - 1, 0) as forward:
        assert forward is model


def test_autocast_runs_without_its_cast_cache():
    with autocast_context(CPU, torch.bfloat16):
        assert torch.is_autocast_cache_enabled() is False


def test_fit_and_predict_on_cpu_use_no_graphs(monkeypatch, tiny_images):
    created = []
    original = CudaGraphedForward.__init__

    def spy(self, *args, **kwargs):
        created.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(CudaGraphedForward, "__init__", spy)
    X, y = tiny_images
    clf = small_classifier(batch_size=4, max_iter=1).fit(X, y)
    assert np.isin(clf.predict(X), clf.classes_).all()
    assert created == []
