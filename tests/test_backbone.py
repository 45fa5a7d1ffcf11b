"""Building ResNets: names, weights sources, grayscale stem, offline errors."""

from __future__ import annotations

import functools
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from sklearn.base import clone
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from conftest import small_classifier
from resnetclf import WeightsUnavailableError
from resnetclf._backbone import (
    RESNET_ARCHS,
    build_resnet,
    check_arch,
    resolve_weights,
    to_torchvision_layout,
)
from resnetclf._param_groups import (
    StageParamGroups,
    freeze_stages,
    stage_learning_rates,
)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty torchvision cache and a network that refuses every download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _resnet18_state(num_classes=1000, seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=num_classes).state_dict()


def test_every_listed_arch_builds():
    for arch in RESNET_ARCHS:
        with torch.device("meta"):
            model = build_resnet(arch, None, n_classes=5, in_channels=1)
        assert model.fc.out_features == 5 and model.conv1.in_channels == 1


def test_unknown_arch_lists_valid_names(tiny_images):
    X, y = tiny_images
    with pytest.raises(ValueError, match="arch must be one of") as raised:
        small_classifier(arch="vgg16").fit(X, y)
    message = str(raised.value)
    assert "'vgg16'" in message
    assert all(name in message for name in RESNET_ARCHS)


def test_arch_of_wrong_type_is_refused(tiny_images):
    X, y = tiny_images
    with pytest.raises(TypeError, match="arch"):
        small_classifier(arch=18).fit(X, y)


def test_weights_name_that_arch_lacks():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        resolve_weights("resnet18", "IMAGENET1K_V2")  # resnet18 has only V1


def test_weights_enum_of_another_arch():
    with pytest.raises(ValueError, match="another architecture"):
        resolve_weights("resnet18", torchvision.models.ResNet50_Weights.DEFAULT)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resolve_weights("resnet18", str(missing))


def test_offline_pretrained_weights_fail_fast_with_guidance(tiny_images, offline_cache):
    X, y = tiny_images
    clf = small_classifier(weights="DEFAULT", verbose=1)
    with pytest.raises(WeightsUnavailableError) as info:
        clf.fit(X, y)
    message = str(info.value)
    assert "weights=None" in message
    assert str(offline_cache / "resnet18-f37072fd.pth") in message
    assert not hasattr(clf, "history_")  # nothing was trained


