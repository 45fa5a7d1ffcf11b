"""The estimator's photo options: input_size, augmentation, MixUp/CutMix, tta.

The building blocks (resizing, augmentations, mixing, views) have tests of
their own; these check what the estimator makes of them: the sizes the
network sees in fit, predict and the folded fast path, the defaults left as
they were, bad settings refused before training, the mixed loss reaching the
loop, test-time views that depend on each image alone, and saving.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import resnetclf._inference as inference
import resnetclf._training as training
from conftest import small_classifier
from resnetclf import load_model, save_model
from resnetclf._fit_setup import check_before_data
from resnetclf._mixing import mixed_cross_entropy
from resnetclf._resize import resolve_input_size
from resnetclf._tasks import MultiLabelClassification, SingleLabelClassification


@pytest.fixture(scope="module")
def photos():
    """24 colour 12x16 images, two classes."""
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(24, 12, 16, 3), dtype=np.uint8)
    y = np.arange(24) % 2
    return X, y


def keep_batch(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A user's augmentation that changes nothing (module level: it pickles)."""
    return batch


def _spy_on_training(monkeypatch) -> list[tuple]:
    """Record the shape of every training batch, and that mixing is on."""
    seen = []
    original = training.EpochLoop.train_step

    def spy(self, inputs, targets, weights=None, mixed=None):
        seen.append((tuple(inputs.shape), mixed is not None))
        return original(self, inputs, targets, weights, mixed)

    monkeypatch.setattr(training.EpochLoop, "train_step", spy)
    return seen


def _forward_shapes(model: torch.nn.Module) -> list[tuple]:
    shapes = []
    model.register_forward_pre_hook(lambda _, args: shapes.append(args[0].shape[1:]))
    return shapes


# ------------------------------------------------------------- the defaults
@pytest.mark.parametrize(
    "same",
    [
        dict(input_size=(12, 16)),  # the images' own size resizes nothing
        dict(input_size=12),  # nor does their own short side
        dict(augmentation="rotation", mixup_alpha=0.0, cutmix_alpha=0.0),
    ],
)
def test_settings_that_change_nothing_give_the_defaults_fit(photos, same):
    X, y = photos
    reference = small_classifier(max_iter=1).fit(X, y)
    other = small_classifier(max_iter=1, **same).fit(X, y)
    np.testing.assert_array_equal(other.predict_proba(X), reference.predict_proba(X))
    assert other.history_[0]["train_loss"] == reference.history_[0]["train_loss"]


def test_no_augmentation_is_rotation_by_zero_degrees(photos):
    X, y = photos
    none = small_classifier(max_iter=1, augmentation=None).fit(X, y)
    zero = small_classifier(max_iter=1, rotation_degrees=0).fit(X, y)
    np.testing.assert_array_equal(none.predict_proba(X), zero.predict_proba(X))


# ------------------------------------------------------------ input_size
@pytest.mark.parametrize(
    "input_size, expected",
    [(None, (12, 16)), (24, (24, 32)), ((20, 10), (20, 10)), ([9, 9], (9, 9))],
)
def test_the_network_sees_input_size_in_fit_and_predict(
    photos, monkeypatch, input_size, expected
):
    X, y = photos
    seen = _spy_on_training(monkeypatch)
    clf = small_classifier(max_iter=1, input_size=input_size).fit(X, y)
    assert clf.input_size_ == expected
    assert {shape[2:] for shape, _ in seen} == {expected}
    shapes = _forward_shapes(clf.module_)
    assert clf.predict_proba(X[:5]).shape == (5, 2)
    assert clf.predict(X[:3]).shape == (3,)
    assert {tuple(s) for s in shapes} == {(3, *expected)}


def test_folding_is_decided_on_the_resized_size(photos, monkeypatch):
    X, y = photos
    clf = small_classifier(max_iter=1, input_size=40, precision="fp32").fit(X, y)
    asked = []

    def always(model, n_images, height, width):
        asked.append((n_images, height, width))
        return True

    monkeypatch.setattr(inference, "worth_folding", always)
    folded = clf.predict_proba(X)
    assert asked == [(len(X), 40, 53)]
    monkeypatch.setattr(inference, "worth_folding", lambda *args: False)
    np.testing.assert_allclose(folded, clf.predict_proba(X), rtol=1e-4, atol=1e-5)
    # Test-time views are that many more images to predict.
    monkeypatch.setattr(inference, "worth_folding", always)
    clf.set_params(tta=3).predict_proba(X)
    assert asked[-1] == (3 * len(X), 40, 53)


def test_auto_reads_the_weights_resolution_before_anything_is_fetched():
    plan = check_before_data(
        small_classifier(weights="DEFAULT", input_size="auto"), image_channels=3
    )
    assert plan.input_size == 224
    assert resolve_input_size(plan.input_size, (40, 168)) == (224, 941)


# ------------------------------------------------------- refused settings
def _no_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(training.EpochLoop, "run", refuse)


