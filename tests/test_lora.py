"""Low-rank adapters: frozen base, trainable factors, merge back to torchvision."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from resnetclf._acceleration.bn_folding import folded_for_inference
from resnetclf._acceleration.conv_weight_grad import gemm_weight_grads
from resnetclf._backbone import build_resnet, to_torchvision_layout
from resnetclf._lora import (
    add_lora_adapters,
    count_trainable_parameters,
    has_lora_adapters,
    merge_lora_adapters,
    merged_state_dict,
)
from resnetclf._param_groups import (
    STAGES,
    StageParamGroups,
    freeze_stages,
    parametrized_originals,
    stage_learning_rates,
)

N_CLASSES = 4


def _model(in_channels=3, seed=0):
    torch.manual_seed(seed)
    return build_resnet("resnet18", None, N_CLASSES, in_channels)


def _adapted(rank=4, in_channels=3, stage_lrs=None, seed=0):
    model = _model(in_channels, seed)
    stage_lrs = stage_lrs or stage_learning_rates(1e-2, 0.5)
    frozen = freeze_stages(model, stage_lrs)
    add_lora_adapters(model, rank, [s for s in STAGES if s not in frozen])
    return model, stage_lrs


def _batch(channels=3, n=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, channels, 16, 16, generator=generator)
    return inputs, torch.arange(n) % N_CLASSES


def _sgd_steps(model, stage_lrs, inputs, targets, n_steps=3, stem_fold=1):
    groups = StageParamGroups(model, stage_lrs, 1e-2, stem_fold)
    optimizer = torch.optim.SGD(groups.groups, momentum=0.9)
    model.train()
    for _ in range(n_steps):
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _adapter_conv_names(model):
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and hasattr(module, "parametrizations")
    }


def test_adapted_model_starts_as_the_base_model():
    base = _model().eval()
    adapted, _ = _adapted()
    inputs, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(adapted.eval()(inputs), base(inputs))


def test_every_convolution_of_the_trained_stages_is_adapted():
    model, _ = _adapted()
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert _adapter_conv_names(model) == convs  # the stem and downsamples too
    assert isinstance(model.fc, nn.Linear) and not hasattr(model.fc, "parametrizations")


def test_only_factors_norms_and_head_get_gradients():
    model, stage_lrs = _adapted()
    inputs, targets = _batch()
    F.cross_entropy(model(inputs), targets).backward()
    originals = parametrized_originals(model)
    assert len(originals) == len(_adapter_conv_names(model))
    assert all(not p.requires_grad and p.grad is None for p in originals)
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.endswith((".down", ".up"))
        or ".bn" in n
        or n.startswith(("bn1.", "fc."))
        or ".downsample.1." in n
    }
    assert trained == expected
    # The optimizer gets exactly those, and no frozen base weight.
    grouped = {
        id(p)
        for g in StageParamGroups(model, stage_lrs, 1e-4).groups
        for p in g["params"]
    }
    assert grouped == {id(p) for n, p in model.named_parameters() if n in expected}


def test_training_changes_outputs_but_not_the_base_weights():
    model, stage_lrs = _adapted()
    base = [p.detach().clone() for p in parametrized_originals(model)]
    inputs, targets = _batch()
    model.eval()
    with torch.no_grad():
        before = model(inputs)
    _sgd_steps(model, stage_lrs, inputs, targets)
    model.eval()
    with torch.no_grad():
        after = model(inputs)
    assert not torch.allclose(before, after, atol=1e-4)
    for old, new in zip(base, parametrized_originals(model)):
        assert torch.equal(old, new)


def test_merge_gives_a_plain_torchvision_resnet_with_the_same_outputs():
    model, stage_lrs = _adapted()
    inputs, targets = _batch()
    _sgd_steps(model, stage_lrs, inputs, targets)
    model.eval()
    with torch.no_grad():
        adapted_logits = model(inputs)
    not_merged = {k: v.clone() for k, v in merged_state_dict(model).items()}
    assert has_lora_adapters(model)  # merged_state_dict left it adapted

    merge_lora_adapters(model)
    assert not has_lora_adapters(model)
    assert all(
        type(m) is nn.Conv2d for m in model.modules() if isinstance(m, nn.Conv2d)
    )
    assert all(p.requires_grad for p in model.parameters())
    plain = torchvision.models.resnet18(num_classes=N_CLASSES).eval()
    assert list(model.state_dict()) == list(plain.state_dict())
    assert list(not_merged) == list(plain.state_dict())
    plain.load_state_dict(model.state_dict())  # strict
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), adapted_logits)
        torch.testing.assert_close(plain(inputs), adapted_logits)
        # Batch norms folded for prediction work on the merged model as usual.
        torch.testing.assert_close(
            folded_for_inference(model)(inputs), adapted_logits, rtol=1e-4, atol=1e-4
        )
    for key, value in model.state_dict().items():
        torch.testing.assert_close(not_merged[key], value, msg=key)
    pickle.loads(pickle.dumps(model))  # an adapted model refuses to pickle


def test_channels_last_adapters_compute_the_same_weights():
    model = _model().to(memory_format=torch.channels_last)
    add_lora_adapters(model, 2, STAGES)
    with torch.no_grad():
        for name, factor in model.named_parameters():
            if name.endswith(".up"):
                factor.normal_()
    contiguous = _model()
    add_lora_adapters(contiguous, 2, STAGES)
    contiguous.load_state_dict(model.state_dict())
    conv = model.layer2[0].conv2
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.grad_fn is not None
    torch.testing.assert_close(conv.weight, contiguous.layer2[0].conv2.weight)
    weight = parametrized_originals(model)[0]
    merge_lora_adapters(model)
    assert model.conv1.weight is weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_torchvision_layout_of_an_adapted_model_is_the_merged_one():
    model, stage_lrs = _adapted(in_channels=1)
    _sgd_steps(model, stage_lrs, *_batch(channels=1), stem_fold=3)
    layout = to_torchvision_layout(model)
    plain = torchvision.models.resnet18(num_classes=N_CLASSES)
    plain.load_state_dict(layout)  # strict: plain keys, RGB stem
    expected = to_torchvision_layout(merge_lora_adapters(model))
    assert layout.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(layout[key], expected[key], msg=key)


def test_best_epoch_copy_restores_into_the_merged_model():
    # The plain-layout copy fit keeps of the best epoch loads into the model
    # once merged, whatever the adapters did after it.
    model, stage_lrs = _adapted()
    inputs, targets = _batch()
    _sgd_steps(model, stage_lrs, inputs, targets, n_steps=1)
    best = {k: v.detach().clone() for k, v in merged_state_dict(model).items()}
    model.eval()
    with torch.no_grad():
        best_logits = model(inputs)
    _sgd_steps(model, stage_lrs, inputs, targets, n_steps=2)
    merge_lora_adapters(model).load_state_dict(best)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(inputs), best_logits)


@pytest.mark.parametrize("rank", [0, -2])
def test_rank_below_one_is_refused(rank):
    model = _model()
    with pytest.raises(ValueError, match="lora_rank must be an int >= 1"):
        add_lora_adapters(model, rank, STAGES)
    assert not has_lora_adapters(model)


@pytest.mark.parametrize("rank", [2.0, "4", True, None])
def test_rank_of_another_type_is_refused(rank):
    with pytest.raises(TypeError, match="lora_rank must be an int"):
        add_lora_adapters(_model(), rank, STAGES)


def test_rank_larger_than_a_layer_names_the_limit():
    # resnet18's smallest adapted convolutions have 64 outputs (layer1); a
    # folded stem has 1 * 7 * 7 = 49 inputs per output.
    model = _model()
    with pytest.raises(ValueError, match=r"lora_rank=65 .* at most 64"):
        add_lora_adapters(model, 65, STAGES)
    assert not has_lora_adapters(model)
    add_lora_adapters(model, 64, STAGES)
    gray = _model(in_channels=1)
    with pytest.raises(ValueError, match=r"lora_rank=50 .*'conv1'.* at most 49"):
        add_lora_adapters(gray, 50, STAGES)
    add_lora_adapters(gray, 50, ["layer1", "layer2", "fc"])  # no stem: no limit 49


def test_adding_twice_and_unknown_stages_are_refused():
    model = _model()
    with pytest.raises(ValueError, match="unknown stage names"):
        add_lora_adapters(model, 2, ["layer5"])
    add_lora_adapters(model, 2, ["layer4"])
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora_adapters(model, 2, ["layer3"])


def test_far_fewer_trainable_parameters_than_full_fine_tuning():
    full = _model()
    adapted, _ = _adapted(rank=4)
    n_full = count_trainable_parameters(full)
    n_adapted = count_trainable_parameters(adapted)
    assert n_full == sum(p.numel() for p in full.parameters())
    names = dict(adapted.named_parameters())
    factors = sum(p.numel() for n, p in names.items() if n.endswith((".down", ".up")))
    assert 0 < factors < n_adapted < n_full / 10


def test_frozen_stages_get_no_adapters():
    stage_lrs = {**stage_learning_rates(1e-2, 0.5), "stem": 0.0, "layer1": 0.0}
    model, _ = _adapted(stage_lrs=stage_lrs)
    adapted = _adapter_conv_names(model)
    assert adapted and not any(n.startswith(("conv1", "layer1.")) for n in adapted)
    assert not any(p.requires_grad for p in model.layer1.parameters())
    inputs, targets = _batch()
    frozen_before = model.layer1.state_dict()
    _sgd_steps(model, stage_lrs, inputs, targets)
    for key, value in model.layer1.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key


def test_freezing_again_keeps_the_base_weights_frozen():
    # Gradual unfreezing calls freeze_stages twice: the base weights stay out.
    model, stage_lrs = _adapted()
    freeze_stages(model, {**stage_lrs, **dict.fromkeys(STAGES[:-1], 0.0)})
    assert count_trainable_parameters(model) == sum(
        p.numel() for p in model.fc.parameters()
    )
    freeze_stages(model, stage_lrs)
    assert not any(p.requires_grad for p in parametrized_originals(model))
    assert all(p.requires_grad for n, p in model.named_parameters() if "0.up" in n)


def test_folded_stem_adapters_train_step_for_step_like_repeated_gray():
    # A folded stem's adapter: its input-side factor stands for the sum of the
    # RGB one's three channels and trains at 3x the rate with a third of the
    # decay; the output-side factor trains as in the RGB network.
    rgb, stage_lrs = _adapted(in_channels=3)
    folded, _ = _adapted(in_channels=1)
    rgb.double()
    folded.double()
    state = rgb.state_dict()
    for key in (
        "conv1.parametrizations.weight.original",
        "conv1.parametrizations.weight.0.down",
    ):
        state[key] = state[key].sum(dim=1, keepdim=True)
    folded.load_state_dict(state)
    gray, targets = _batch(channels=1)
    gray = gray.double()
    _sgd_steps(rgb, stage_lrs, gray.expand(-1, 3, -1, -1), targets, n_steps=3)
    _sgd_steps(folded, stage_lrs, gray, targets, n_steps=3, stem_fold=3)
    torch.testing.assert_close(folded.conv1.weight, rgb.conv1.weight.sum(1, True))
    rgb.eval()
    folded.eval()
    with torch.no_grad():
        torch.testing.assert_close(folded(gray), rgb(gray.expand(-1, 3, -1, -1)))


def test_single_product_weight_gradients_give_the_same_factor_gradients():
    # 16x16 inputs: layer2..4 work on maps small enough for the single product.
    model, _ = _adapted()
    model.to(memory_format=torch.channels_last)
    inputs, targets = _batch()
    inputs = inputs.contiguous(memory_format=torch.channels_last)

    def gradients():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), targets).backward()
        return {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    expected = gradients()
    with gemm_weight_grads(model):
        ours = gradients()
    assert has_lora_adapters(model)  # the switch left the adapters alone
    assert ours.keys() == expected.keys()
    assert any(".up" in name for name in ours)
    for name in expected:
        torch.testing.assert_close(
            ours[name], expected[name], rtol=1e-4, atol=1e-5, msg=name
        )


def test_adapted_convolutions_take_the_single_product():
    from unittest import mock

    from resnetclf._acceleration import conv_weight_grad

    model, _ = _adapted()
    inputs, targets = _batch()
    with (
        mock.patch.object(
            conv_weight_grad,
            "weight_grad_by_gemm",
            wraps=conv_weight_grad.weight_grad_by_gemm,
        ) as spy,
        gemm_weight_grads(model),
    ):
        F.cross_entropy(model(inputs), targets).backward()
    assert spy.call_count >= 10
    assert has_lora_adapters(model)
    assert all(
        type(m).__name__ == "ParametrizedConv2d"
        for m in model.modules()
        if hasattr(m, "parametrizations")
    )