def test_pretrained_weights_from_filled_cache(tiny_images, offline_cache):
    X, y = tiny_images
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    offline_cache.mkdir(parents=True)
    state = _resnet18_state()
    torch.save(state, offline_cache / os.path.basename(url))
    # Frozen backbone: after fit it must still be exactly the cached weights.
    clf = small_classifier(weights="DEFAULT", max_iter=1, layer_lr_decay=0.0)
    clf.fit(X, y)
    fitted = clf.module_.state_dict()
    assert torch.equal(fitted["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert torch.equal(
        fitted["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True)
    )
    assert fitted["fc.weight"].shape == (3, 512)


def test_weights_from_a_state_dict_file(tmp_path, tiny_images):
    X, y = tiny_images
    path = tmp_path / "backbone.pth"
    state = _resnet18_state()
    torch.save(state, path)
    clf = small_classifier(weights=path, max_iter=1, layer_lr_decay=0.0).fit(X, y)
    assert torch.equal(
        clf.module_.state_dict()["layer4.1.bn2.running_var"],
        state["layer4.1.bn2.running_var"],
    )


def test_a_checkpoint_resumes_as_weights(fitted, tiny_images):
    clf, X, y, path = fitted
    resumed = small_classifier(
        weights=str(path), max_iter=1, lr=1e-12, layer_lr_decay=0.0
    )
    resumed.fit(X[:36], y[:36], X_val=X[36:], y_val=y[36:])
    # Head kept (same class count) and next to nothing trained: the same model.
    np.testing.assert_allclose(
        resumed.predict_proba(X), clf.predict_proba(X), atol=1e-5
    )


def test_mismatched_state_dict_names_the_keys(tmp_path, tiny_images):
    X, y = tiny_images
    state = _resnet18_state()
    del state["layer2.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["layer3.0.bn1.weight"] = torch.zeros(7)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        small_classifier(weights=path).fit(X, y)
    message = str(info.value)
    assert "layer2.0.conv1.weight" in message
    assert "extra.weight" in message
    assert "layer3.0.bn1.weight" in message


def test_resnet50_weights_do_not_fit_resnet18(tmp_path, tiny_images):
    X, y = tiny_images
    state = torchvision.models.resnet50(num_classes=10).state_dict()
    path = tmp_path / "r50.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="do not fit arch='resnet18'"):
        small_classifier(weights=path).fit(X, y)


def test_folded_stem_equals_repeated_channel():
    torch.manual_seed(0)
    rgb = build_resnet("resnet18", None, n_classes=4, in_channels=3).eval()
    gray = build_resnet("resnet18", None, n_classes=4, in_channels=1).eval()
    state = rgb.state_dict()
    state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    gray.load_state_dict(state)
    images = torch.randn(2, 1, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(
            gray(images), rgb(images.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4
        )
    # And back: the torchvision-layout copy reproduces the folded model.
    unfolded = build_resnet("resnet18", None, n_classes=4, in_channels=3).eval()
    unfolded.load_state_dict(to_torchvision_layout(gray))
    with torch.no_grad():
        torch.testing.assert_close(
            unfolded(images.repeat(1, 3, 1, 1)), gray(images), rtol=1e-4, atol=1e-4
        )


def test_one_channel_file_loads_into_grayscale_model(tmp_path, tiny_images):
    X, y = tiny_images
    state = _resnet18_state()
    state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    path = Path(tmp_path) / "gray.pth"
    torch.save(state, path)
    clf = small_classifier(weights=path, max_iter=1, layer_lr_decay=0.0).fit(X, y)
    torch.testing.assert_close(clf.module_.conv1.weight, state["conv1.weight"])


@pytest.mark.parametrize(
    "make_optimizer, weight_decay",
    [
        (lambda groups: torch.optim.SGD(groups, momentum=0.9), 1e-2),
        (torch.optim.AdamW, 1e-2),
        (torch.optim.Adam, 0.0),
    ],
)
def test_folded_stem_trains_step_for_step_like_repeated_gray(
    make_optimizer, weight_decay
):
    # The report repeats the gray channel into an RGB network; fit folds the
    # stem instead. With the folded kernel's rate and decay scaled by 3 and
    # 1/3, training follows the RGB network exactly, not just the first forward.
    # A ResNet of one block per stage has every stage the rule scales: the
    # stem, layer1..4 and fc.
    torch.manual_seed(0)
    rgb = small_resnet(num_classes=4).double()
    folded = build_resnet(small_resnet, None, 4, in_channels=1).double()
    folded.load_state_dict(
        {**rgb.state_dict(), "conv1.weight": rgb.conv1.weight.sum(1, keepdim=True)}
    )
    stage_lrs = stage_learning_rates(1e-2, 0.5)
    optimizers = [
        make_optimizer(StageParamGroups(model, stage_lrs, weight_decay, fold).groups)
        for model, fold in ((rgb, 1), (folded, 3))
    ]
    gray = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    for _ in range(4):
        for model, inputs, optimizer in zip(
            (rgb, folded), (gray.expand(-1, 3, -1, -1), gray), optimizers
        ):
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.testing.assert_close(
        folded.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True)
    )
    torch.testing.assert_close(folded(gray), rgb(gray.expand(-1, 3, -1, -1)))


# ---------------------------------------------------------------- callable arch
def small_resnet(blocks: int = 1, num_classes: int = 1000) -> ResNet:
    """A module-level builder, as a user would write one: pickles by name."""
    return ResNet(BasicBlock, [blocks] * 4, num_classes=num_classes)


class _HeadlessResNet(ResNet):
    def __init__(self):
        super().__init__(BasicBlock, [1, 1, 1, 1])
        self.fc = nn.Identity()


def _gray_stem_resnet():
    model = small_resnet()
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


SMALL = functools.partial(small_resnet, blocks=1)


@pytest.mark.parametrize(
    "arch", [SMALL, functools.partial(ResNet, BasicBlock, [1, 1, 1, 1])]
)
def test_callable_arch_builds_a_small_resnet(arch):
    assert check_arch(arch) is arch
    torch.manual_seed(0)
    model = build_resnet(arch, None, n_classes=3, in_channels=1)
    assert isinstance(model, ResNet) and len(model.layer1) == 1
    assert model.fc.out_features == 3 and model.conv1.in_channels == 1
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)
    # Stages and freezing work as for a named arch.
    stage_lrs = {**stage_learning_rates(1e-2, 0.5), "layer1": 0.0}
    assert freeze_stages(model, stage_lrs) == ["layer1"]
    grouped = {
        id(p)
        for g in StageParamGroups(model, stage_lrs, 1e-4).groups
        for p in g["params"]
    }
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in grouped for p in model.layer1.parameters())


def test_callable_arch_head_size_does_not_matter():
    arch = functools.partial(small_resnet, num_classes=7)
    assert build_resnet(arch, None, 3, 3).fc.out_features == 3
    assert build_resnet(arch, None, 7, 3).fc.out_features == 7


@pytest.mark.parametrize(
    "arch, error, match",
    [
        (lambda: nn.Sequential(nn.Conv2d(3, 8, 3)), TypeError, "returned Sequential"),
        (lambda: "resnet18", TypeError, "returned str"),
        (_HeadlessResNet, TypeError, r"_HeadlessResNet returned a ResNet .*fc"),
        (_gray_stem_resnet, ValueError, "conv1 takes 1 input channels"),
    ],
)
def test_callable_returning_something_else_names_arch(arch, error, match):
    with pytest.raises(error, match=match) as raised:
        build_resnet(arch, None, 3, 1)
    assert "arch=" in str(raised.value)


@pytest.mark.parametrize("arch", [18, None, 2.5])
def test_arch_neither_name_nor_callable_is_refused(arch):
    with pytest.raises(TypeError, match="arch must be the name"):
        check_arch(arch)


def test_callable_arch_takes_a_state_dict_file(tmp_path):
    torch.manual_seed(1)
    source = small_resnet()
    path = tmp_path / "small.pth"
    torch.save(source.state_dict(), path)
    assert resolve_weights(SMALL, str(path)) == path
    model = build_resnet(SMALL, path, 3, 1)
    torch.testing.assert_close(
        model.layer4[0].conv2.weight, source.layer4[0].conv2.weight
    )
    torch.testing.assert_close(
        model.conv1.weight, source.conv1.weight.sum(1, keepdim=True)
    )
    # A file of another network names the callable and the keys.
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"do not fit arch=functools.partial\("):
        build_resnet(SMALL, tmp_path / "r18.pth", 3, 1)


@pytest.mark.parametrize(
    "weights", ["DEFAULT", "IMAGENET1K_V1", torchvision.models.ResNet18_Weights.DEFAULT]
)
def test_weights_name_with_callable_arch_is_refused(weights):
    with pytest.raises(ValueError, match="weights=None") as raised:
        resolve_weights(SMALL, weights)
    assert "callable" in str(raised.value)


def test_missing_file_with_callable_arch_names_the_path(tmp_path):
    assert resolve_weights(SMALL, None) is None
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resolve_weights(SMALL, str(tmp_path / "nope.pth"))
    with pytest.raises(TypeError, match="weights must be None or a path"):
        resolve_weights(SMALL, 3)


def test_callable_arch_rebuilds_from_a_pickled_state():
    # What unpickling the estimator does: the arch (a partial of a
    # module-level function) comes back by name, the network is built on the
    # meta device and takes the stored tensors.
    torch.manual_seed(0)
    model = build_resnet(SMALL, None, 3, 1).eval()
    arch = pickle.loads(pickle.dumps(SMALL))
    state = pickle.loads(pickle.dumps(model.state_dict()))
    with torch.device("meta"):
        rebuilt = build_resnet(arch, None, 3, state["conv1.weight"].shape[1])
    rebuilt.load_state_dict(state, assign=True)
    inputs = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(inputs), model(inputs))
    # And its torchvision layout loads into the network the callable builds.
    plain = SMALL()
    plain.fc = nn.Linear(plain.fc.in_features, 3)
    plain.load_state_dict(to_torchvision_layout(model))


def test_estimator_with_callable_arch_clones_and_pickles():
    clf = small_classifier(arch=SMALL)
    for copied in (clone(clf), pickle.loads(pickle.dumps(clf))):
        arch = copied.arch  # partials compare by identity: compare their parts
        assert (arch.func, arch.args, arch.keywords) == (
            small_resnet,
            (),
            {"blocks": 1},
        )
