"""The input layer, tried by hypothesis: shapes, dtypes, layouts, memory.

Each property states what any input of its kind gives: the documented layout
or model input, or a ValueError/TypeError that names the problem; never
another exception, and never the same images read differently because of how
they were laid out in memory. No property trains: the estimator ones use a
model fitted once (the session's ``fitted``) or stop ``fit`` at its first
training step.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from math import prod

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import small_classifier
from resnetclf import _training
from resnetclf._images import (
    _TORCH_NATIVE_DTYPES,
    ImageBatches,
    infer_layout,
    model_input_channels,
)

# CI runs the same examples every time; a developer's run explores new ones.
settings.register_profile(
    "ci", derandomize=True, deadline=None, database=None, print_blob=True
)
settings.register_profile("dev", deadline=None, database=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

REFUSED = (ValueError, TypeError)

NUMERIC_DTYPES = [
    np.uint8,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint16,
    np.uint32,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
]

# ------------------------------------------------------------ infer_layout

image_shapes = st.one_of(
    st.none(),
    st.tuples(st.integers(-2, 9), st.integers(-2, 9)),
    st.tuples(st.integers(-2, 9), st.integers(-2, 9), st.integers(-1, 4)),
    st.lists(st.integers(0, 9), max_size=4),
    st.tuples(st.booleans(), st.booleans()),
    st.tuples(st.floats(1, 4), st.floats(1, 4)),
    st.text(max_size=3),
    st.integers(0, 9),
)


@settings(max_examples=300)
@given(
    shape=st.lists(st.integers(0, 9), min_size=0, max_size=6),
    image_shape=image_shapes,
)
def test_infer_layout_gives_the_documented_layout_or_a_value_error(shape, image_shape):
    try:
        layout = infer_layout(shape, image_shape)
    except ValueError:
        event("refused")
        return
    event("accepted")
    # Accepted: the layout must be the one the docstring describes.
    assert layout.channels in (1, 3)
    # At least 1x1 (a 2-D (N, 0) is a 1x0 row here; the estimator's own
    # validation refuses 0 features before it gets this far).
    assert layout.height >= 1
    assert layout.width >= 1 or (len(shape) == 2 and image_shape is None)
    assert layout.height * layout.width * layout.channels == prod(shape[1:])
    if len(shape) == 2:
        if image_shape is None:
            assert layout.image_shape == (1, shape[1], 1)
        else:
            assert layout.image_shape == tuple(image_shape) + (1,) * (
                3 - len(image_shape)
            )
        assert layout.channels_last
    elif len(shape) == 3:
        assert layout.image_shape == (shape[1], shape[2], 1)
    else:
        assert len(shape) == 4
        # The last axis is the channels' when it has 1 or 3 entries.
        if shape[3] in (1, 3):
            assert layout.image_shape == (shape[1], shape[2], shape[3])
            assert layout.channels_last
        else:
            assert shape[1] in (1, 3)
            assert layout.image_shape == (shape[2], shape[3], shape[1])
            assert not layout.channels_last


# ------------------------------------------------------------ ImageBatches


@st.composite
def images(draw, max_side=7):
    """(N, H, W, C) images of any numeric dtype, their values in range."""
    n = draw(st.integers(1, 4))
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    channels = draw(st.sampled_from([1, 3]))
    dtype = np.dtype(draw(st.sampled_from(NUMERIC_DTYPES)))
    if dtype.kind == "f":
        # Mostly [0, 1], as documented; sometimes beyond (a warning, not an error).
        elements = st.floats(
            0, draw(st.sampled_from([1.0, 300.0])), width=min(32, 8 * dtype.itemsize)
        )
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(info.min, -1000), min(info.max, 1000))
    return draw(hnp.arrays(dtype, (n, height, width, channels), elements=elements))


def as_layout(base: np.ndarray, layout: str) -> tuple[np.ndarray, tuple | None]:
    """``base`` (N, H, W, C) in another layout; the image_shape a 2-D one needs."""
    n, height, width, channels = base.shape
    if layout == "NHWC":
        return base, None
    if layout == "NCHW":
        return base.transpose(0, 3, 1, 2), None
    if layout == "NHW":
        return base[..., 0], None
    return base.reshape(n, -1), (height, width, channels)  # flattened rows


def in_memory(X: np.ndarray, how: str, folder: str) -> np.ndarray:
    """The same values as ``X``, held another way in memory."""
    if how == "contiguous":
        return np.ascontiguousarray(X)
    if how == "fortran":
        return np.asfortranarray(X)
    if how == "strided":
        # Every other sample of a bigger array: a view with gaps.
        big = np.zeros((2 * len(X), *X.shape[1:]), dtype=X.dtype)
        big[::2] = X
        return big[::2]
    if how == "reversed":
        return np.ascontiguousarray(X[::-1])[::-1]  # negative strides
    # A read-only memory map of a file, as np.load(..., mmap_mode="r") gives.
    path = os.path.join(folder, "images.dat")
    writable = np.memmap(path, dtype=X.dtype, mode="w+", shape=X.shape)
    writable[...] = X
    writable.flush()
    del writable
    return np.memmap(path, dtype=X.dtype, mode="r", shape=X.shape)


MEMORY = ["contiguous", "fortran", "strided", "reversed", "memmap"]


def expected_input(base: np.ndarray, mean, std, model_channels: int):
    """The model input the docs promise for ``base``, computed here in float64."""
    values = torch.from_numpy(base.astype(np.float64)).permute(0, 3, 1, 2)
    if base.dtype == np.uint8:
        values = values / 255
    if values.shape[1] != model_channels:
        values = values.expand(-1, model_channels, -1, -1)
    mean_t = torch.tensor(mean[:model_channels], dtype=torch.float64)
    std_t = torch.tensor(std[:model_channels], dtype=torch.float64)
    return (values - mean_t.view(1, -1, 1, 1)) / std_t.view(1, -1, 1, 1)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=images(),
    layout=st.sampled_from(["NHWC", "NCHW", "NHW", "flat"]),
    memory=st.sampled_from(MEMORY),
    stats=st.sampled_from([((0.5,) * 3, (0.5,) * 3), ((0.2, 0.4, 0.6), (0.3,) * 3)]),
    resident=st.sampled_from([None, False, True]),
    data=st.data(),
)
def test_any_layout_and_memory_give_the_same_model_input(
    base, layout, memory, stats, resident, data
):
    if layout == "NHW":
        assume(base.shape[3] == 1)
    X, image_shape = as_layout(base, layout)
    height, width, channels = base.shape[1:]
    if layout == "NCHW":
        # (N, C, H, W) with W in {1, 3} reads as (N, H', W', C'), as documented.
        assume(width not in (1, 3))
    mean, std = stats
    with tempfile.TemporaryDirectory() as folder:
        X = in_memory(X, memory, folder)
        inferred = infer_layout(X.shape, image_shape)
        assert inferred.image_shape == (height, width, channels)
        model_channels = model_input_channels(channels, mean, std)
        batches = ImageBatches(
            X, inferred, torch.device("cpu"), mean, std, model_channels, resident
        )
        indices = np.array(
            data.draw(st.lists(st.integers(0, len(X) - 1), min_size=1, max_size=5))
        )
        if resident and X.dtype not in _TORCH_NATIVE_DTYPES:
            # Forced residency needs a dtype torch holds; fit never forces it.
            with pytest.raises(TypeError, match="resident"):
                batches.get(indices)
            return
        got = batches.get(indices)
        del batches, X  # let the memory map go before its folder
    want = expected_input(base[indices], mean, std, model_channels)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------- the fitted estimator's predict


def _quiet(call, *args):
    with warnings.catch_warnings():
        # Floats beyond [0, 1] warn (documented); the value is what is tested.
        warnings.simplefilter("ignore", UserWarning)
        return call(*args)


@pytest.fixture(scope="module")
def reference(fitted):
    clf, X, _, _ = fitted
    return clf, X[:4], clf.predict_proba(X[:4])


@settings(
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    layout=st.sampled_from(["NHWC", "NCHW", "NHW", "flat"]),
    memory=st.sampled_from(MEMORY),
    dtype=st.sampled_from(["uint8", "float32", "float64", "float16"]),
    n=st.integers(1, 4),
)
def test_predict_reads_the_same_images_the_same_in_any_form(
    reference, layout, memory, dtype, n
):
    clf, X, proba = reference
    base = X[:n, :, :, None]  # (n, 12, 20, 1) uint8
    if dtype != "uint8":
        base = (base / 255).astype(dtype)  # floats are taken as already in [0, 1]
    images, _ = as_layout(base, layout)  # 2-D rows: read with image_shape_
    with tempfile.TemporaryDirectory() as folder:
        images = in_memory(images, memory, folder)
        got = clf.predict_proba(images)
        del images
    atol = 1e-3 if dtype == "float16" else 1e-5  # float16 rounds the pixels
    np.testing.assert_allclose(got, proba[:n], rtol=0, atol=atol)


ODD_DTYPES = [
    *NUMERIC_DTYPES,
    np.uint64,
    np.complex64,
    "datetime64[s]",
    "timedelta64[s]",
    "U1",
    "S1",
    object,
]


FITTED_FORMS = [(12, 20), (12, 20, 1), (1, 12, 20), (240,), (12, 20, 3), (20, 12)]


@st.composite
def any_arrays(draw):
    """Arrays of any small shape and dtype; half of them hold images of the
    fitted size (12 x 20, gray) in some layout, or nearly so."""
    if draw(st.booleans()):
        n = draw(st.sampled_from([0, 1, 2, 3, 3]))
        shape = (n, *draw(st.sampled_from(FITTED_FORMS)))
    else:
        ndim = draw(st.integers(0, 5))
        sides = [0, 1, 2, 3] + ([12, 20, 240] if ndim <= 3 else [])
        shape = tuple(draw(st.sampled_from(sides)) for _ in range(ndim))
    dtype = draw(st.sampled_from(ODD_DTYPES))
    values = draw(
        st.sampled_from(["zeros", "ones", "random", "random", "negative", "nan", "inf"])
    )
    X = np.zeros(shape, dtype=np.float64)
    if values == "ones":
        X[...] = 1
    elif values == "random":
        X[...] = np.random.default_rng(0).random(shape)
    elif values == "nan":
        X[...] = np.nan
    elif values == "inf":
        X[...] = np.inf
    elif values == "negative":
        X[...] = -3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nan -> int casts
        return X.astype(dtype)


@settings(
    max_examples=120,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(X=any_arrays())
def test_predict_gives_probabilities_or_refuses_clearly(reference, X):
    clf = reference[0]
    try:
        proba = _quiet(clf.predict_proba, X)
    except REFUSED as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("accepted")
    # Accepted only with the fitted image size, as many rows as images.
    assert proba.shape == (len(X), len(clf.classes_))
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)


class _TrainingStarted(Exception):
    """Raised in place of the first training step: the input was accepted."""


@settings(
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(X=any_arrays(), image_shape=st.sampled_from([None, (12, 20), (1, 240)]))
def test_fit_trains_or_refuses_clearly_before_training(monkeypatch, X, image_shape):
    def started(*args, **kwargs):
        raise _TrainingStarted

    monkeypatch.setattr(_training.EpochLoop, "train_step", started)
    y = np.arange(X.shape[0]) % 2 if X.ndim else np.zeros(1)
    clf = small_classifier(max_iter=1, image_shape=image_shape)
    try:
        _quiet(clf.fit, X, y)
    except REFUSED as exc:
        event(f"refused: {type(exc).__name__}")
        return
    except _TrainingStarted:
        event("trained")
        assert X.ndim in (2, 3, 4) and len(X) >= 2
        return
    raise AssertionError("fit neither trained nor refused")
