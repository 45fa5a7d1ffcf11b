"""ResNetFineTuneClassifier: fit, predict, history, best epoch, sklearn fit."""

from __future__ import annotations

import copy
import io

import joblib
import numpy as np
import pytest
import torch
import torchvision
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

import resnetclf._base as estimator_module
from conftest import (
    assert_same_state,
    fitted_state,
    predicting_in_fp32,
    small_classifier,
)
from resnetclf._acceleration.devices import cudnn_autotuned
from resnetclf._param_groups import STAGES


def test_fit_sets_fitted_attributes(fitted):
    clf, X, y, _ = fitted
    assert list(clf.classes_) == [0, 1, 2]
    assert clf.n_iter_ == 3 == len(clf.history_)
    assert clf.image_shape_ == (12, 20, 1)
    assert clf.n_features_in_ == 12 * 20
    assert 1 <= clf.best_epoch_ <= 3
    assert isinstance(clf.module_, torch.nn.Module)
    assert clf.module_.fc.out_features == 3
    # Grayscale folded into a one-channel stem.
    assert clf.module_.conv1.in_channels == 1


def test_history_records(fitted):
    clf = fitted[0]
    for epoch, record in enumerate(clf.history_, start=1):
        assert record["epoch"] == epoch
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert np.isfinite(record[key])
        assert record["seconds"] > 0
        assert {f"lr_{s}" for s in STAGES} <= set(record)
    assert clf.best_score_ == max(r["val_accuracy"] for r in clf.history_)
    assert clf.history_[clf.best_epoch_ - 1]["val_accuracy"] == clf.best_score_


def test_checkpoint_is_torchvision_state_dict_of_restored_model(fitted):
    clf, X, _, path = fitted
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(state)  # torchvision's RGB layout, as is
    model.eval()
    # On channel-repeated, normalised input the file gives the restored model's
    # outputs.
    images = torch.from_numpy(X[:8]).float().div(255).unsqueeze(1)
    rgb = ((images - 0.5) / 0.5).repeat(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(model(rgb).double(), dim=1).numpy()
    # Float32 reference math: the restored model predicting in float32.
    proba = predicting_in_fp32(clf).predict_proba(X[:8])
    np.testing.assert_allclose(proba, expected, atol=1e-5)


def test_predict_proba_and_score(fitted):
    clf, X, y, _ = fitted
    proba = clf.predict_proba(X)
    assert proba.shape == (48, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    pred = clf.predict(X)
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(axis=1)])
    assert clf.score(X, y) == np.mean(pred == y)


@pytest.mark.parametrize(
    "as_layout",
    [
        lambda X: X[..., None],  # (N, H, W, 1)
        lambda X: X[:, None],  # (N, 1, H, W)
        lambda X: X.reshape(len(X), -1),  # flattened rows, read with image_shape_
        lambda X: X.astype(np.float64) / 255,  # floats in [0, 1]
    ],
    ids=["NHWC", "NCHW", "flat", "float"],
)
def test_layouts_give_the_same_predictions(fitted, as_layout):
    clf, X, _, _ = fitted
    # In float32: uint8 / 255 and float64 / 255 round apart by about 1e-8,
    # which bf16 rounding of the inputs can turn into 1e-3 on a probability.
    clf = predicting_in_fp32(clf)
    np.testing.assert_allclose(
        clf.predict_proba(as_layout(X)), clf.predict_proba(X), atol=1e-6
    )


def test_flat_input_with_image_shape_matches_images(tiny_images):
    X, y = tiny_images
    from_images = small_classifier(max_iter=1).fit(X, y)
    from_rows = small_classifier(max_iter=1, image_shape=(12, 20)).fit(
        X.reshape(48, -1), y
    )
    assert from_rows.image_shape_ == (12, 20, 1)
    # Validation rows are read with the same image shape.
    small_classifier(max_iter=1, image_shape=(12, 20)).fit(
        X.reshape(48, -1), y, X_val=X.reshape(48, -1)[:6], y_val=y[:6]
    )
    np.testing.assert_allclose(
        from_rows.predict_proba(X), from_images.predict_proba(X), atol=1e-6
    )