def _reshaped(batch, generator):
    return batch[:, :, :4]


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(input_size=0), "input_size"),
        (dict(input_size=(12, 0)), "input_size"),
        (dict(input_size=(12, 16, 3)), "input_size"),
        (dict(input_size=True), "input_size"),
        (dict(input_size="big"), "input_size"),
        (dict(input_size="auto"), "input_size='auto'.*weights=None"),
        (dict(augmentation="colour"), "augmentation"),
        (dict(augmentation=3), "augmentation"),
        (dict(augmentation=_reshaped), "changed the batch's shape"),
        (dict(mixup_alpha=-0.1), "mixup_alpha"),
        (dict(cutmix_alpha=float("inf")), "cutmix_alpha"),
        (dict(tta=0), "tta"),
        (dict(tta=8), "tta=8: this model has 7 test-time views"),
        (dict(tta=6, rotation_degrees=0), "tta=6: this model has 5"),
        (dict(tta=15, augmentation="photo"), "tta=15: this model has 14"),
    ],
)
def test_bad_settings_are_refused_before_training(photos, monkeypatch, params, match):
    X, y = photos
    _no_training(monkeypatch)
    clf = small_classifier(max_iter=1, **params)
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)
    assert not hasattr(clf, "n_features_in_")  # a refused fit leaves no trace


# ---------------------------------------------------------- augmentation
def test_a_callable_gets_scaled_resized_batches_in_training_only(photos):
    X, y = photos
    seen = []

    def record(batch, generator):
        seen.append((tuple(batch.shape), batch.dtype, float(batch.min()),
                     float(batch.max()), generator))  # fmt: skip
        return batch.flip(-1)

    clf = small_classifier(
        max_iter=2, batch_size=8, input_size=24, augmentation=record
    ).fit(X, y)
    # A probe of two images before training, then each training batch.
    n_train = len(X) - round(0.1 * len(X))
    n_batches = -(-n_train // 8)
    assert len(seen) == 1 + 2 * n_batches
    assert seen[0][0] == (2, 3, 24, 32)
    assert all(shape[1:] == (3, 24, 32) for shape, *_ in seen)
    assert all(dtype == torch.float32 for _, dtype, *_ in seen)
    assert all(0 <= low and high <= 1 for _, _, low, high, _ in seen)
    # The fit's own generator, the same for every batch.
    assert len({id(g) for *_, g in seen[1:]}) == 1
    count = len(seen)
    clf.predict_proba(X)
    clf.set_params(tta=5).predict(X)
    assert len(seen) == count


def test_a_grayscale_callable_gets_one_channel(monkeypatch):
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(16, 10, 10), dtype=np.uint8)
    channels = set()

    def record(batch, generator):
        channels.add(batch.shape[1])
        return batch

    small_classifier(max_iter=1, augmentation=record).fit(X, np.arange(16) % 2)
    assert channels == {1}


@pytest.mark.parametrize("augmentation", ["photo", "rotation"])
def test_augmented_fits_repeat_with_their_seed(photos, augmentation):
    X, y = photos
    fits = [
        small_classifier(max_iter=1, augmentation=augmentation, random_state=3)
        .fit(X, y)
        .predict_proba(X)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*fits)


# ------------------------------------------------------------ mixing
@pytest.mark.parametrize(
    "params",
    [
        dict(mixup_alpha=0.4),
        dict(cutmix_alpha=1.0),
        dict(mixup_alpha=1.0, cutmix_alpha=1.0),
    ],
)
def test_the_mixed_loss_reaches_the_loop(photos, monkeypatch, params):
    X, y = photos
    seen = _spy_on_training(monkeypatch)
    losses = {"mixed": 0, "plain": 0}
    original_mixed = SingleLabelClassification.mixed_loss
    original_plain = SingleLabelClassification.loss

    def mixed(self, *args):
        losses["mixed"] += 1
        return original_mixed(self, *args)

    def plain(self, *args, **kwargs):
        losses["plain"] += kwargs.get("training", True)
        return original_plain(self, *args, **kwargs)

    monkeypatch.setattr(SingleLabelClassification, "mixed_loss", mixed)
    monkeypatch.setattr(SingleLabelClassification, "loss", plain)
    clf = small_classifier(max_iter=2, batch_size=8, **params).fit(X, y)
    assert seen and all(is_mixed for _, is_mixed in seen)
    assert losses == {"mixed": len(seen), "plain": 0}
    record = clf.history_[-1]
    assert np.isfinite(record["train_loss"]) and 0 <= record["train_accuracy"] <= 1
    assert record["val_loss"] is not None  # validation is never mixed


def test_no_mixing_keeps_the_plain_loss(photos, monkeypatch):
    X, y = photos
    seen = _spy_on_training(monkeypatch)
    small_classifier(max_iter=1).fit(X, y)
    assert seen and not any(is_mixed for _, is_mixed in seen)


