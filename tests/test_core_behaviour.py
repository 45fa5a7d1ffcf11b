"""What users rely on, observed from outside the fit.

Each test looks at what a fit really did: the optimizer steps it took (their
parameter groups, rates and gradients, through torch's global optimizer hook),
the batches its model saw (through torch's global forward hook), and what
``predict``, ``score`` and the fitted attributes return. None of them reads a
value the test itself handed to the code under test. ``tools/mutation_check.py``
breaks each behaviour on purpose and checks that these tests notice.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torchvision
from sklearn.metrics import log_loss
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import head_only_classifier, predicting_in_fp32, small_classifier
from resnetclf._backbone import to_torchvision_layout
from resnetclf._checkpoint import load_state_dict_file

# ------------------------------------------------------------------ recorder


@dataclass
class Step:
    """One optimizer step: its groups, and which parameters had a gradient."""

    groups: list[dict]  # lr, weight_decay, names of the group's parameters
    names_with_grad: frozenset[str]


@dataclass
class FitRecord:
    """Everything a fit did that the recorder saw."""

    steps: list[Step] = field(default_factory=list)
    # (model.training, inputs) of every forward of a whole ResNet.
    forwards: list[tuple[bool, torch.Tensor]] = field(default_factory=list)
    model: torch.nn.Module | None = None

    def training_inputs(self) -> list[torch.Tensor]:
        return [x for training, x in self.forwards if training]

    def evaluation_inputs(self) -> list[torch.Tensor]:
        return [x for training, x in self.forwards if not training]

    def steps_by_epoch(self, n_epochs: int) -> list[list[Step]]:
        per_epoch, rest = divmod(len(self.steps), n_epochs)
        assert rest == 0 and per_epoch > 0, "epochs of unequal step counts"
        return [
            self.steps[i * per_epoch : (i + 1) * per_epoch] for i in range(n_epochs)
        ]


@contextlib.contextmanager
def recorded_fit():
    """Record the optimizer steps and model inputs of the fits run inside."""
    record = FitRecord()

    def on_forward(module, args):
        if isinstance(module, torchvision.models.ResNet):
            if module.training:
                record.model = module
            record.forwards.append((module.training, args[0].detach().clone()))

    def on_step(optimizer, args, kwargs):
        names = {id(p): n for n, p in record.model.named_parameters()}
        groups = [
            {
                "lr": float(g["lr"]),
                "weight_decay": float(g["weight_decay"]),
                "names": [names[id(p)] for p in g["params"]],
            }
            for g in optimizer.param_groups
        ]
        with_grad = frozenset(
            n for n, p in record.model.named_parameters() if p.grad is not None
        )
        record.steps.append(Step(groups, with_grad))

    forward_hook = register_module_forward_pre_hook(on_forward)
    step_hook = register_optimizer_step_pre_hook(on_step)
    try:
        yield record
    finally:
        forward_hook.remove()
        step_hook.remove()


def normalised(X: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 grayscale images as a one-channel model input, computed here."""
    return ((torch.from_numpy(X).float() / 255 - mean) / std).unsqueeze(1)


def nearest_samples(inputs: torch.Tensor, candidates: torch.Tensor):
    """For each input image, the closest candidate image and its distance."""
    distances = torch.cdist(inputs.flatten(1).double(), candidates.flatten(1).double())
    closest = distances.min(dim=1)
    return closest.indices.numpy(), closest.values.numpy()


def stage_of(name: str) -> str:
    head = name.split(".")[0]
    return "stem" if head in ("conv1", "bn1") else head


# ---------------------------------------------------- best epoch, predictions


def test_the_fixture_validation_score_changes_across_epochs(best_epoch_fits):
    # Without this, restoring the best epoch would be unobservable.
    clf = best_epoch_fits.three_epochs
    scores = [r["val_accuracy"] for r in clf.history_]
    assert len(set(scores)) > 1, scores
    assert clf.best_epoch_ == 1 < clf.n_iter_
    assert clf.best_score_ > clf.history_[-1]["val_accuracy"]


def test_fit_restores_the_best_epochs_weights(best_epoch_fits):
    fits = best_epoch_fits
    clf = fits.three_epochs
    assert clf.score(fits.X_val, fits.y_val) == clf.best_score_
    # The first epoch's weights, not the last's: a fit stopped after epoch 1
    # predicts the same, on every image.
    X = np.concatenate([fits.X_train, fits.X_val])
    np.testing.assert_allclose(
        clf.predict_proba(X), fits.one_epoch.predict_proba(X), rtol=0, atol=1e-6
    )


