"""Warnings a user gets: images outside [0, 1], and where each warning points.

Every warning of the package must name the user's line (here: this file), not
a line inside ``resnetclf``, however deep the call that warns.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score

import resnetclf._training
from resnetclf import ResNetFineTuneClassifier
from resnetclf._images import warn_if_beyond_unit_range

RANGE_MESSAGE = "taken as already scaled to"


def _tiny(**params) -> ResNetFineTuneClassifier:
    defaults = dict(
        arch="resnet18", weights=None, max_iter=1, batch_size=32, random_state=0
    )
    return ResNetFineTuneClassifier(**{**defaults, **params})


def _data(n=24, scale=1.0, dtype=np.float32, seed=0):
    rng = np.random.RandomState(seed)
    X = (rng.rand(n, 8, 8) * scale).astype(dtype)
    return X, np.arange(n) % 3


def _recorded(match: str, call):
    """Run ``call``; return the warnings whose message contains ``match``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if match in str(w.message)]


@pytest.fixture(scope="module")
def fitted():
    X, y = _data()
    return _tiny(validation_fraction=0).fit(X, y)


def test_fit_warns_on_floats_above_one_at_the_callers_line():
    X, y = _data(scale=16.0)  # load_digits' range
    caught = _recorded(RANGE_MESSAGE, lambda: _tiny(validation_fraction=0).fit(X, y))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert caught[0].category is UserWarning
    assert message.startswith("X (float32) has values up to 15.")
    assert "X / 255" in message and "astype(np.uint8)" in message
    assert caught[0].filename == __file__


def test_predict_and_predict_proba_warn_on_floats_above_one(fitted):
    X, _ = _data(n=5, scale=255.0, dtype=np.float64, seed=1)
    for method in (fitted.predict, fitted.predict_proba):
        caught = _recorded(RANGE_MESSAGE, lambda: method(X))
        assert len(caught) == 1
        assert "up to 2" in str(caught[0].message)  # 2xx.x
        assert caught[0].filename == __file__


def test_warnings_through_scikit_learn_point_at_the_users_line(fitted):
    X, y = _data(n=6, scale=16.0, seed=3)
    # score and cross_validate call predict and fit from scikit-learn's code.
    caught = _recorded(RANGE_MESSAGE, lambda: fitted.score(X, y))
    assert [w.filename for w in caught] == [__file__]
    X, y = _data(n=24, scale=16.0)
    clf = _tiny(validation_fraction=0)
    caught = _recorded(RANGE_MESSAGE, lambda: cross_val_score(clf, X, y, cv=2))
    assert len(caught) == 4  # fit and predict, in each of the two folds
    assert {w.filename for w in caught} == {__file__}


def test_x_val_is_named_in_the_warning():
    X, y = _data()
    X_val, y_val = _data(n=6, scale=255.0, seed=2)
    caught = _recorded(
        RANGE_MESSAGE, lambda: _tiny().fit(X, y, X_val=X_val, y_val=y_val)
    )
    assert [str(w.message).split(" ")[0] for w in caught] == ["X_val"]
    assert caught[0].filename == __file__


@pytest.mark.parametrize(
    "X",
    [
        np.full((2, 4, 4), 255, dtype=np.uint8),  # scaled by 1/255: fine
        np.ones((2, 4, 4), dtype=np.float32),
        np.full((2, 4, 4), 1.0005),  # rounding of a user's own scaling
        np.full((2, 4, 4), -3.0),  # standardised images may be negative
        np.ones((2, 4, 4), dtype=bool),
        np.zeros((0, 4, 4)),
    ],
    ids=["uint8-255", "float-1", "float-1-rounded", "negative", "bool", "empty"],
)
def test_no_warning_within_the_unit_range(X):
    assert _recorded(RANGE_MESSAGE, lambda: warn_if_beyond_unit_range(X)) == []


@pytest.mark.parametrize("dtype", [np.float16, np.int16, np.int64])
def test_other_dtypes_above_one_warn(dtype):
    X = np.full((2, 4, 4), 3, dtype=dtype)
    caught = _recorded(RANGE_MESSAGE, lambda: warn_if_beyond_unit_range(X, "X"))
    assert len(caught) == 1 and f"X ({np.dtype(dtype)})" in str(caught[0].message)


def test_the_range_check_reads_a_read_only_array_without_copying_it():
    X = np.full((3, 4, 4), 16.0)
    X.setflags(write=False)
    with pytest.warns(UserWarning, match=RANGE_MESSAGE):
        assert warn_if_beyond_unit_range(X, "X") == 16.0


def test_unsplit_class_warning_points_at_the_caller():
    X, y = _data(n=25)
    y = np.r_[np.zeros(12, int), np.ones(12, int), [2]]  # class 2: one sample
    caught = _recorded("got no validation sample", lambda: _tiny().fit(X, y))
    assert len(caught) == 1
    assert caught[0].filename == __file__


def test_checkpoint_warning_points_at_the_caller(tmp_path, monkeypatch):
    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(resnetclf._training, "save_state_dict_atomic", failing_save)
    X, y = _data()
    clf = _tiny(validation_fraction=0, checkpoint_path=tmp_path / "w.pth")
    caught = _recorded("could not write the checkpoint", lambda: clf.fit(X, y))
    assert len(caught) == 1
    assert caught[0].category is RuntimeWarning
    assert caught[0].filename == __file__


def test_interrupt_warning_points_at_the_caller(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(resnetclf._training.EpochLoop, "run_epoch", interrupted)
    X, y = _data()
    caught = _recorded("training interrupted", lambda: _tiny().fit(X, y))
    assert len(caught) == 1
    assert caught[0].filename == __file__
