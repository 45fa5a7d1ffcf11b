"""The figures: learning curves and the gallery of confident mistakes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.base import BaseEstimator  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

from conftest import small_classifier  # noqa: E402
from resnetclf import plot_confident_mistakes, plot_history  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image_panels(figure):
    return [ax for ax in figure.axes if ax.images]


class _StubEstimator(BaseEstimator):
    """A fitted RGB 'estimator' with chosen probabilities: no training needed."""

    def __init__(self, proba: np.ndarray) -> None:
        self.proba = proba
        self.classes_ = np.array(["cat", "dog", "owl"])
        self.image_shape_ = (6, 5, 3)

    def fit(self, X, y):  # check_is_fitted wants an estimator
        return self

    def predict_proba(self, X):
        return self.proba


def _proba_with_mistakes(y_index: np.ndarray, wrong: dict) -> np.ndarray:
    """Probabilities right for every sample except ``wrong``: index -> (class, p)."""
    proba = np.full((len(y_index), 3), 0.1)
    proba[np.arange(len(y_index)), y_index] = 0.8
    for index, (cls, p) in wrong.items():
        proba[index] = (1 - p) / 2
        proba[index, cls] = p
    return proba


def test_history_has_a_loss_and_an_accuracy_panel(fitted):
    figure = plot_history(fitted[0])
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss", "accuracy"]


def test_mistakes_sorted_by_confidence_with_their_labels():
    y_index = np.arange(10) % 3
    y = np.array(["cat", "dog", "owl"])[y_index]
    wrong = {2: (0, 0.6), 5: (1, 0.9), 7: (2, 0.7)}  # 5 is the most confident
    X = np.random.RandomState(0).randint(0, 256, (10, 6, 5, 3), dtype=np.uint8)
    stub = _StubEstimator(_proba_with_mistakes(y_index, wrong))
    figure = plot_confident_mistakes(stub, X, y, n_images=2)
    titles = [ax.get_title() for ax in _image_panels(figure)]
    assert len(titles) == 2
    assert titles[0].startswith("true owl, predicted dog") and "0.90" in titles[0]
    assert titles[1].startswith("true dog, predicted owl") and "0.70" in titles[1]
    assert "2 most confident of 3 mistakes on 10 images" in figure._suptitle.get_text()
    shown = _image_panels(figure)[0].images[0].get_array()
    np.testing.assert_allclose(shown, X[5] / 255)


def test_fewer_mistakes_than_asked_shows_them_all():
    y_index = np.arange(9) % 3
    y = np.array(["cat", "dog", "owl"])[y_index]
    stub = _StubEstimator(_proba_with_mistakes(y_index, {4: (0, 0.5)}))
    X = np.zeros((9, 3, 6, 5), dtype=np.float32)  # NCHW
    figure = plot_confident_mistakes(stub, X, y, n_images=16)
    assert len(_image_panels(figure)) == 1


def test_no_mistakes_says_so(fitted):
    clf, X, *_ = fitted
    figure = plot_confident_mistakes(clf, X, clf.predict(X))
    assert not _image_panels(figure)
    assert "No mistakes on these 48 images" in figure.axes[0].texts[0].get_text()


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "flat"])
def test_every_accepted_layout_shows_the_same_pixels(fitted, layout):
    clf, X, y, _ = fitted
    # Labels the model cannot all get right: every sample of the last class
    # relabelled with a label it never predicts, so each is a mistake.
    y_wrong = np.where(y == 2, 99, y)
    proba = clf.predict_proba(X)
    arranged = {
        "NHW": X,
        "NHWC": X[..., None],
        "NCHW": X[:, None],
        "flat": X.reshape(len(X), -1),
    }[layout]
    figure = plot_confident_mistakes(clf, arranged, y_wrong, y_proba=proba)
    reference = plot_confident_mistakes(clf, X, y_wrong, y_proba=proba)
    panels, expected = _image_panels(figure), _image_panels(reference)
    assert len(panels) == len(expected) > 0
    for got, want in zip(panels, expected):
        assert got.get_title() == want.get_title()
        np.testing.assert_array_equal(
            got.images[0].get_array(), want.images[0].get_array()
        )
    first = int(expected[0].get_title().rsplit("sample ", 1)[1].rstrip(")"))
    np.testing.assert_allclose(expected[0].images[0].get_array(), X[first] / 255)


def test_predict_proba_is_called_when_not_given(fitted):
    clf, X, y, _ = fitted
    computed = plot_confident_mistakes(clf, X, y)
    given = plot_confident_mistakes(clf, X, y, y_proba=clf.predict_proba(X))
    assert [ax.get_title() for ax in computed.axes] == [
        ax.get_title() for ax in given.axes
    ]


def test_bad_arguments_are_refused(fitted):
    clf, X, y, _ = fitted
    with pytest.raises(ValueError, match="n_images"):
        plot_confident_mistakes(clf, X, y, n_images=0)
    with pytest.raises(TypeError, match="n_images"):
        plot_confident_mistakes(clf, X, y, n_images=2.5)
    with pytest.raises(ValueError, match="n_cols"):
        plot_confident_mistakes(clf, X, y, n_cols=0)
    with pytest.raises(ValueError, match="48 images but y has 47"):
        plot_confident_mistakes(clf, X, y[:-1])
    with pytest.raises(ValueError, match="y_proba must have shape"):
        plot_confident_mistakes(clf, X, y, y_proba=np.ones((48, 2)))
    with pytest.raises(ValueError, match="fitted on"):
        plot_confident_mistakes(
            clf, X[:, :6], y, y_proba=np.full((48, 3), 1 / 3) + np.eye(3)[y % 3]
        )
    with pytest.raises(NotFittedError):
        plot_confident_mistakes(small_classifier(), X, y)
