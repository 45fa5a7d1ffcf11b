"""Weighting, the best-epoch scorer, gradual unfreezing, label smoothing, EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.utils.class_weight import compute_class_weight

import resnetclf._base as estimator_module
import resnetclf._tasks as tasks_module
from conftest import small_classifier
from resnetclf._checkpoint import load_state_dict_file
from resnetclf._tasks import weighted_cross_entropy


@pytest.fixture(scope="module")
def data():
    """60 learnable 12x20 images of 3 classes (brightness), unbalanced."""
    rng = np.random.RandomState(1)
    y = np.repeat([0, 1, 2], [30, 18, 12])
    X = rng.randint(0, 80, size=(len(y), 12, 20)) + 80 * y[:, None, None]
    order = rng.permutation(len(y))
    return X[order].astype(np.uint8), y[order]


def _proba(clf, X):
    return clf.predict_proba(X)


# ---------------------------------------------------------------- the loss
def test_weighted_cross_entropy_weights_each_term():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 0, 1])
    terms = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    weights = torch.tensor([2.0, 0.0, 1.0])
    got = weighted_cross_entropy(logits, targets, weights)
    assert torch.allclose(got, (terms * weights).mean())
    got_sum = weighted_cross_entropy(logits, targets, weights, reduction="sum")
    assert torch.allclose(got_sum, (terms * weights).sum())
    smoothed = weighted_cross_entropy(logits, targets, None, label_smoothing=0.2)
    expected = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.2)
    assert torch.equal(smoothed, expected)


# ---------------------------------------------------------- sample_weight
def test_uniform_sample_weight_trains_exactly_as_none(data):
    X, y = data
    plain = small_classifier(max_iter=1).fit(X, y)
    weighted = small_classifier(max_iter=1).fit(X, y, sample_weight=np.full(len(y), 3))
    np.testing.assert_array_equal(_proba(plain, X), _proba(weighted, X))


def test_zero_weight_samples_train_nothing(data):
    X, y = data
    keep = np.arange(len(y)) % 4 != 0
    X_val, y_val = X[:12], y[:12]
    on_subset = small_classifier(max_iter=1).fit(
        X[keep], y[keep], X_val=X_val, y_val=y_val
    )
    weighted = small_classifier(max_iter=1).fit(
        X, y, sample_weight=keep.astype(float), X_val=X_val, y_val=y_val
    )
    np.testing.assert_allclose(_proba(on_subset, X), _proba(weighted, X), atol=1e-6)


def test_weights_change_the_training_loss(data, monkeypatch):
    X, y = data
    seen = []
    original = tasks_module.weighted_cross_entropy

    def spy(logits, targets, weights=None, label_smoothing=0.0, reduction="mean"):
        if reduction == "mean":
            seen.append(None if weights is None else weights.detach().clone())
        return original(logits, targets, weights, label_smoothing, reduction)

    monkeypatch.setattr(tasks_module, "weighted_cross_entropy", spy)
    sample_weight = np.where(y == 2, 4.0, 1.0)
    small_classifier(max_iter=1, validation_fraction=0).fit(
        X, y, sample_weight=sample_weight
    )
    got = torch.cat(seen)
    # Normalised to a mean of 1 over the training set, ratios kept.
    assert got.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert got.max().item() / got.min().item() == pytest.approx(4.0, rel=1e-5)


@pytest.mark.parametrize(
    "sample_weight, match",
    [
        (np.ones(5), "sample_weight"),
        (-np.ones(60), "sample_weight"),
        (np.r_[np.nan, np.ones(59)], "sample_weight"),
        (np.zeros(60), "sample_weight"),
        (np.r_[np.ones(30), np.zeros(30)], "class"),
    ],
)
def test_bad_sample_weight_is_refused_before_training(
    data, monkeypatch, sample_weight, match
):
    X, y = data
    sorted_y = np.sort(y)

    def must_not_build(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(estimator_module, "build_resnet", must_not_build)
    clf = small_classifier()
    with pytest.raises(ValueError, match=match):
        clf.fit(X, sorted_y, sample_weight=sample_weight)
    assert not hasattr(clf, "module_")


# ------------------------------------------------------------ class_weight
def test_balanced_class_weight_equals_its_sample_weights(data):
    X, y = data
    per_class = compute_class_weight("balanced", classes=np.unique(y), y=y)
    by_class = small_classifier(max_iter=1, class_weight="balanced").fit(X, y)
    by_sample = small_classifier(max_iter=1).fit(X, y, sample_weight=per_class[y])
    np.testing.assert_array_equal(_proba(by_class, X), _proba(by_sample, X))
    unweighted = small_classifier(max_iter=1).fit(X, y)
    assert not np.array_equal(_proba(by_class, X), _proba(unweighted, X))


def test_class_weight_dict_multiplies_sample_weight(data):
    X, y = data
    sample_weight = np.linspace(0.5, 2.0, len(y))
    by_dict = small_classifier(max_iter=1, class_weight={2: 3.0}).fit(
        X, y, sample_weight=sample_weight
    )
    by_product = small_classifier(max_iter=1).fit(
        X, y, sample_weight=sample_weight * np.where(y == 2, 3.0, 1.0)
    )
    np.testing.assert_array_equal(_proba(by_dict, X), _proba(by_product, X))


def test_class_weight_with_unknown_label_is_refused(data):
    X, y = data
    with pytest.raises(ValueError, match="class_weight"):
        small_classifier(class_weight={7: 2.0}).fit(X, y)


def test_validation_score_is_weighted(data):
    X, y = data
    X_val, y_val = X[:20], y[:20]
    weight_val = np.where(y_val == 0, 1.0, 0.0)
    clf = small_classifier(max_iter=1).fit(
        X, y, X_val=X_val, y_val=y_val, sample_weight_val=weight_val
    )
    on_class_0 = np.mean(clf.predict(X_val[y_val == 0]) == 0)
    assert clf.history_[0]["val_accuracy"] == pytest.approx(on_class_0)


def test_sample_weight_val_needs_x_val(data):
    X, y = data
    with pytest.raises(ValueError, match="sample_weight_val"):
        small_classifier().fit(X, y, sample_weight_val=np.ones(len(y)))


def test_sample_weight_is_routed_by_metadata_routing(data, monkeypatch):
    import sklearn

    X, y = data
    lengths = []
    original = estimator_module.combined_sample_weight

    def spy(sample_weight, *args, **kwargs):
        if sample_weight is not None:
            lengths.append(len(sample_weight))
        return original(sample_weight, *args, **kwargs)

    monkeypatch.setattr(estimator_module, "combined_sample_weight", spy)
    with sklearn.config_context(enable_metadata_routing=True):
        clf = small_classifier(max_iter=1).set_fit_request(sample_weight=True)
        clf.set_score_request(sample_weight=False)
        cross_validate(clf, X, y, cv=2, params={"sample_weight": np.ones(len(y))})
        assert lengths == [30, 30]
        lengths.clear()
        search = GridSearchCV(clf, {"lr": [1e-3]}, cv=2, refit=True)
        search.fit(X, y, sample_weight=np.ones(len(y)))
        assert lengths == [30, 30, 60]


# ----------------------------------------------------------------- scoring
def test_scoring_picks_the_best_epoch_and_is_recorded(data):
    X, y = data
    X_val, y_val = X[:20], y[:20]
    clf = small_classifier(max_iter=3, scoring="neg_log_loss", lr=3e-3).fit(
        X[20:], y[20:], X_val=X_val, y_val=y_val
    )
    scores = [record["val_score"] for record in clf.history_]
    assert clf.best_score_ == max(scores)
    assert clf.best_epoch_ == int(np.argmax(scores)) + 1
    # The restored weights are the ones the score was measured on.
    expected = -log_loss(y_val, clf.predict_proba(X_val), labels=clf.classes_)
    assert clf.best_score_ == pytest.approx(expected, rel=1e-4)


def test_default_scoring_is_the_validation_accuracy(data):
    X, y = data
    clf = small_classifier(max_iter=1).fit(X[20:], y[20:], X_val=X[:20], y_val=y[:20])
    record = clf.history_[0]
    assert record["val_score"] == record["val_accuracy"]
    assert record["val_accuracy"] == pytest.approx(clf.score(X[:20], y[:20]))


def test_callable_scoring_gets_the_validation_images(data):
    X, y = data
    calls = []

    def scorer(estimator, X_seen, y_seen):
        calls.append((len(X_seen), len(y_seen)))
        return float(np.mean(estimator.predict(X_seen) == y_seen))

    clf = small_classifier(max_iter=2, scoring=scorer).fit(X, y)
    n_val = 6  # validation_fraction=0.1 of 60
    assert calls == [(n_val, n_val)] * 2
    assert clf.history_[0]["val_score"] == pytest.approx(
        clf.history_[0]["val_accuracy"]
    )


def test_unknown_scoring_is_refused_before_training(data):
    X, y = data
    clf = small_classifier(scoring="most_accurate")
    with pytest.raises(ValueError, match="scoring"):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")


# ---------------------------------------------------- gradual unfreezing
def _backbone(state):
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_freeze_epochs_train_only_the_head(data, weights_file):
    X, y = data
    initial = torch.load(weights_file, weights_only=True)
    clf = small_classifier(
        weights=str(weights_file), max_iter=1, freeze_epochs=1, arch="resnet18"
    ).fit(X, y)
    fitted = clf.module_.state_dict()
    for name, value in _backbone(initial).items():
        if name == "conv1.weight":
            value = value.sum(dim=1, keepdim=True)  # the folded grayscale stem
        torch.testing.assert_close(fitted[name].float(), value.float(), msg=name)
    assert not torch.equal(fitted["fc.weight"], initial["fc.weight"])
    record = clf.history_[0]
    assert record["lr_layer4"] == 0.0 and record["lr_fc"] > 0


def test_after_freeze_epochs_every_stage_trains(data, weights_file):
    X, y = data
    initial = torch.load(weights_file, weights_only=True)
    clf = small_classifier(
        weights=str(weights_file),
        max_iter=2,
        freeze_epochs=1,
        layer_lr_decay=0.5,
        validation_fraction=0,  # the last epoch is kept, not the best
    ).fit(X, y)
    fitted = clf.module_.state_dict()
    assert not torch.equal(
        fitted["layer1.0.conv1.weight"], initial["layer1.0.conv1.weight"]
    )
    assert clf.history_[1]["lr_layer1"] > 0


def test_freeze_epochs_beyond_max_iter_is_refused(data):
    X, y = data
    with pytest.raises(ValueError, match="freeze_epochs"):
        small_classifier(max_iter=2, freeze_epochs=3).fit(X, y)


# --------------------------------------------------------- label smoothing
def test_label_smoothing_reaches_the_training_loss_only(data, monkeypatch):
    X, y = data
    seen = []
    original = tasks_module.weighted_cross_entropy

    def spy(logits, targets, weights=None, label_smoothing=0.0, reduction="mean"):
        seen.append((reduction, label_smoothing))
        return original(logits, targets, weights, label_smoothing, reduction)

    monkeypatch.setattr(tasks_module, "weighted_cross_entropy", spy)
    small_classifier(max_iter=1, label_smoothing=0.2).fit(X, y)
    assert {s for r, s in seen if r == "mean"} == {0.2}
    assert {s for r, s in seen if r == "sum"} == {0.0}


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_bad_label_smoothing_is_refused(data, value):
    X, y = data
    with pytest.raises(ValueError, match="label_smoothing"):
        small_classifier(label_smoothing=value).fit(X, y)


# --------------------------------------------------------------------- EMA
def test_ema_keeps_the_averaged_weights(data, weights_file, tmp_path):
    X, y = data
    initial = torch.load(weights_file, weights_only=True)
    checkpoint = tmp_path / "ema.pth"
    # A decay this close to 1 keeps the average at the starting weights.
    clf = small_classifier(
        weights=str(weights_file),
        max_iter=1,
        ema_decay=1 - 1e-9,
        validation_fraction=0,
        checkpoint_path=str(checkpoint),
    ).fit(X, y)
    plain = small_classifier(
        weights=str(weights_file), max_iter=1, validation_fraction=0
    ).fit(X, y)
    name = "layer2.0.conv1.weight"
    torch.testing.assert_close(clf.module_.state_dict()[name], initial[name])
    assert not torch.allclose(plain.module_.state_dict()[name], initial[name])
    saved = load_state_dict_file(checkpoint)
    torch.testing.assert_close(saved[name], initial[name])


def test_ema_average_is_what_validation_scores(data):
    X, y = data
    X_val, y_val = X[:20], y[:20]
    clf = small_classifier(max_iter=2, ema_decay=0.5).fit(
        X[20:], y[20:], X_val=X_val, y_val=y_val
    )
    assert clf.best_score_ == pytest.approx(clf.score(X_val, y_val))


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5])
def test_bad_ema_decay_is_refused(data, value):
    X, y = data
    with pytest.raises(ValueError, match="ema_decay"):
        small_classifier(ema_decay=value).fit(X, y)


# ------------------------------------------------------------- composition
def test_methods_compose_with_warmup_cosine(data):
    X, y = data
    clf = small_classifier(
        max_iter=4,
        lr=1e-3,
        layer_lr_decay=0.5,
        warmup_epochs=1,
        lr_schedule="cosine",
        freeze_epochs=1,
        label_smoothing=0.1,
        ema_decay=0.9,
        class_weight="balanced",
        scoring="balanced_accuracy",
        early_stopping=True,
        n_iter_no_change=10,
    ).fit(X, y)
    fc_rates = [record["lr_fc"] for record in clf.history_]
    # Warm-up at half the rate, then the cosine from the peak.
    assert fc_rates[0] == pytest.approx(5e-4)
    assert fc_rates[1] == pytest.approx(1e-3)
    assert fc_rates[1] > fc_rates[2] > fc_rates[3] > 0
    assert clf.history_[0]["lr_layer4"] == 0.0
    assert clf.history_[1]["lr_layer4"] == pytest.approx(5e-4)
    assert clf.best_score_ == max(r["val_score"] for r in clf.history_)
    assert clf.n_trainable_params_ == sum(p.numel() for p in clf.module_.parameters())


def test_balanced_class_weight_with_validation_missing_a_class(data):
    X, y = data
    on_two_classes = y < 2
    X_val, y_val = X[on_two_classes][:10], y[on_two_classes][:10]
    clf = small_classifier(max_iter=1, class_weight="balanced")
    clf.fit(X, y, X_val=X_val, y_val=y_val)
    assert clf.best_score_ is not None


def test_auto_layer_lr_decay_halves_rates_only_for_trained_weights(data, weights_file):
    X, y = data
    scratch = small_classifier(max_iter=1, validation_fraction=0).fit(X, y)
    rates = scratch.history_[0]
    assert rates["lr_stem"] == rates["lr_layer2"] == rates["lr_fc"] == 1e-3
    pretrained = small_classifier(
        max_iter=1, weights=str(weights_file), validation_fraction=0
    ).fit(X, y)
    rates = pretrained.history_[0]
    assert rates["lr_layer4"] == pytest.approx(rates["lr_fc"] / 2)
    assert rates["lr_stem"] == pytest.approx(rates["lr_fc"] / 32)
    assert scratch.get_params()["layer_lr_decay"] == "auto"