def test_single_label_mixed_loss_is_the_mixed_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    perm, lam = torch.tensor([5, 4, 3, 2, 1, 0]), torch.tensor(0.3)
    weights = torch.rand(6)
    task = SingleLabelClassification(label_smoothing=0.1)
    expected = mixed_cross_entropy(logits, targets, perm, lam, weights, 0.1)
    assert torch.equal(task.mixed_loss(logits, targets, perm, lam, weights), expected)


def test_multi_label_mixed_loss_mixes_targets_and_weights():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    targets = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]]).float()
    perm, lam, weights = torch.tensor([1, 0, 3, 2]), torch.tensor(0.25), torch.rand(4)
    task = MultiLabelClassification(label_smoothing=0.2)
    mixed_targets = 0.25 * targets + 0.75 * targets[perm]
    mixed_weights = 0.25 * weights + 0.75 * weights[perm]
    expected = task.loss(logits, mixed_targets, mixed_weights)
    got = task.mixed_loss(logits, targets, perm, lam, weights)
    torch.testing.assert_close(got, expected)
    # No mixing (lam 1, or every image its own partner) is the plain loss.
    plain = task.loss(logits, targets, None)
    torch.testing.assert_close(task.mixed_loss(logits, targets, perm, 1.0, None), plain)
    same = torch.arange(4)
    torch.testing.assert_close(task.mixed_loss(logits, targets, same, lam, None), plain)


def test_multi_label_fits_mix_and_predict_with_views(photos):
    X, _ = photos
    Y = (np.random.RandomState(1).rand(len(X), 3) > 0.5).astype(int)
    clf = small_classifier(max_iter=1, mixup_alpha=0.4, cutmix_alpha=1.0, tta=3)
    clf.fit(X, Y)
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape
    np.testing.assert_array_equal(clf.predict(X), (proba > 0.5).astype(np.int64))


# -------------------------------------------------------- test-time views
@pytest.fixture(scope="module")
def photo_fit(photos):
    X, y = photos
    clf = small_classifier(max_iter=1, augmentation="photo", precision="fp32")
    return clf.fit(X, y)


@pytest.mark.parametrize("tta", [1, 2, 7, 14])
def test_views_of_an_image_depend_on_it_alone(photos, photo_fit, tta):
    X, _ = photos
    clf = photo_fit.set_params(tta=tta, batch_size=16)
    whole = clf.predict_proba(X)
    subset = [3, 17, 5]
    np.testing.assert_allclose(clf.predict_proba(X[subset]), whole[subset], atol=1e-5)
    np.testing.assert_allclose(
        clf.set_params(batch_size=5).predict_proba(X), whole, atol=1e-5
    )
    np.testing.assert_allclose(whole.sum(axis=1), 1.0)
    np.testing.assert_array_equal(
        clf.predict(X), clf.classes_[clf.predict_proba(X).argmax(axis=1)]
    )
    photo_fit.set_params(tta=None, batch_size=16)


def test_views_average_the_probabilities_of_each_view(photos, photo_fit):
    X, _ = photos
    clf = photo_fit
    one = clf.set_params(tta=1).predict_proba(X)
    alone = clf.set_params(tta=None).predict_proba(X)
    np.testing.assert_allclose(one, alone, atol=1e-6)
    # The second view after "photo" is the mirror image.
    two = clf.set_params(tta=2).predict_proba(X)
    mirrored = clf.set_params(tta=None).predict_proba(X[:, :, ::-1])
    np.testing.assert_allclose(two, (alone + mirrored) / 2, atol=1e-5)
    clf.set_params(tta=None)


def test_views_follow_the_training_augmentation(photos, photo_fit):
    X, y = photos
    assert (photo_fit._tta_flips, photo_fit._tta_degrees) == (True, 5.0)
    rotation = small_classifier(max_iter=1, rotation_degrees=3).fit(X, y)
    assert (rotation._tta_flips, rotation._tta_degrees) == (False, 3.0)
    with pytest.raises(ValueError, match="tta=8: this model has 7"):
        rotation.set_params(tta=8).predict_proba(X)


# --------------------------------------------------------------- saving
def test_saved_models_keep_the_settings(photos, tmp_path):
    X, y = photos
    clf = small_classifier(
        max_iter=1,
        input_size=(20, 24),
        augmentation="photo",
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        tta=4,
    ).fit(X, y)
    loaded = load_model(save_model(clf, tmp_path / "model"))
    assert loaded.get_params() == clf.get_params()
    assert loaded.input_size_ == (20, 24)
    assert (loaded._tta_flips, loaded._tta_degrees) == (True, 5.0)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_a_callable_augmentation_is_kept_with_pickle_not_saved(photos, tmp_path):
    X, y = photos
    clf = small_classifier(max_iter=1, augmentation=keep_batch).fit(X, y)
    with pytest.raises(ValueError, match="parameter 'augmentation'.*pickle"):
        save_model(clf, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    restored = pickle.loads(pickle.dumps(clf))
    assert restored.augmentation is keep_batch
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
