"""weights= takes a state dict without a head (an encoder): the head is new."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from resnetclf import ResNetFineTuneClassifier
from resnetclf._backbone import build_resnet


def _encoder_state(one_channel: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if one_channel:
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_headless_file_loads_every_backbone_tensor(tmp_path, suffix):
    state = _encoder_state()
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = build_resnet("resnet18", Path(path), n_classes=7, in_channels=3)
    loaded = model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert model.fc.out_features == 7


def test_headless_one_channel_encoder_folds_back(tmp_path):
    state = _encoder_state(one_channel=True)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = build_resnet("resnet18", path, n_classes=3, in_channels=1)
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.layer4[1].bn2.weight, state["layer4.1.bn2.weight"])


def test_estimator_fits_from_a_headless_file(tmp_path):
    path = tmp_path / "encoder.pth"
    torch.save(_encoder_state(), path)
    rng = np.random.default_rng(0)
    X = rng.random((45, 12, 20), dtype=np.float32)
    y = np.arange(45) % 3
    clf = ResNetFineTuneClassifier(
        arch="resnet18", weights=path, max_iter=1, batch_size=8, device="cpu",
        random_state=0,
    )  # fmt: skip
    clf.fit(X, y)
    assert clf.predict_proba(X).shape == (45, 3)


def test_other_missing_keys_still_refused(tmp_path):
    state = _encoder_state()
    del state["layer4.1.bn2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"1 missing keys: layer4\.1\.bn2\.weight"):
        build_resnet("resnet18", path, n_classes=3, in_channels=3)


def test_half_a_head_still_refused(tmp_path):
    state = _encoder_state()
    state["fc.weight"] = torch.zeros(1000, 512)  # and no fc.bias
    path = tmp_path / "half_head.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys: fc\.bias"):
        build_resnet("resnet18", path, n_classes=3, in_channels=3)