def test_checkpoint_file_holds_the_best_epoch(best_epoch_fits):
    fits = best_epoch_fits
    saved = load_state_dict_file(fits.checkpoint)
    expected = to_torchvision_layout(fits.one_epoch.module_)
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=1e-6, msg=key)


def test_validation_loss_is_that_of_the_unaugmented_images(best_epoch_fits):
    # history_'s val_loss of the kept epoch is the log loss of predict_proba:
    # validation images are scored as predict sees them, without rotation.
    fits = best_epoch_fits
    clf = fits.three_epochs
    record = clf.history_[clf.best_epoch_ - 1]
    expected = log_loss(fits.y_val, clf.predict_proba(fits.X_val), labels=[0, 1, 2])
    assert record["val_loss"] == pytest.approx(expected, rel=1e-4)


def test_predict_is_deterministic_and_sees_unrotated_normalised_images(
    best_epoch_fits,
):
    fits = best_epoch_fits
    clf = fits.three_epochs
    assert clf.rotation_degrees > 0  # augmentation was on during fit
    np.testing.assert_array_equal(
        clf.predict_proba(fits.X_val), clf.predict_proba(fits.X_val)
    )
    # Against float32 reference math: predicting in float32.
    first = predicting_in_fp32(clf).predict_proba(fits.X_val)
    model = clf.module_.eval()
    with torch.no_grad():
        logits = model(normalised(fits.X_val, 0.5, 0.5))
    np.testing.assert_allclose(
        first, torch.softmax(logits.double(), dim=1).numpy(), rtol=0, atol=1e-6
    )


# --------------------------------------- optimizer, freezing, batches, split

RATES = {
    "stem": 2e-3,
    "layer1": 0.0,
    "layer2": 0.0,
    "layer3": 3e-3,
    "layer4": 5e-3,
    "fc": 1e-2,
}
FROZEN = ("layer1", "layer2")
WEIGHT_DECAY = 1e-3
MEAN, STD = 0.2, 0.4
# A quarter of each class is a whole number. Six classes, so that a split
# that ignores them gets these exact shares only by a ~1% chance.
CLASS_SIZES = (12, 8, 8, 8, 4, 4)
N_EPOCHS = 4


@dataclass
class SpiedFit:
    clf: object
    record: FitRecord
    X: np.ndarray
    y: np.ndarray
    initial: dict[str, torch.Tensor]  # the weights file fit started from


