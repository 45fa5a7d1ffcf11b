"""weights= from another task's fit: the head is new, every other tensor taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from conftest import small_classifier
from resnetclf._backbone import build_resnet, resolve_weights


def _images(n_classes: int, per_class: int, seed: int):
    """Grayscale 12x20 uint8 images whose brightness tells the class."""
    rng = np.random.RandomState(seed)
    y = np.arange(n_classes * per_class) % n_classes
    step = 200 // n_classes
    X = rng.randint(0, 40, size=(len(y), 12, 20)) + step * y[:, None, None]
    return X.astype(np.uint8), y


@pytest.fixture(scope="module")
def ten_class_checkpoint(tmp_path_factory):
    """The best-epoch checkpoint of a 10-class fit, and the fitted estimator."""
    X, y = _images(10, 4, seed=0)
    path = tmp_path_factory.mktemp("source") / "source.pth"
    clf = small_classifier(max_iter=1, checkpoint_path=path)
    clf.fit(X, y, X_val=X, y_val=y)
    return path, clf


def test_ten_class_checkpoint_loads_into_a_37_class_fit(ten_class_checkpoint, capsys):
    path, _ = ten_class_checkpoint
    X, y = _images(37, 2, seed=1)
    # Rate 0 below the head: every backbone tensor must stay the file's.
    clf = small_classifier(weights=path, max_iter=1, layer_lr_decay=0.0, verbose=1)
    clf.fit(X, y, X_val=X, y_val=y)
    source = torch.load(path, weights_only=True)
    fitted = clf.module_.state_dict()
    assert fitted["fc.weight"].shape == (37, 512)
    assert source["fc.weight"].shape == (10, 512)
    # The grayscale stem is the file's RGB stem folded, bit for bit.
    torch.testing.assert_close(
        fitted["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True)
    )
    for key, value in source.items():
        if key.startswith("fc.") or key == "conv1.weight":
            continue
        assert torch.equal(fitted[key], value), key
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("weights:"))
    assert "dropped its 10-class head (fc.weight, fc.bias)" in line
    assert "new 37-class one" in line and str(path) in line
    n_tensors = len(source)
    assert f"took {n_tensors - 2} of the {n_tensors} tensors" in line


def test_same_class_count_says_everything_was_taken(ten_class_checkpoint, capsys):
    path, _ = ten_class_checkpoint
    build_resnet("resnet18", path, n_classes=10, in_channels=1, verbose=1)
    assert "took all" in capsys.readouterr().out
    build_resnet("resnet18", path, n_classes=10, in_channels=1, verbose=0)
    assert capsys.readouterr().out == ""


def test_a_save_model_folder_is_a_weights_source(ten_class_checkpoint, tmp_path):
    from resnetclf import save_model

    _, source_clf = ten_class_checkpoint
    folder = save_model(source_clf, tmp_path / "model")
    assert resolve_weights("resnet18", folder).parent == folder
    X, y = _images(37, 2, seed=2)
    clf = small_classifier(weights=str(folder), max_iter=1, layer_lr_decay=0.0)
    clf.fit(X, y, X_val=X, y_val=y)
    expected = source_clf.module_.state_dict()
    fitted = clf.module_.state_dict()
    assert fitted["fc.weight"].shape[0] == 37
    for key in ("layer4.1.conv2.weight", "layer1.0.bn1.running_mean", "conv1.weight"):
        torch.testing.assert_close(fitted[key], expected[key], rtol=0, atol=1e-6)


def test_a_folder_without_weights_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder without a weights file"):
        resolve_weights("resnet18", tmp_path)


def test_another_architecture_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), path)
    X, y = _images(3, 4, seed=3)
    clf = small_classifier(weights=path, max_iter=1)
    with pytest.raises(ValueError, match="another architecture") as info:
        clf.fit(X, y, X_val=X, y_val=y)
    assert str(path) in str(info.value) and "unexpected keys" in str(info.value)
    assert not hasattr(clf, "module_")


@pytest.mark.parametrize("channels", [2, 4])
def test_a_stem_for_other_channels_is_refused(tmp_path, channels):
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    state["conv1.weight"] = torch.zeros(64, channels, 7, 7)
    path = tmp_path / "stem.pth"
    torch.save(state, path)
    X, y = _images(3, 4, seed=4)
    with pytest.raises(ValueError, match=f"conv1\\) for {channels} input channels"):
        small_classifier(weights=path, max_iter=1).fit(X, y, X_val=X, y_val=y)


def test_a_grayscale_stem_file_loads_into_an_rgb_fit(tmp_path):
    """A stem of one channel (an adapted file) is spread over RGB input."""
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    gray = state["conv1.weight"].sum(1, keepdim=True)
    state["conv1.weight"] = gray
    path = tmp_path / "gray.pth"
    torch.save(state, path)
    model = build_resnet("resnet18", path, n_classes=5, in_channels=3)
    torch.testing.assert_close(model.conv1.weight.sum(1, keepdim=True), gray)
    assert model.fc.out_features == 5
