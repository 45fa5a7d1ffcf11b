"""Heads over the feature map: the digit-sum convolution, the head parameter,
and every path a fitted network takes (predict, persistence, warm start,
weights from a saved model, LoRA, batch-norm folding)."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import model_settings, rewrite_model, small_classifier
from resnetclf import DigitSumHead, load_model, save_model
from resnetclf._acceleration.bn_folding import folded_for_inference
from resnetclf._backbone import MapHeadResNet, build_resnet
from resnetclf.datasets import make_digit_sums
from resnetclf.heads import digit_sum_log_probs, resolve_head

SHAPE = (16, 40)  # two 8x8 digits with room around them


@pytest.fixture(scope="module")
def two_digit_sums():
    return make_digit_sums(64, n_digits=2, image_shape=SHAPE, random_state=0)


@pytest.fixture(scope="module")
def fitted_digit_sum(two_digit_sums):
    X, y = two_digit_sums
    return small_classifier(head=DigitSumHead(n_digits=2), max_iter=1).fit(X, y)


# ------------------------------------------------------------ the convolution
def _brute_force(log_probs: torch.Tensor) -> torch.Tensor:
    n, n_digits, n_values = log_probs.shape
    probs = torch.zeros(n, n_digits * (n_values - 1) + 1, dtype=torch.float64)
    for values in itertools.product(range(n_values), repeat=n_digits):
        joint = sum(log_probs[:, k, v] for k, v in enumerate(values)).exp()
        probs[:, sum(values)] += joint
    return probs


@settings(max_examples=20, deadline=None)
@given(
    n_digits=st.integers(1, 4),
    n_values=st.integers(2, 10),
    seed=st.integers(0, 2**16),
)
def test_sum_distribution_matches_enumeration(n_digits, n_values, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(3, n_digits, n_values, generator=generator)
    log_probs = logits.double().log_softmax(dim=2)
    got = digit_sum_log_probs(log_probs).exp()
    torch.testing.assert_close(got, _brute_force(log_probs))


def test_unlikely_sums_stay_finite_in_float32():
    # Every digit a 9 with probability 1e-30: p^4 = 1e-120 underflows float32.
    log_probs = torch.full((1, 4, 10), -1e-3)
    log_probs[0, :, 9] = -30 * np.log(10)
    sums = digit_sum_log_probs(log_probs.float())
    assert torch.isfinite(sums).all()
    assert sums[0, 36].item() == pytest.approx(-120 * np.log(10), rel=1e-5)


def test_head_output_is_float32_under_bf16_autocast():
    module = DigitSumHead(n_digits=4)(feature_channels=8, classes=np.arange(37))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(torch.randn(3, 8, 2, 6))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(3))


def test_logits_follow_the_classes_given():
    classes = np.array([3, 5, 11])
    module = DigitSumHead(n_digits=2)(feature_channels=4, classes=classes)
    feature_map = torch.randn(2, 4, 1, 3)
    full = DigitSumHead(n_digits=2)(4, np.arange(19))
    full.load_state_dict(module.state_dict())
    torch.testing.assert_close(module(feature_map), full(feature_map)[:, classes])


def test_digits_are_read_left_to_right():
    # Ten channels: cell column j holds the one-hot code of digit j + 3. The
    # slots' attention is set so that slot 0 looks at the right end.
    module = DigitSumHead(n_digits=3)(feature_channels=10, classes=np.arange(28))
    with torch.no_grad():
        module.digit.weight.copy_(10 * torch.eye(10))
        module.digit.bias.zero_()
        centres = torch.tensor([5 / 6, 1 / 2, 1 / 6])
        module.where.weight.zero_()
        module.where.weight[:, 10] = 2 * 200 * centres
        module.where.weight[:, 11] = -200
        module.where.bias.copy_(-200 * centres**2)
    feature_map = torch.zeros(1, 10, 1, 3)
    for column, digit in enumerate((3, 4, 5)):
        feature_map[0, digit, 0, column] = 1.0
    assert module.digit_logits(feature_map).argmax(dim=2).tolist() == [[5, 4, 3]]
    assert module.read_digits(feature_map).tolist() == [[3, 4, 5]]


# ---------------------------------------------------------- head parameter
def test_linear_head_is_torchvisions_layout(tmp_path, tiny_images):
    X, y = tiny_images
    path = tmp_path / "best.pth"
    clf = small_classifier(head="linear", max_iter=1, checkpoint_path=path)
    clf.fit(X, y)
    assert type(clf.module_) is torchvision.models.ResNet
    assert isinstance(clf.module_.fc, nn.Linear)
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(torch.load(path, weights_only=True))


def test_linear_head_fit_equals_the_default_fit(tiny_images):
    X, y = tiny_images
    default = small_classifier(max_iter=1).fit(X, y)
    linear = small_classifier(max_iter=1, head="linear").fit(X, y)
    np.testing.assert_array_equal(default.predict_proba(X), linear.predict_proba(X))


@pytest.mark.parametrize(
    "y, message",
    [
        (np.arange(64) % 20, "integers in 0..18"),  # 19 is no sum of two digits
        (np.where(np.arange(64) % 2, -1, 3), "integers in 0..18"),
        (np.where(np.arange(64) % 2, "a", "b"), "sums of 2 digits"),
        (np.where(np.arange(64) % 2, 19.0, 2.0), "integers in 0..18"),
    ],
)
def test_classes_that_are_no_sums_are_refused_before_training(
    two_digit_sums, y, message, monkeypatch
):
    X, _ = two_digit_sums
    clf = small_classifier(head=DigitSumHead(n_digits=2))
    monkeypatch.setattr(type(clf), "_initial_module", _no_training)
    with pytest.raises(ValueError, match=message):
        clf.fit(X, y)


@pytest.mark.parametrize("n_digits", [0, -1, "a", 2.0, True])
def test_a_bad_n_digits_is_refused_before_training(
    two_digit_sums, n_digits, monkeypatch
):
    X, y = two_digit_sums
    clf = small_classifier(head=DigitSumHead(n_digits=n_digits))
    monkeypatch.setattr(type(clf), "_initial_module", _no_training)
    with pytest.raises(ValueError, match="n_digits must be an int >= 1"):
        clf.fit(X, y)


def _no_training(*args, **kwargs):
    raise AssertionError("training started")


def test_a_head_of_the_wrong_output_shape_is_refused_before_training(
    tiny_images, monkeypatch
):
    X, y = tiny_images
    clf = small_classifier(head=_two_outputs)
    monkeypatch.setattr(type(clf), "_initial_module", _no_training)
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*expected \(2, 3\)"):
        clf.fit(X, y)


def test_a_head_that_is_not_a_module_is_refused(tiny_images):
    X, y = tiny_images
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        small_classifier(head=lambda channels, classes: "no module").fit(X, y)


def _two_outputs(feature_channels, classes):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 2))


def _pooled_head(feature_channels, classes):
    return nn.Sequential(
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(feature_channels, len(classes))
    )


def test_a_users_head_trains_and_is_refused_on_save(tiny_images, tmp_path):
    X, y = tiny_images
    clf = small_classifier(head=_pooled_head, max_iter=1).fit(X, y)
    assert isinstance(clf.module_, MapHeadResNet)
    assert clf.predict_proba(X).shape == (len(X), 3)
    assert not hasattr(clf, "predict_digits")
    with pytest.raises(ValueError, match="cannot save parameter 'head'"):
        save_model(clf, tmp_path / "model")
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X))


def test_head_by_name_is_a_four_digit_sum_head():
    assert small_classifier(head="digit-sum").head == "digit-sum"
    head = resolve_head("digit-sum")
    model = build_resnet("resnet18", None, 37, 1, head=head, classes=range(37))
    assert model.fc.n_digits == 4


# ------------------------------------------------------- a fitted digit head
def test_predict_digits_reads_n_digits_per_image(fitted_digit_sum, two_digit_sums):
    X, _ = two_digit_sums
    digits = fitted_digit_sum.predict_digits(X[:7])
    assert digits.shape == (7, 2) and digits.dtype == np.int64
    assert digits.min() >= 0 and digits.max() <= 9
    proba = fitted_digit_sum.predict_proba(X[:7])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def test_predict_digits_exists_only_for_heads_that_read_digits(tiny_images):
    assert not hasattr(small_classifier(), "predict_digits")
    assert hasattr(small_classifier(head="digit-sum"), "predict_digits")
    assert hasattr(small_classifier(head=DigitSumHead(2)), "predict_digits")


def test_saved_and_loaded_with_its_head(fitted_digit_sum, two_digit_sums, tmp_path):
    X, _ = two_digit_sums
    save_model(fitted_digit_sum, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.head == DigitSumHead(n_digits=2)
    np.testing.assert_array_equal(
        loaded.predict_proba(X), fitted_digit_sum.predict_proba(X)
    )
    np.testing.assert_array_equal(
        loaded.predict_digits(X), fitted_digit_sum.predict_digits(X)
    )


def test_a_model_file_naming_an_unknown_head_is_refused(fitted_digit_sum, tmp_path):
    folder = save_model(fitted_digit_sum, tmp_path / "model")
    document = model_settings(folder)
    document["params"]["head"] = {"head": ["os.system", {"dict": [["n_digits", 2]]}]}
    rewrite_model(folder, document)
    with pytest.raises(ValueError, match="unknown head"):
        load_model(tmp_path / "model")


def test_warm_start_continues_the_head(fitted_digit_sum, two_digit_sums):
    X, y = two_digit_sums
    clf = pickle.loads(pickle.dumps(fitted_digit_sum))
    before = {k: v.clone() for k, v in clf.module_.fc.state_dict().items()}
    # Without validation the last epoch is kept, not the first fit's best.
    clf.set_params(warm_start=True, max_iter=1, validation_fraction=0.0).fit(X, y)
    assert clf.n_iter_ == 2
    after = clf.module_.fc.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_warm_start_with_another_head_is_refused(fitted_digit_sum, two_digit_sums):
    X, y = two_digit_sums
    clf = pickle.loads(pickle.dumps(fitted_digit_sum))
    clf.set_params(warm_start=True, head=DigitSumHead(n_digits=3))
    with pytest.raises(ValueError, match="head differs"):
        clf.fit(X, y)


def test_weights_from_a_saved_model_with_a_head(fitted_digit_sum, tmp_path):
    save_model(fitted_digit_sum, tmp_path / "model")
    kept = fitted_digit_sum.module_.state_dict()
    classes = fitted_digit_sum.classes_
    # The same head: every tensor taken, the head's too.
    same = build_resnet(
        "resnet18", tmp_path / "model" / "model.safetensors", len(classes), 1,
        head=DigitSumHead(2), classes=classes,
    ).state_dict()  # fmt: skip
    assert same.keys() == kept.keys()
    for key, value in kept.items():
        torch.testing.assert_close(same[key], value, msg=key)
    # A linear head: the body taken, the digit head dropped for a new one.
    linear = build_resnet(
        "resnet18", tmp_path / "model" / "model.safetensors", len(classes), 1
    )
    assert isinstance(linear.fc, nn.Linear)
    torch.testing.assert_close(
        linear.state_dict()["layer4.1.conv2.weight"], kept["layer4.1.conv2.weight"]
    )


def test_lora_leaves_the_head_plain(two_digit_sums):
    X, y = two_digit_sums
    clf = small_classifier(head=DigitSumHead(2), lora_rank=2, max_iter=1).fit(X, y)
    names = list(clf.module_.state_dict())
    assert not any("parametrizations" in name for name in names)
    assert {"fc.where.weight", "fc.digit.weight"} <= set(names)


def test_batch_norm_folding_keeps_the_head(fitted_digit_sum, two_digit_sums):
    X, _ = two_digit_sums
    model = fitted_digit_sum.module_
    inputs = torch.rand(5, 1, *SHAPE) * 2 - 1
    folded = folded_for_inference(model)
    assert isinstance(folded, MapHeadResNet)
    with torch.no_grad():
        torch.testing.assert_close(folded(inputs), model(inputs), atol=1e-4, rtol=0)


def test_ema_and_freeze_epochs_with_a_head(two_digit_sums):
    X, y = two_digit_sums
    clf = small_classifier(
        head=DigitSumHead(2), ema_decay=0.9, freeze_epochs=1, max_iter=2
    ).fit(X, y)
    assert clf.n_iter_ == 2 and isinstance(clf.module_, MapHeadResNet)


def test_the_mistakes_gallery_shows_the_digits_read(fitted_digit_sum, two_digit_sums):
    import matplotlib

    matplotlib.use("Agg")
    from resnetclf import plot_confident_mistakes

    X, y = two_digit_sums
    figure = plot_confident_mistakes(fitted_digit_sum, X, y, n_images=2)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    digits = fitted_digit_sum.predict_digits(X)
    assert titles and all(", read " in title for title in titles)
    first = int(titles[0].split("(sample ")[1].rstrip(")"))
    assert f"read {digits[first][0]}+{digits[first][1]}" in titles[0]


def test_the_command_trains_a_digit_sum_head(tmp_path):
    from resnetclf.cli import main

    out = tmp_path / "run"
    status = main(
        [
            "train", "--arch", "resnet18", "--weights", "none",
            "--head", "digit-sum", "--digits", "2", "--stand-in-shape", "16", "40",
            "--stand-in-samples", "120", "--epochs", "1", "--batch-size", "16",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert status == 0
    document = model_settings(out / "model")
    loaded = load_model(out / "model")
    assert loaded.head == DigitSumHead(n_digits=2)
    assert document["fitted"]["image_shape_"] == {"tuple": [16, 40, 1]}