@pytest.fixture(scope="module")
def spied_fit(tmp_path_factory) -> SpiedFit:
    """A recorded fit: two frozen stages, per-stage rates, a folded stem,
    custom normalisation, a stratified hold-out, a cosine schedule with warm-up.
    It starts from a weights file whose batch-norm statistics are not the
    defaults, so kept and re-estimated statistics tell apart."""
    rng = np.random.RandomState(1)
    y = rng.permutation(np.repeat(np.arange(len(CLASS_SIZES)), CLASS_SIZES))
    X = rng.randint(0, 256, size=(len(y), 12, 20)).astype(np.uint8)
    torch.manual_seed(1)
    initial = torchvision.models.resnet18(num_classes=1000).state_dict()
    for key, value in initial.items():
        if key.endswith("running_mean"):
            value.normal_(0.0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("spied") / "start.pth"
    torch.save(initial, path)
    clf = small_classifier(
        weights=str(path),
        max_iter=N_EPOCHS,
        batch_size=8,
        layer_lr_decay=RATES,
        weight_decay=WEIGHT_DECAY,
        normalization=(MEAN, STD),
        rotation_degrees=0,
        validation_fraction=0.25,
        lr_schedule="cosine",
        warmup_epochs=1,
    )
    with recorded_fit() as record:
        clf.fit(X, y)
    return SpiedFit(clf, record, X, y, initial)


def test_the_recorded_model_is_the_fitted_one(spied_fit):
    assert spied_fit.record.model is spied_fit.clf.module_
    assert len(spied_fit.record.steps) == len(spied_fit.record.training_inputs())


def test_frozen_stages_get_no_gradient_and_no_update(spied_fit):
    clf, record = spied_fit.clf, spied_fit.record
    names = [n for n, _ in clf.module_.named_parameters()]
    frozen = {n for n in names if stage_of(n) in FROZEN}
    trainable = set(names) - frozen
    assert frozen and trainable
    for step in record.steps:
        # Seen at each step, after backward: autograd never computed them.
        assert not step.names_with_grad & frozen
        assert step.names_with_grad == trainable
        assert not {n for g in step.groups for n in g["names"]} & frozen
    state = clf.module_.state_dict()
    for key in state:
        if stage_of(key) in FROZEN:
            torch.testing.assert_close(
                state[key], spied_fit.initial[key], rtol=0, atol=0, msg=key
            )


def test_frozen_batch_norms_keep_the_initial_statistics(spied_fit):
    state = spied_fit.clf.module_.state_dict()
    initial = spied_fit.initial
    buffers = [k for k in state if k.endswith(("running_mean", "running_var"))]
    for key in buffers:
        if stage_of(key) in FROZEN:
            assert torch.equal(state[key], initial[key]), key
    # The trained stages' statistics did move: the comparison can fail.
    assert not torch.equal(
        state["layer3.0.bn1.running_mean"], initial["layer3.0.bn1.running_mean"]
    )


def test_every_weight_trains_at_its_stages_rate(spied_fit):
    clf, record = spied_fit.clf, spied_fit.record
    params = dict(clf.module_.named_parameters())
    for step in record.steps:
        seen = [n for g in step.groups for n in g["names"]]
        assert sorted(seen) == sorted(n for n in params if stage_of(n) not in FROZEN)
        factors = set()
        for group in step.groups:
            stages = {stage_of(n) for n in group["names"]}
            assert len(stages) == 1, stages
            (stage,) = stages
            is_weight = {params[n].ndim > 1 for n in group["names"]}
            assert len(is_weight) == 1
            fold = 3 if stage == "stem" and is_weight == {True} else 1
            # The schedule scales every group by the same factor.
            factors.add(round(group["lr"] / (RATES[stage] * fold), 12))
            expected_decay = WEIGHT_DECAY / fold if is_weight == {True} else 0.0
            assert group["weight_decay"] == pytest.approx(expected_decay)
        assert len(factors) == 1, factors


def test_folded_stem_kernel_trains_at_three_times_the_stem_rate(spied_fit):
    clf, record = spied_fit.clf, spied_fit.record
    assert clf.module_.conv1.in_channels == 1  # gray, uniform normalisation
    for step in record.steps:
        rates = {tuple(g["names"]): g for g in step.groups}
        kernel = rates[("conv1.weight",)]
        norm = rates[("bn1.weight", "bn1.bias")]
        assert kernel["lr"] == pytest.approx(3 * norm["lr"])
        assert kernel["weight_decay"] == pytest.approx(WEIGHT_DECAY / 3)


def test_cosine_schedule_with_warmup_drives_the_optimizer(spied_fit):
    clf, record = spied_fit.clf, spied_fit.record
    # Warm-up epoch at half the rate, then cosine from the peak over 3 epochs.
    expected = [0.5, 1.0, 0.75, 0.25]
    for epoch, steps in enumerate(record.steps_by_epoch(N_EPOCHS)):
        for step in steps:
            for group in step.groups:
                stage = stage_of(group["names"][0])
                fold = 3 if group["names"] == ["conv1.weight"] else 1
                assert group["lr"] == pytest.approx(
                    RATES[stage] * fold * expected[epoch]
                )
        history = clf.history_[epoch]
        for stage, rate in RATES.items():
            assert history[f"lr_{stage}"] == pytest.approx(rate * expected[epoch])


def _sample_ids(spied_fit, inputs: torch.Tensor) -> np.ndarray:
    ids, distance = nearest_samples(inputs, normalised(spied_fit.X, MEAN, STD))
    # Each image is one of X, normalised with the estimator's (mean, std).
    assert distance.max() < 1e-4, distance.max()
    return ids


def test_training_batches_are_normalised_and_shuffled_each_epoch(spied_fit):
    record = spied_fit.record
    batches = [_sample_ids(spied_fit, x) for x in record.training_inputs()]
    per_epoch = len(batches) // N_EPOCHS
    orders = [
        np.concatenate(batches[i * per_epoch : (i + 1) * per_epoch])
        for i in range(N_EPOCHS)
    ]
    # Every epoch sees each training sample once, in a new order.
    for order in orders:
        assert sorted(order) == sorted(orders[0])
        assert len(set(order)) == len(order)
    assert len({tuple(order) for order in orders}) == N_EPOCHS
    assert not np.array_equal(orders[0], np.sort(orders[0]))


def test_internal_validation_split_is_stratified(spied_fit):
    record, y = spied_fit.record, spied_fit.y
    trained = np.unique(
        np.concatenate([_sample_ids(spied_fit, x) for x in record.training_inputs()])
    )
    validated = np.unique(
        np.concatenate([_sample_ids(spied_fit, x) for x in record.evaluation_inputs()])
    )
    assert not np.intersect1d(trained, validated).size
    assert len(trained) + len(validated) == len(y)
    # A quarter of each class held out.
    assert np.bincount(y[validated]).tolist() == [s // 4 for s in CLASS_SIZES]


def test_predict_normalises_with_the_fitted_statistics(spied_fit):
    clf, X = spied_fit.clf, spied_fit.X
    model = clf.module_.eval()
    with torch.no_grad():
        logits = model(normalised(X[:10], MEAN, STD))
    np.testing.assert_allclose(
        predicting_in_fp32(clf).predict_proba(X[:10]),  # float32 reference math
        torch.softmax(logits.double(), dim=1).numpy(),
        rtol=0,
        # float32 logits through another kernel order (channels_last, batch
        # norm folded for prediction) differ by about 1e-6; a wrong mean or
        # std moves these probabilities by orders of magnitude more.
        atol=1e-5,
    )


# ------------------------------------------------------------- augmentation


def test_augmentation_rotates_training_batches_only(tiny_images):
    X, y = tiny_images
    clf = head_only_classifier(max_iter=1, rotation_degrees=30)
    with recorded_fit() as record:
        clf.fit(X[:36], y[:36], X_val=X[36:], y_val=y[36:])
    plain = normalised(X, 0.5, 0.5)
    _, train_distance = nearest_samples(torch.cat(record.training_inputs()), plain)
    _, eval_distance = nearest_samples(torch.cat(record.evaluation_inputs()), plain)
    # Training images are rotated copies: none is an image of X as it is.
    assert train_distance.min() > 1e-2, train_distance.min()
    # Validation images are X's, unrotated.
    assert eval_distance.max() < 1e-4, eval_distance.max()


# ------------------------------------------------------------ labels, order


def test_unsorted_string_labels_keep_their_meaning(tiny_images):
    X, y = tiny_images
    names = np.array(["mole", "ant", "zebra"])  # first seen in this order
    labels = names[y]
    clf = head_only_classifier(max_iter=3, validation_fraction=0.0).fit(X, labels)
    assert clf.classes_.tolist() == ["ant", "mole", "zebra"]
    proba = clf.predict_proba(X)
    predicted = clf.predict(X)
    np.testing.assert_array_equal(predicted, clf.classes_[proba.argmax(axis=1)])
    # The head learnt brightness -> label: predictions name the right animals.
    assert np.mean(predicted == labels) > 0.8
    assert clf.score(X, labels) == np.mean(predicted == labels)


# ------------------------------------------------------------------ warm start


def test_warm_start_continues_from_the_fitted_weights(tiny_images):
    X, y = tiny_images
    clf = head_only_classifier(max_iter=2, warm_start=True).fit(X, y)
    before = clf.predict_proba(X)
    history = [dict(r) for r in clf.history_]
    # A second fit at a negligible rate: the weights must be the ones kept.
    clf.set_params(max_iter=1, lr=1e-12).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), before, rtol=0, atol=1e-6)
    assert clf.n_iter_ == 3
    assert [r["epoch"] for r in clf.history_] == [1, 2, 3]
    assert clf.history_[:2] == history


# ------------------------------------------------------- schedule, stopping


def test_plateau_divides_the_optimizers_rates_after_patience(tiny_images):
    X, y = tiny_images
    # tol=1 makes every epoch after the first a non-improvement; patience 1.
    clf = head_only_classifier(
        max_iter=4,
        lr=1e-2,
        lr_schedule="plateau",
        n_iter_no_change=2,
        tol=1.0,
        validation_fraction=0.25,
    )
    with recorded_fit() as record:
        clf.fit(X[:24], y[:24])
    for epoch, steps in enumerate(record.steps_by_epoch(4), start=1):
        rates = [g["lr"] for step in steps for g in step.groups]
        expected = 1e-2 if epoch < 4 else 1e-3
        assert rates == pytest.approx([expected] * len(rates)), epoch


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_stops_after_exactly_patience_epochs(tiny_images, patience):
    X, y = tiny_images
    # With tol=1, no epoch after the first can count as an improvement.
    clf = head_only_classifier(
        max_iter=10,
        early_stopping=True,
        n_iter_no_change=patience,
        tol=1.0,
        validation_fraction=0.25,
    ).fit(X[:24], y[:24])
    assert clf.n_iter_ == 1 + patience == len(clf.history_)
