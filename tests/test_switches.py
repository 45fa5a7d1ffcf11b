"""resnetclf._switches: each switch turns off the means it names.

The benchmarks measure what each of fit's means is worth by switching it off
here; these tests check that a switch changes what it says and nothing
outlives its block.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetclf._acceleration.conv_weight_grad import uses_gemm_weight_grad
from resnetclf._acceleration.cuda_graphs import cuda_graphed
from resnetclf._acceleration.devices import cudnn_autotuned
from resnetclf._images import model_input_channels, rotate
from resnetclf._param_groups import make_optimizer
from resnetclf._switches import Switches, current, switched

CPU = torch.device("cpu")


def _groups():
    return [
        {"params": [nn.Parameter(torch.zeros(2, 2))], "weight_decay": 1e-4},
        {"params": [nn.Parameter(torch.zeros(2))], "weight_decay": 0.0},
    ]


def test_defaults_are_the_library_and_blocks_restore_them():
    assert current() == Switches()
    with pytest.raises(RuntimeError), switched(fused_optimizer=False):
        assert not current().fused_optimizer
        raise RuntimeError
    assert current() == Switches()
    with pytest.raises(TypeError):
        with switched(no_such_switch=True):
            pass


def test_optimizer_switches():
    assert make_optimizer("adam", _groups(), CPU).defaults["fused"]
    with switched(fused_optimizer=False):
        assert not make_optimizer("adam", _groups(), CPU).defaults["fused"]
    decays = [
        g["weight_decay"] for g in make_optimizer("adam", _groups(), CPU).param_groups
    ]
    assert decays == [1e-4, 0.0]
    with switched(decay_norms_and_biases=True):
        optimizer = make_optimizer("adam", _groups(), CPU)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 1e-4]


def test_rotation_sampling():
    x = torch.rand(2, 1, 12, 20, generator=torch.Generator().manual_seed(0))
    angles = torch.tensor([0.3, -0.2])
    with switched(rotation_sampling="nearest"):
        nearest = rotate(x, angles)
    bilinear = rotate(x, angles)
    # Nearest neighbour only copies pixels (or fills 0); bilinear mixes them.
    assert torch.isin(nearest[nearest > 0], x).all()
    assert not torch.isin(bilinear[bilinear > 0], x).all()


def test_gray_stem_folding():
    assert model_input_channels(1, (0.5,), (0.5,)) == 1
    with switched(fold_gray_stem=False):
        assert model_input_channels(1, (0.5,), (0.5,)) == 3


def test_batched_weight_grads():
    conv = nn.Conv2d(512, 512, 3, padding=1, bias=False)
    small_map = torch.zeros(2, 512, 1, 1)
    assert uses_gemm_weight_grad(conv, small_map)
    with switched(batched_weight_grads=False):
        assert not uses_gemm_weight_grad(conv, small_map)


def test_cudnn_autotune_flag_is_left_alone_when_switched_off():
    # The flag is a plain setting: it can be read without a GPU.
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        with cudnn_autotuned(torch.device("cuda")):
            assert torch.backends.cudnn.benchmark
        with switched(cudnn_autotune=False), cudnn_autotuned(torch.device("cuda")):
            assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = previous


def test_cuda_graphs_switched_off_give_the_plain_forward():
    model = nn.Linear(2, 2)
    with switched(cuda_graphs=False):
        with cuda_graphed(model, model, torch.device("cuda"), 4, 10**6, 10**6) as f:
            assert f is model