@pytest.mark.parametrize("channels_last", [True, False])
def test_rgb_images(tiny_images, channels_last):
    X, y = tiny_images
    rgb = np.stack([X, X // 2, 255 - X], axis=-1)  # (N, H, W, 3)
    if not channels_last:
        rgb = rgb.transpose(0, 3, 1, 2)
    clf = small_classifier(max_iter=1, normalization="imagenet").fit(rgb, y)
    assert clf.image_shape_ == (12, 20, 3)
    assert clf.module_.conv1.in_channels == 3
    other = (
        rgb.transpose(0, 2, 3, 1) if not channels_last else rgb.transpose(0, 3, 1, 2)
    )
    np.testing.assert_allclose(
        clf.predict_proba(other), clf.predict_proba(rgb), atol=1e-6
    )


def test_grayscale_with_imagenet_stats_repeats_channels(tiny_images):
    X, y = tiny_images
    clf = small_classifier(max_iter=1, normalization="imagenet").fit(X, y)
    # Per-channel statistics differ, so folding would not be exact.
    assert clf.module_.conv1.in_channels == 3


def test_string_labels(tiny_images):
    X, y = tiny_images
    names = np.array(["cat", "dog", "emu"])[y]
    clf = small_classifier(max_iter=1).fit(X, names)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    assert set(clf.predict(X)) <= set(names)


def test_same_random_state_same_history_and_predictions(tiny_images):
    X, y = tiny_images
    first = small_classifier(max_iter=1, rotation_degrees=15).fit(X, y)
    second = small_classifier(max_iter=1, rotation_degrees=15).fit(X, y)

    def without_time(history):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert without_time(first.history_) == without_time(second.history_)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    third = small_classifier(max_iter=1, rotation_degrees=15, random_state=1)
    third.fit(X, y)
    assert without_time(third.history_) != without_time(first.history_)


def test_fit_leaves_global_torch_rng_alone(tiny_images):
    X, y = tiny_images
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    small_classifier(max_iter=1).fit(X, y)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_rare_class_stays_in_training_with_warning(tiny_images):
    X, y = tiny_images
    y = y.copy()
    y[0] = 3  # a class with a single sample
    with pytest.warns(UserWarning, match="too few samples"):
        clf = small_classifier(max_iter=1).fit(X, y)
    assert 3 in clf.classes_


def test_no_validation_keeps_last_epoch(tiny_images):
    X, y = tiny_images
    clf = small_classifier(validation_fraction=0.0).fit(X, y)
    assert clf.best_score_ is None
    assert clf.best_epoch_ == clf.n_iter_ == 2
    assert clf.history_[-1]["val_accuracy"] is None


def test_layer_lr_decay_rates_in_history(tiny_images):
    X, y = tiny_images
    clf = small_classifier(max_iter=1, lr=1e-2, layer_lr_decay=0.5).fit(X, y)
    record = clf.history_[0]
    for k, stage in enumerate(reversed(STAGES)):
        assert record[f"lr_{stage}"] == pytest.approx(1e-2 * 0.5**k)


def test_no_weight_decay_on_norms_and_biases():
    from resnetclf._param_groups import StageParamGroups

    model = torchvision.models.resnet18(num_classes=3)
    groups = StageParamGroups(model, dict.fromkeys(STAGES, 0.1), weight_decay=0.5)
    for group in groups.groups:
        dims = {p.ndim for p in group["params"]}
        assert group["weight_decay"] == (0.5 if dims == {4} or dims == {2} else 0.0)
    n_params = sum(len(g["params"]) for g in groups.groups)
    assert n_params == len(list(model.parameters()))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "plateau"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizers_and_schedules_train(tiny_images, schedule, optimizer):
    X, y = tiny_images
    clf = small_classifier(
        max_iter=2,
        lr_schedule=schedule,
        optimizer=optimizer,
        warmup_epochs=1,
        layer_lr_decay=0.5,
    ).fit(X, y)
    assert clf.n_iter_ == 2
    # Warm-up: the first epoch runs at half the rate, all stages alike.
    first, second = clf.history_
    assert first["lr_fc"] == pytest.approx(second["lr_fc"] / 2)
    assert first["lr_layer4"] / first["lr_fc"] == pytest.approx(0.5)


def test_warm_start_continues(tiny_images):
    X, y = tiny_images
    clf = small_classifier(max_iter=1, warm_start=True).fit(X, y)
    module = clf.module_
    clf.fit(X, y)
    assert clf.n_iter_ == 2
    assert [r["epoch"] for r in clf.history_] == [1, 2]
    assert clf.module_ is module


def test_verbose_prints_one_line_per_epoch(tiny_images, capsys, monkeypatch):
    import resnetclf._progress as progress

    monkeypatch.setattr(progress, "_import_tqdm", lambda: None)
    X, y = tiny_images
    small_classifier(verbose=1).fit(X, y)
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1") and "val_accuracy" in lines[0]
    small_classifier(max_iter=1, verbose=0).fit(X, y)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_pickle_round_trip_before_and_after_fit(fitted):
    clf, X, _, _ = fitted
    unfitted = joblib.load(_dumped(clone(clf)))
    assert unfitted.get_params() == clone(clf).get_params()
    buffer = _dumped(clf)
    state = clf.__getstate__()
    assert "module_" not in state
    assert all(t.device.type == "cpu" for t in state["_module_state"].values())
    reloaded = joblib.load(buffer)
    np.testing.assert_array_equal(reloaded.predict_proba(X), clf.predict_proba(X))


def _dumped(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    buffer.seek(0)
    return buffer


def test_pipeline_grid_search_and_cross_val_score(tiny_images):
    X, y = tiny_images
    pipe = Pipeline(
        [
            ("flatten", FunctionTransformer(lambda a: a.reshape(len(a), -1))),
            ("clf", small_classifier(max_iter=1, image_shape=(12, 20))),
        ]
    )
    # Float sums depend on the thread count: the worker processes and this
    # one run at one torch thread each, so their scores must agree exactly.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
            scores = cross_val_score(pipe, X, y, cv=2, n_jobs=2)
        folds = list(StratifiedKFold(n_splits=2).split(X, y))
        expected = [
            clone(pipe).fit(X[tr], y[tr]).score(X[te], y[te]) for tr, te in folds
        ]
        np.testing.assert_array_equal(scores, expected)
        # The search picks the rate whose folds score best, as computed here;
        # lr=10 diverges, so the grid has a clear loser whatever the noise.
        grid = [10.0, 1e-2, 1e-3]
        search = GridSearchCV(small_classifier(max_iter=1), {"lr": grid}, cv=folds)
        search.fit(X, y)
        means = [
            np.mean(
                [
                    small_classifier(max_iter=1, lr=lr)
                    .fit(X[tr], y[tr])
                    .score(X[te], y[te])
                    for tr, te in folds
                ]
            )
            for lr in grid
        ]
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(search.cv_results_["mean_test_score"], means)
    assert search.best_params_["lr"] == grid[int(np.argmax(means))]
    assert search.best_estimator_.predict(X).shape == (48,)


def test_learns_real_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits(n_class=4)
    X = (digits.images * (255 / 16)).astype(np.uint8)
    X_train, X_test, y_train, y_test = train_test_split(
        X, digits.target, test_size=0.3, stratify=digits.target, random_state=0
    )
    clf = small_classifier(max_iter=3, batch_size=32, lr=3e-3, rotation_degrees=5)
    clf.fit(X_train, y_train)
    assert clf.score(X_test, y_test) > 0.8


def test_verbose_progress_bars_with_tqdm(tiny_images, capsys):
    pytest.importorskip("tqdm")
    X, y = tiny_images
    small_classifier(max_iter=1, verbose=2).fit(X, y)
    captured = capsys.readouterr()
    assert captured.out.startswith("epoch 1, train_loss=")  # the epoch line
    assert "epochs" in captured.err  # the bar over epochs
    assert "batch" in captured.err  # verbose=2: the bar over batches


@pytest.mark.parametrize(
    "torch_compile, mode, marks_steps",
    [(True, "default", False), ("reduce-overhead", "reduce-overhead", True)],
)
def test_torch_compile_wraps_the_training_forward(
    tiny_images, monkeypatch, torch_compile, mode, marks_steps
):
    # The real compile runs in test_cuda.py; here only what fit asks for.
    compiled, steps = [], []

    def record_compile(model, **kwargs):
        compiled.append((model, kwargs))
        return model

    monkeypatch.setattr(torch, "compile", record_compile)
    monkeypatch.setattr(
        torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1)
    )
    X, y = tiny_images
    clf = small_classifier(torch_compile=torch_compile, max_iter=1).fit(X, y)
    assert compiled == [(clf.module_, {"mode": mode, "dynamic": False})]
    # A CUDA-graph mode starts a step at each batch, training and validation.
    n_batches = 3 + 1  # 43 training images in batches of 16, 5 validation ones
    assert len(steps) == (n_batches if marks_steps else 0)
    small_classifier(max_iter=1).fit(X, y)
    assert len(compiled) == 1


def test_unknown_compile_mode_is_refused(tiny_images):
    X, y = tiny_images
    with pytest.raises(ValueError, match="torch_compile"):
        small_classifier(torch_compile="fastest").fit(X, y)


@pytest.fixture
def cudnn_flags():
    # The flags are plain Python settings: they can be read and set without a GPU.
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = False
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def test_cudnn_autotuning_is_scoped(cudnn_flags):
    with cudnn_autotuned(torch.device("cpu")):  # other devices: left alone
        assert not torch.backends.cudnn.benchmark
    with cudnn_autotuned(torch.device("cuda")):
        assert torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.benchmark
    with pytest.raises(RuntimeError), cudnn_autotuned(torch.device("cuda")):
        raise RuntimeError("a failed fit")
    assert not torch.backends.cudnn.benchmark


def test_cudnn_autotuning_respects_determinism(cudnn_flags):
    torch.backends.cudnn.deterministic = True
    with cudnn_autotuned(torch.device("cuda")):
        assert not torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = False
    torch.use_deterministic_algorithms(True)
    try:
        with cudnn_autotuned(torch.device("cuda")):
            assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)


def test_predict_leaves_the_fitted_estimator_as_it_was(fitted, monkeypatch):
    clf = copy.deepcopy(fitted[0])
    X = fitted[1]
    before = fitted_state(clf)
    proba = clf.predict_proba(X)
    clf.predict(X)
    assert_same_state(before, fitted_state(clf))
    # On a device other than module_'s, predict works on a copy made there.
    # Without a second real device here, torch's "meta" device stands in: the
    # copy's outputs hold no values, so predict fails when it reads them, but
    # only after everything that could move module_ has run.
    monkeypatch.setattr(
        estimator_module, "resolve_device", lambda device: torch.device("meta")
    )
    with pytest.raises((NotImplementedError, RuntimeError), match="meta"):
        clf.predict_proba(X)
    monkeypatch.undo()
    assert_same_state(before, fitted_state(clf))
    np.testing.assert_array_equal(clf.predict_proba(X), proba)
