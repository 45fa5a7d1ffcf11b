"""make_digit_sums' gap and return_layout: tight layouts and their ground truth."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from resnetclf.datasets import DigitLayout, make_digit_sums


def _digest(*args, **kwargs) -> str:
    X, y = make_digit_sums(*args, **kwargs)[:2]
    return hashlib.sha256(X.tobytes() + y.tobytes()).hexdigest()[:16]


# Recorded with the generator as it was before gap and return_layout existed:
# the default layout must not change, bit for bit.
@pytest.mark.parametrize(
    ("args", "kwargs", "digest"),
    [
        ((20,), {"random_state": 0}, "3f179d0baabf1074"),
        ((7,), {"n_digits": 2, "image_shape": (16, 40), "random_state": 3},
         "f6c85e1a6ddcbce1"),
        ((9,), {"n_digits": 1, "image_shape": (40, 40), "random_state": 1,
                "digit_indices": np.arange(0, 1797, 2)}, "91e9aae72c2cfee6"),
        ((5,), {"random_state": np.random.RandomState(5)}, "da49a46684cbd66c"),
        ((20,), {"random_state": 0, "gap": None, "return_layout": True},
         "3f179d0baabf1074"),
    ],
)  # fmt: skip
def test_default_layout_unchanged(args, kwargs, digest):
    assert _digest(*args, **kwargs) == digest


def _ink(X: np.ndarray) -> np.ndarray:
    return X.sum(axis=1) > 0


def test_layout_is_the_ground_truth():
    X, y, layout = make_digit_sums(30, random_state=1, return_layout=True)
    assert isinstance(layout, DigitLayout)
    for field in layout:
        assert field.shape == (30, 4) and field.dtype == np.int64
    np.testing.assert_array_equal(layout.digits.sum(axis=1), y)
    assert (layout.size == 32).all()
    # Each square holds its digit's drawing, and its strokes are where said.
    from sklearn.datasets import load_digits

    images = load_digits().images
    for i in range(30):
        for k in range(4):
            t, left, s = layout.top[i, k], layout.left[i, k], layout.size[i, k]
            square = X[i, t : t + s, left : left + s]
            expected = np.rint(images[layout.digit_index[i, k]] * 255 / 16)
            np.testing.assert_array_equal(square[::4, ::4], expected)
            inked = np.flatnonzero(square.max(axis=0) > 0) + left
            assert (inked.min(), inked.max() + 1) == (
                layout.ink_start[i, k],
                layout.ink_stop[i, k],
            )


@pytest.mark.parametrize("gap", [0, 1, 5, (0, 2), (3, 6)])
def test_gap_between_strokes(gap):
    X, y, layout = make_digit_sums(40, random_state=2, gap=gap, return_layout=True)
    low, high = (gap, gap) if isinstance(gap, int) else gap
    gaps = layout.ink_start[:, 1:] - layout.ink_stop[:, :-1]
    assert gaps.min() >= low and gaps.max() <= high
    if low != high:
        assert len(np.unique(gaps)) > 1
    np.testing.assert_array_equal(layout.digits.sum(axis=1), y)
    # Every digit lies inside the image, and the strokes are all drawn.
    assert (layout.left >= 0).all() and (layout.left + layout.size <= 168).all()
    ink = _ink(X)
    for i in range(40):
        expected = np.zeros(168, dtype=bool)
        for k in range(4):
            expected[layout.ink_start[i, k] : layout.ink_stop[i, k]] = True
        np.testing.assert_array_equal(ink[i], expected)


def test_gap_zero_touches():
    X, _, layout = make_digit_sums(50, random_state=3, gap=0, return_layout=True)
    ink = _ink(X)
    for i in range(50):
        # One run of inked columns: no blank column separates the digits.
        inked = np.flatnonzero(ink[i])
        assert inked.max() - inked.min() + 1 == inked.size
        assert inked.min() == layout.ink_start[i, 0]
        assert inked.max() + 1 == layout.ink_stop[i, -1]


def test_gap_is_seeded_and_draws_from_the_pool():
    pool = np.arange(100, 200)
    a = make_digit_sums(10, random_state=4, gap=(0, 2), digit_indices=pool,
                        return_layout=True)  # fmt: skip
    b = make_digit_sums(10, random_state=4, gap=(0, 2), digit_indices=pool,
                        return_layout=True)  # fmt: skip
    np.testing.assert_array_equal(a[0], b[0])
    assert np.isin(a[2].digit_index, pool).all()


def test_gap_with_other_shapes():
    X, y, layout = make_digit_sums(
        5, n_digits=2, image_shape=(16, 40), random_state=0, gap=1,
        return_layout=True,
    )  # fmt: skip
    assert X.shape == (5, 16, 40)
    assert ((layout.ink_start[:, 1] - layout.ink_stop[:, 0]) == 1).all()
    X, y, layout = make_digit_sums(4, n_digits=1, random_state=0, gap=3,
                                   return_layout=True)  # fmt: skip
    assert layout.digits.shape == (4, 1)


@pytest.mark.parametrize(
    ("gap", "message"),
    [
        (-1, "integer >= 0"),
        ((3, 1), "0 <= min <= max"),
        ((-1, 2), "0 <= min <= max"),
        (1.5, "integer >= 0"),
        ("2", "integer >= 0"),
        (True, "integer >= 0"),
        ((1, 2, 3), "pair"),
        (14, "does not fit"),
        ((0, 14), "largest gap that fits is 13"),
    ],
)
def test_gap_refused(gap, message):
    with pytest.raises(ValueError, match=message):
        make_digit_sums(2, gap=gap)


def test_return_layout_refused():
    with pytest.raises(ValueError, match="return_layout"):
        make_digit_sums(2, return_layout="yes")
