"""The family on the one fit core: the regressor and multi-label classification.

Small fits check what each task adds: how targets are checked and encoded,
the loss that reaches the loop, how outputs become predictions, the history's
measure and the default score. Accuracy lives in the benchmarks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

import resnetclf._tasks as tasks_module
from conftest import small_classifier
from resnetclf import ResNetFineTuneRegressor
from resnetclf._tasks import MultiLabelClassification, Regression


def small_regressor(**params) -> ResNetFineTuneRegressor:
    defaults = dict(
        arch="resnet18",
        weights=None,
        max_iter=2,
        batch_size=16,
        random_state=0,
        device="cpu",
    )
    return ResNetFineTuneRegressor(**{**defaults, **params})


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(0)
    return rng.randint(0, 256, size=(48, 12, 20), dtype=np.uint8)


# ------------------------------------------------------------------ regressor
def test_targets_are_learnt_standardised_and_mapped_back(images):
    # Targets far from 0 and 1: a network's outputs near 0 at the start must
    # come back near their mean, in their units.
    y = 1000.0 + 50.0 * images.mean(axis=(1, 2)) / 255
    reg = small_regressor().fit(images, y)
    assert reg.n_outputs_ == 1
    np.testing.assert_allclose(reg._target_mean, [y.mean()])
    np.testing.assert_allclose(reg._target_scale, [y.std()])
    predicted = reg.predict(images)
    assert predicted.shape == (48,)
    # Near the targets' mean, not near 0: mapped back from standardised units.
    assert abs(predicted.mean() - y.mean()) < 3 * y.std()
    standardised = reg._logits(images).double().numpy()[:, 0]
    np.testing.assert_allclose(predicted, standardised * y.std() + y.mean())


def test_history_records_mse_and_the_best_epoch_by_r2(images):
    y = images.mean(axis=(1, 2)) / 255
    reg = small_regressor(max_iter=3).fit(images, y)
    record = reg.history_[0]
    assert {"train_mse", "val_mse", "val_score"} <= set(record)
    assert "train_accuracy" not in record
    best = max(reg.history_, key=lambda r: r["val_score"])
    assert reg.best_epoch_ == best["epoch"]
    assert reg.best_score_ == pytest.approx(best["val_score"])


def test_default_score_is_r2_of_the_validation_part(images):
    y = images.mean(axis=(1, 2)) / 255
    rng = np.random.RandomState(1)
    X_val = rng.randint(0, 256, size=(16, 12, 20), dtype=np.uint8)
    y_val = X_val.mean(axis=(1, 2)) / 255
    reg = small_regressor(max_iter=1).fit(images, y, X_val=X_val, y_val=y_val)
    assert reg.best_score_ == pytest.approx(
        r2_score(y_val, reg.predict(X_val)), rel=1e-4, abs=1e-6
    )


def test_multi_output_targets_keep_their_columns(images):
    y = images.mean(axis=(1, 2)) / 255
    Y = np.c_[y, -100 * y, np.full_like(y, 7.0)]  # the last one constant
    reg = small_regressor(loss="huber").fit(images, Y)
    assert reg.n_outputs_ == 3
    predicted = reg.predict(images[:5])
    assert predicted.shape == (5, 3)
    # A constant target is its mean, whatever the network outputs.
    np.testing.assert_allclose(reg._target_scale[2], 1.0)
    assert predicted[:, 1].mean() < 0 < predicted[:, 0].mean()


def test_one_column_y_is_read_as_1d_with_a_warning(images):
    y = images.mean(axis=(1, 2)) / 255
    with pytest.warns(UserWarning, match="column-vector y"):
        reg = small_regressor(max_iter=1).fit(images, y[:, None])
    assert reg.predict(images[:2]).shape == (2,)


def test_huber_loss_reaches_the_loop(images, monkeypatch):
    seen = []
    original = torch.nn.functional.huber_loss

    def spy(*args, **kwargs):
        seen.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tasks_module.F, "huber_loss", spy)
    y = images.mean(axis=(1, 2))
    small_regressor(max_iter=1, loss="huber").fit(images, y)
    assert seen
    seen.clear()
    small_regressor(max_iter=1).fit(images, y)
    assert not seen


def test_warm_start_keeps_the_first_fits_standardisation(images):
    y = images.mean(axis=(1, 2))
    reg = small_regressor(max_iter=1, warm_start=True).fit(images, y)
    mean, scale = reg._target_mean.copy(), reg._target_scale.copy()
    reg.fit(images, y + 500)  # other targets: the outputs' units stay
    np.testing.assert_array_equal(reg._target_mean, mean)
    np.testing.assert_array_equal(reg._target_scale, scale)
    assert reg.n_iter_ == 2


@pytest.mark.parametrize(
    "params, y_of, match",
    [
        ({}, lambda y: np.r_[np.nan, y[1:]], "NaN"),
        ({"loss": "absolute"}, lambda y: y, "loss"),
        ({"head": "digit-sum"}, lambda y: y, "head"),
        ({"class_weight": "balanced"}, lambda y: y, "class_weight"),
    ],
)
def test_bad_input_is_refused_before_training(images, params, y_of, match, monkeypatch):
    import resnetclf._base as base_module

    def must_not_build(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(base_module, "build_resnet", must_not_build)
    y = images.mean(axis=(1, 2))
    with pytest.raises((ValueError, TypeError), match=match):
        small_regressor(**params).fit(images, y_of(y))


def test_regression_task_encodes_validation_targets_with_the_training_scale():
    task = Regression()
    outputs, targets = task.encode(np.array([1.0, 3.0, 5.0]))
    assert outputs.tolist() == [0]
    np.testing.assert_allclose(targets[:, 0].mean(), 0, atol=1e-7)
    val = task.encode_known(np.array([3.0]), outputs, "y_val")
    np.testing.assert_allclose(val, [[0.0]])
    with pytest.raises(ValueError, match="y_val"):
        task.encode_known(np.ones((2, 2)), outputs, "y_val")


# ---------------------------------------------------------------- multi-label
@pytest.fixture(scope="module")
def label_sets():
    rng = np.random.RandomState(2)
    return (rng.rand(48, 3) > 0.5).astype(int)


def test_multi_label_fit_predicts_indicators_and_label_probabilities(
    images, label_sets
):
    clf = small_classifier().fit(images, label_sets)
    assert clf.classes_.tolist() == [0, 1, 2]
    predicted, proba = clf.predict(images[:5]), clf.predict_proba(images[:5])
    assert predicted.shape == proba.shape == (5, 3)
    assert set(np.unique(predicted)) <= {0, 1}
    # Each label's own probability (sigmoid), not a distribution over labels.
    np.testing.assert_array_equal(predicted, (proba > 0.5).astype(int))
    assert {"train_f1_samples", "val_f1_samples"} <= set(clf.history_[0])
    assert 0.0 <= clf.score(images, label_sets) <= 1.0  # subset accuracy


def test_multi_label_loss_is_per_label_sigmoid_cross_entropy():
    task = MultiLabelClassification()
    outputs = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets)
    torch.testing.assert_close(task.loss(outputs, targets, None), expected)
    weights = torch.tensor([2.0, 0.0])
    per_sample = torch.nn.functional.binary_cross_entropy_with_logits(
        outputs, targets, reduction="none"
    ).mean(dim=1)
    torch.testing.assert_close(
        task.loss(outputs, targets, weights), (per_sample * weights).mean()
    )


def test_sample_f1_counts_each_label_and_empty_sets_as_right():
    task = MultiLabelClassification()
    outputs = torch.tensor([[1.0, 1.0, -1.0], [-1.0, -1.0, -1.0], [1.0, -1.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(
        task.hits(outputs, targets), torch.tensor([2 / 3, 1.0, 0.0])
    )


def test_multi_label_split_is_not_stratified_and_validation_labels_checked(
    images, label_sets
):
    rng = np.random.RandomState(3)
    X_val = rng.randint(0, 256, size=(8, 12, 20), dtype=np.uint8)
    with pytest.raises(ValueError, match="y_val"):
        small_classifier(max_iter=1).fit(
            images, label_sets, X_val=X_val, y_val=np.ones((8, 2), dtype=int)
        )
    clf = small_classifier(max_iter=1, scoring="f1_macro").fit(
        images, label_sets, X_val=X_val, y_val=label_sets[:8]
    )
    assert clf.best_score_ is not None


@pytest.mark.parametrize(
    "y, params, match",
    [
        (np.full((48, 3), 2), {}, "0 or 1"),
        (None, {"class_weight": "balanced"}, "class_weight"),
    ],
)
def test_bad_multi_label_input_is_refused_before_training(
    images, label_sets, y, params, match, monkeypatch
):
    import resnetclf._base as base_module

    def must_not_build(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(base_module, "build_resnet", must_not_build)
    with pytest.raises(ValueError, match=match):
        small_classifier(**params).fit(images, label_sets if y is None else y)


def test_regressor_mixes_targets_and_averages_test_time_views(images):
    y = images.mean(axis=(1, 2)) / 255
    reg = small_regressor(max_iter=1, mixup_alpha=0.4, cutmix_alpha=1.0).fit(images, y)
    plain = reg.predict(images[:6])
    reg.set_params(tta=3)
    views = reg._view_logits(images[:6]).double().numpy()[..., 0]
    assert views.shape == (3, 6)
    averaged = views.mean(axis=0) * reg._target_scale[0] + reg._target_mean[0]
    np.testing.assert_allclose(reg.predict(images[:6]), averaged, rtol=1e-6)
    np.testing.assert_allclose(views[0] * reg._target_scale[0] + reg._target_mean[0],
                               plain, rtol=1e-5, atol=1e-6)  # fmt: skip


def test_regression_mixed_loss_is_the_loss_of_mixed_targets():
    task = Regression(mean=np.zeros(1), scale=np.ones(1))
    outputs = torch.tensor([[0.5], [2.0], [-1.0]])
    targets = torch.tensor([[1.0], [0.0], [3.0]])
    perm, lam = torch.tensor([2, 0, 1]), torch.tensor(0.75)
    mixed = 0.75 * targets + 0.25 * targets[perm]
    torch.testing.assert_close(
        task.mixed_loss(outputs, targets, perm, lam, None),
        torch.nn.functional.mse_loss(outputs, mixed),
    )
