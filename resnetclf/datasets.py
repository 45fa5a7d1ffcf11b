"""Load the merged digit-sum dataset and make stand-in data with the same layout.

The *merged dataset* is stored as subsets in one folder: images in ``data0.npy``,
``data1.npy``, ... and labels in ``lab0.npy``, ``lab1.npy``, ... Each image is a
40x168 grayscale ``uint8`` picture of four handwritten digits side by side, and
its label is the sum of those digits (0..36, so 37 classes).

The real files are not shipped with this package. :func:`make_digit_sums`
composes images of the same kind from scikit-learn's bundled handwritten
digits (:func:`sklearn.datasets.load_digits`, no download needed), and
:func:`write_merged` saves them in the merged layout, so that
:func:`load_merged`, the examples and the tests can run end to end on files.
The same is available from the command line::

    resnetclf make-data --out DIR --n-samples 1000

For a task on real colour photographs, :func:`make_photo_patches` cuts
patches out of the photographs bundled with scikit-learn (and scikit-image,
when installed), labelled with the photograph they come from, with training
and test patches from disjoint regions.
"""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from sklearn.utils import check_random_state

__all__ = [
    "DigitLayout",
    "load_merged",
    "make_digit_sums",
    "make_photo_patches",
    "photo_names",
    "write_merged",
]

# np.load's "w+" mode would truncate the data file, so it is never allowed here.
_MMAP_MODES = (None, "r", "r+", "c")

# Side of the digits in sklearn.datasets.load_digits, and their largest value.
_DIGIT_SIDE = 8
_DIGIT_MAX = 16


def _data_path(data_dir: Path, index: int) -> Path:
    return data_dir / f"data{index}.npy"


def _label_path(data_dir: Path, index: int) -> Path:
    return data_dir / f"lab{index}.npy"


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= minimum."""
    # bool is an Integral, but passing True as a count is always a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer >= {minimum}; "
            f"found {value!r} of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; found {value!r}")
    return int(value)


def _check_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """Return 1-D labels as an in-memory int64 array, or raise ValueError.

    Integer labels are accepted as they are; floating-point labels only when every
    value is finite and whole (some tools save class labels as float).
    """
    if labels.ndim != 1:
        raise ValueError(
            f"{source}: expected 1-D integer labels of shape (n_samples,); "
            f"found an array of shape {labels.shape}"
        )
    if np.issubdtype(labels.dtype, np.integer):
        # np.array copies, so the result never aliases a memory-mapped label file.
        return np.array(labels, dtype=np.int64)
    if np.issubdtype(labels.dtype, np.floating):
        values = np.asarray(labels)
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise ValueError(
                f"{source}: expected integer labels; found {labels.dtype} values "
                "that are not all whole numbers"
            )
        return values.astype(np.int64)
    raise ValueError(f"{source}: expected integer labels; found dtype {labels.dtype}")


def _check_images(images: np.ndarray, source: str) -> None:
    if images.ndim not in (3, 4):
        raise ValueError(
            f"{source}: expected images of shape (n_samples, height, width) or "
            f"(n_samples, height, width, channels); found an array of shape "
            f"{images.shape}"
        )


def _load_npy(path: Path, mmap_mode: str | None) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except ValueError as exc:
        # np.load's own messages (pickled or object data, bad header) omit the path.
        raise ValueError(f"{path}: could not load as a numpy array: {exc}") from exc


def _resolve_subsets(data_dir: Path, subsets: int | Iterable[int] | None) -> list[int]:
    if subsets is None:
        if not _data_path(data_dir, 0).is_file():
            raise FileNotFoundError(f"missing file {_data_path(data_dir, 0)}")
        found = [0]
        while _data_path(data_dir, found[-1] + 1).is_file():
            found.append(found[-1] + 1)
        return found
    if isinstance(subsets, numbers.Integral) and not isinstance(subsets, bool):
        subsets = [subsets]
    indices = [_check_int("each entry of subsets", s, 0) for s in subsets]
    if not indices:
        raise ValueError("subsets must name at least one subset; found none")
    if len(set(indices)) != len(indices):
        raise ValueError(f"subsets must not repeat an index; found {indices}")
    return indices


def load_merged(
    data_dir: str | os.PathLike[str],
    subsets: int | Iterable[int] | None = None,
    mmap_mode: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load images and labels of the merged dataset from ``.npy`` files.

    Subset ``i`` is the pair ``data{i}.npy`` (images) and ``lab{i}.npy``
    (labels) in ``data_dir``. The subsets are concatenated in the order given.

    Parameters
    ----------
    data_dir : str or os.PathLike
        Folder holding the ``data{i}.npy`` and ``lab{i}.npy`` files.
    subsets : int or iterable of int, default=None
        Indices of the subsets to load, in the order they are concatenated. If
        None, every subset with a ``data{i}.npy`` file counting up from 0 is
        loaded: ``data0.npy``, then ``data1.npy`` if it exists, and so on,
        stopping at the first index with no ``data{i}.npy`` (so ``data0.npy``
        must exist, and a file after a gap, such as ``data3.npy`` with no
        ``data2.npy``, is not read).
    mmap_mode : {None, 'r', 'r+', 'c'}, default=None
        Passed to :func:`numpy.load` for every file. With a single subset the
        images are returned as the :class:`numpy.memmap` itself, without a
        copy. With several subsets, concatenating them necessarily builds one
        array in memory, so memory mapping then only avoids holding two copies
        of a subset while loading. ``'w+'`` is refused because it would
        overwrite the data file.

    Returns
    -------
    X : ndarray of shape (n_samples, height, width) or \
(n_samples, height, width, channels)
        The images, with the dtype they were saved with (``uint8`` for the
        merged dataset). A :class:`numpy.memmap` when ``mmap_mode`` is set and
        one subset is loaded.
    y : ndarray of shape (n_samples,), dtype int64
        The labels, always an in-memory copy. Integer labels are accepted, and
        so are floating-point labels whose values are all whole numbers.

    Raises
    ------
    FileNotFoundError
        If a ``data{i}.npy`` or ``lab{i}.npy`` file that is needed does not
        exist; the message names the file.
    ValueError
        If ``mmap_mode`` or ``subsets`` is invalid, or a file holds something
        else than expected: images that are not 3-D or 4-D, labels that are not
        1-D whole numbers, images and labels of different lengths, or a subset
        whose image shape (all but the first axis) differs from the first
        subset's. The message names the file and says what was found.
    TypeError
        If an entry of ``subsets`` is not an integer.

    See Also
    --------
    write_merged : Save arrays in this layout.
    make_digit_sums : Make stand-in data for the merged dataset.

    Examples
    --------
    >>> import tempfile
    >>> from resnetclf.datasets import load_merged, make_digit_sums, write_merged
    >>> X, y = make_digit_sums(6, random_state=0)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = write_merged(folder, X, y, n_subsets=3)
    ...     X_loaded, y_loaded = load_merged(folder)
    >>> X_loaded.shape, X_loaded.dtype, y_loaded.dtype
    ((6, 40, 168), dtype('uint8'), dtype('int64'))
    >>> bool((X_loaded == X).all() and (y_loaded == y).all())
    True
    """
    if mmap_mode not in _MMAP_MODES:
        raise ValueError(f"mmap_mode must be one of {_MMAP_MODES}; found {mmap_mode!r}")
    data_dir = Path(data_dir)
    indices = _resolve_subsets(data_dir, subsets)

    images_parts: list[np.ndarray] = []
    label_parts: list[np.ndarray] = []
    for index in indices:
        data_path = _data_path(data_dir, index)
        label_path = _label_path(data_dir, index)
        images = _load_npy(data_path, mmap_mode)
        labels = _load_npy(label_path, mmap_mode)
        _check_images(images, str(data_path))
        labels = _check_labels(labels, str(label_path))
        if len(images) != len(labels):
            raise ValueError(
                f"{data_path} holds {len(images)} images but {label_path} holds "
                f"{len(labels)} labels; they must have the same length"
            )
        if images_parts and images.shape[1:] != images_parts[0].shape[1:]:
            raise ValueError(
                f"{data_path}: images of shape {images.shape[1:]} do not match "
                f"the shape {images_parts[0].shape[1:]} of "
                f"{_data_path(data_dir, indices[0])}"
            )
        images_parts.append(images)
        label_parts.append(labels)

    if len(images_parts) == 1:
        # Returned as loaded, so a memory map stays a memory map.
        return images_parts[0], label_parts[0]
    return np.concatenate(images_parts), np.concatenate(label_parts)


@functools.lru_cache(maxsize=1)
def _digit_bank() -> tuple[np.ndarray, np.ndarray]:
    """Return load_digits' images as uint8 0..255 and their targets, read-only."""
    # Imported here so that loading files does not import the datasets module.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / _DIGIT_MAX)).astype(np.uint8)
    targets = digits.target.astype(np.int64)
    # The cache hands out the same arrays on every call: keep them immutable.
    images.flags.writeable = False
    targets.flags.writeable = False
    return images, targets


def _digit_scale(image_shape: tuple[int, int], n_digits: int) -> int:
    """Integer upscaling factor for the 8x8 digits in an image of this shape.

    About a fifth of the height and width is kept free, so that the digits can
    move vertically and have gaps between them, as in the merged dataset. For
    the default 40x168 image with four digits this gives 32x32 digits.
    """
    height, width = image_shape
    by_height = (height * 4 // 5) // _DIGIT_SIDE
    by_width = (width * 4 // 5) // (_DIGIT_SIDE * n_digits)
    return max(1, min(by_height, by_width))


class _Composition(NamedTuple):
    """Images composed by :func:`_compose_digit_sums`, with how they were made."""

    X: np.ndarray  # (n_samples, height, width) uint8
    y: np.ndarray  # (n_samples,) int64, sum of the digits
    digit_index: np.ndarray  # (n_samples, n_digits) rows of load_digits
    top: np.ndarray  # (n_samples, n_digits) first row of each digit
    left: np.ndarray  # (n_samples, n_digits) first column of each digit
    scale: int  # upscaling factor; each digit covers 8*scale x 8*scale pixels


class DigitLayout(NamedTuple):
    """Where :func:`make_digit_sums` put each digit: the ground truth.

    For evaluation only (say, of a segmentation): a model of the sum task must
    learn from the sums, never from these. Every field is an int64 array of
    shape ``(n_samples, n_digits)``, slots ordered left to right. Digit ``k``
    of image ``i`` is drawn in the square of rows ``top[i, k] : top[i, k] +
    size[i, k]`` and columns ``left[i, k] : left[i, k] + size[i, k]`` (its
    upscaled 8x8 image, blank margins included); its strokes cover columns
    ``ink_start[i, k] : ink_stop[i, k]``.

    Attributes
    ----------
    digits : ndarray of shape (n_samples, n_digits)
        The digit values 0..9; their row sums are the labels.
    top : ndarray of shape (n_samples, n_digits)
        First row of each digit's square.
    left : ndarray of shape (n_samples, n_digits)
        First column of each digit's square.
    size : ndarray of shape (n_samples, n_digits)
        Side of each digit's square in pixels (``8 * scale``, the same for all).
    ink_start, ink_stop : ndarray of shape (n_samples, n_digits)
        First and one past the last column holding ink of each digit.
    digit_index : ndarray of shape (n_samples, n_digits)
        The row of :func:`sklearn.datasets.load_digits` each digit was drawn
        from.
    """

    digits: np.ndarray
    top: np.ndarray
    left: np.ndarray
    size: np.ndarray
    ink_start: np.ndarray
    ink_stop: np.ndarray
    digit_index: np.ndarray


def _check_gap(gap: object, n_digits: int, width: int, side: int) -> tuple[int, int]:
    """``gap`` as ``(smallest, largest)`` gap in pixels, or a ValueError.

    The largest must fit whatever the digits: ``n_digits`` whole squares and
    ``n_digits - 1`` such gaps within the width.
    """
    expected = (
        "gap must be None, an integer >= 0 or a pair (min, max) of integers "
        "with 0 <= min <= max"
    )
    values = (gap, gap) if isinstance(gap, numbers.Integral) else gap
    try:
        low, high = values  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{expected}; found {gap!r}") from None
    if any(
        isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in (low, high)
    ):
        raise ValueError(f"{expected}; found {gap!r}")
    low, high = int(low), int(high)
    if not 0 <= low <= high:
        raise ValueError(f"{expected}; found {gap!r}")
    needed = n_digits * side + (n_digits - 1) * high
    if needed > width:
        raise ValueError(
            f"gap={gap!r} does not fit: {n_digits} digits of {side} px with "
            f"gaps of up to {high} px need {needed} columns; the image has "
            f"{width} (the largest gap that fits is "
            f"{(width - n_digits * side) // max(1, n_digits - 1)})"
        )
    return low, high


def _inked_columns(bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and one past the last inked column of each 8x8 digit of ``bank``."""
    inked = bank.max(axis=1) > 0
    blank = ~inked.any(axis=1)
    first = np.where(blank, 0, inked.argmax(axis=1))
    stop = np.where(blank, _DIGIT_SIDE, _DIGIT_SIDE - inked[:, ::-1].argmax(axis=1))
    return first.astype(np.int64), stop.astype(np.int64)


def _compose_digit_sums(
    n_samples: int,
    n_digits: int,
    image_shape: tuple[int, int],
    rng: np.random.RandomState,
    digit_indices: np.ndarray | None = None,
    gap: tuple[int, int] | None = None,
) -> _Composition:
    """Compose the images, returning the layout too so that tests can check it.

    ``gap`` is ``(smallest, largest)`` horizontal gap between neighbouring
    digits' strokes (inked columns), drawn uniformly per pair; None spreads
    the free width at random between the squares (the original layout, whose
    draws must not change).
    """
    bank, targets = _digit_bank()
    # Rows of load_digits a digit may be drawn from (all of them by default).
    pool = np.arange(len(bank)) if digit_indices is None else digit_indices
    height, width = image_shape
    scale = _digit_scale(image_shape, n_digits)
    side = _DIGIT_SIDE * scale
    # Upscale the ~1800 source digits once rather than every drawn copy.
    big_bank = bank.repeat(scale, axis=1).repeat(scale, axis=2)

    digit_index = pool[rng.randint(0, len(pool), size=(n_samples, n_digits))]
    top = rng.randint(0, height - side + 1, size=(n_samples, n_digits))
    free_width = width - n_digits * side
    if gap is None:
        # Split the free width at random between the left margin, the
        # n_digits - 1 gaps and the right margin; flooring keeps the total
        # within the free width, so the digits never overlap nor leave the
        # image.
        weights = rng.random_sample((n_samples, n_digits + 1))
        gaps = np.floor(weights / weights.sum(axis=1, keepdims=True) * free_width)
        left = np.cumsum(gaps[:, :n_digits], axis=1).astype(np.int64)
        left += np.arange(n_digits) * side
    else:
        # Each digit's strokes start ``gap`` columns after its left
        # neighbour's end, so squares may overlap (never strokes); then the
        # row of digits starts at a random column where it fits: each step
        # is at most side + gap, which _check_gap made fit.
        first, stop = _inked_columns(bank)
        ink_first = first[digit_index] * scale
        ink_stop = stop[digit_index] * scale
        between = rng.randint(gap[0], gap[1] + 1, size=(n_samples, n_digits - 1))
        steps = ink_stop[:, :-1] + between - ink_first[:, 1:]
        left = np.zeros((n_samples, n_digits), dtype=np.int64)
        left[:, 1:] = np.cumsum(steps, axis=1)
        spare = width - (left[:, -1] + side)
        left += np.floor(rng.random_sample(n_samples) * (spare + 1)).astype(np.int64)[
            :, None
        ]

    X = np.zeros((n_samples, height, width), dtype=np.uint8)
    sample = np.arange(n_samples)[:, None, None]
    offsets = np.arange(side)
    for slot in range(n_digits):
        rows = top[:, slot, None, None] + offsets[None, :, None]
        cols = left[:, slot, None, None] + offsets[None, None, :]
        digits = big_bank[digit_index[:, slot]]
        if gap is not None:
            # Overlapping squares: the brighter pixel wins.
            digits = np.maximum(X[sample, rows, cols], digits)
        X[sample, rows, cols] = digits
    y = targets[digit_index].sum(axis=1)
    return _Composition(X, y, digit_index, top, left, scale)


def _check_image_shape(image_shape: object, n_digits: int) -> tuple[int, int]:
    expected = (
        f"two positive integers (height, width) of at least "
        f"({_DIGIT_SIDE}, {_DIGIT_SIDE * n_digits}) to hold {n_digits} "
        f"{_DIGIT_SIDE}x{_DIGIT_SIDE} digits side by side"
    )
    try:
        values = tuple(image_shape)  # type: ignore[arg-type]
    except TypeError:
        values = ()
    if len(values) != 2 or any(
        isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values
    ):
        raise ValueError(f"image_shape must be {expected}; found {image_shape!r}")
    height, width = (int(v) for v in values)
    if height < _DIGIT_SIDE or width < _DIGIT_SIDE * n_digits:
        raise ValueError(f"image_shape must be {expected}; found {image_shape!r}")
    return height, width


def make_digit_sums(
    n_samples: int,
    n_digits: int = 4,
    image_shape: tuple[int, int] = (40, 168),
    random_state: int | np.random.RandomState | None = None,
    *,
    digit_indices: ArrayLike | None = None,
    gap: int | tuple[int, int] | None = None,
    return_layout: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, DigitLayout]:
    """Make images of handwritten digits side by side, labelled with their sum.

    A stand-in for the merged dataset built from real handwriting: each image
    holds ``n_digits`` digits drawn uniformly from the 1797 images of
    :func:`sklearn.datasets.load_digits`, placed left to right with random
    vertical offsets and random horizontal gaps on a black background.

    The 8x8 source digits are upscaled by the largest integer factor that
    leaves about a fifth of the height and width free (nearest neighbour), so
    the default 40x168 image holds four 32x32 digits; small images fall back to
    unscaled 8x8 digits. Pixel values 0..16 are scaled to 0..255.

    Parameters
    ----------
    n_samples : int
        Number of images, at least 1.
    n_digits : int, default=4
        Number of digits in each image, at least 1. Labels range over
        ``0 .. 9 * n_digits``.
    image_shape : tuple of (int, int), default=(40, 168)
        ``(height, width)`` of the images; at least ``(8, 8 * n_digits)``.
    random_state : int, RandomState instance or None, default=None
        Seeds the choice of digits and their placement; an int gives the same
        arrays on every call. See :term:`Glossary <random_state>`.
    digit_indices : array-like of int, default=None
        Rows of ``load_digits()`` that digits are drawn from; None draws from
        all 1797. Two disjoint sets make two tasks that share no handwritten
        image, e.g. one to pretrain a backbone on and one to fine-tune it on.
        Keyword-only.
    gap : int or tuple of (int, int), default=None
        Horizontal gap in pixels between the strokes of neighbouring digits
        (from the last inked column of one to the first of the next). None
        spreads the free width at random between the margins and the gaps
        between the digits' squares (the default layout, unchanged). An int
        gives every gap that width: 0 makes neighbouring digits touch, with
        no blank column between them. A pair ``(min, max)`` draws each gap
        uniformly from ``min .. max`` (inclusive), e.g. ``(0, 2)`` for tight
        layouts. The digits' squares may then overlap (their blank margins;
        the brighter pixel is kept), and the row of digits starts at a random
        column. The largest gap allowed is the one that fits whatever the
        digits' widths. Keyword-only.
    return_layout : bool, default=False
        Whether to also return the ground truth of the layout (which digit
        where), a :class:`DigitLayout`. For evaluation only, say of a
        segmentation; the task's label is the sum. Keyword-only.

    Returns
    -------
    X : ndarray of shape (n_samples, height, width), dtype uint8
        The images, values 0..255, digits bright on black.
    y : ndarray of shape (n_samples,), dtype int64
        The sum of the digits in each image.
    layout : DigitLayout
        Only with ``return_layout=True``: each digit's value and square,
        left to right.

    Raises
    ------
    TypeError
        If ``n_samples`` or ``n_digits`` is not an integer.
    ValueError
        If ``n_samples`` or ``n_digits`` is below 1, ``image_shape`` is not
        two integers large enough to hold the digits, ``digit_indices``
        names no row of ``load_digits``, ``gap`` is not None, an integer >= 0
        or a pair ``0 <= min <= max`` of integers, or its gaps leave no room
        for the digits, or ``return_layout`` is not a bool.

    See Also
    --------
    write_merged : Save the arrays in the merged dataset's file layout.

    Examples
    --------
    >>> from resnetclf.datasets import make_digit_sums
    >>> X, y = make_digit_sums(5, random_state=0)
    >>> X.shape, X.dtype, y.shape, y.dtype
    ((5, 40, 168), dtype('uint8'), (5,), dtype('int64'))
    >>> X2, y2 = make_digit_sums(5, random_state=0)
    >>> bool((X == X2).all() and (y == y2).all())
    True
    >>> X, y = make_digit_sums(3, n_digits=2, image_shape=(16, 40), random_state=0)
    >>> X.shape, int(y.max()) <= 18
    ((3, 16, 40), True)

    Touching digits, with the ground truth for evaluation:

    >>> X, y, layout = make_digit_sums(2, random_state=0, gap=0, return_layout=True)
    >>> bool((layout.digits.sum(axis=1) == y).all())
    True
    >>> bool((layout.ink_start[:, 1:] == layout.ink_stop[:, :-1]).all())
    True
    """
    n_samples = _check_int("n_samples", n_samples, 1)
    n_digits = _check_int("n_digits", n_digits, 1)
    shape = _check_image_shape(image_shape, n_digits)
    if not isinstance(return_layout, (bool, np.bool_)):
        raise ValueError(
            f"return_layout must be True or False; found {return_layout!r}"
        )
    side = _DIGIT_SIDE * _digit_scale(shape, n_digits)
    gaps = None if gap is None else _check_gap(gap, n_digits, shape[1], side)
    rng = check_random_state(random_state)
    pool = None if digit_indices is None else _check_digit_indices(digit_indices)
    composition = _compose_digit_sums(n_samples, n_digits, shape, rng, pool, gaps)
    if not return_layout:
        return composition.X, composition.y
    bank, targets = _digit_bank()
    first, stop = _inked_columns(bank)
    index, scale = composition.digit_index, composition.scale
    left = composition.left.astype(np.int64)
    layout = DigitLayout(
        digits=targets[index],
        top=composition.top.astype(np.int64),
        left=left,
        size=np.full_like(left, _DIGIT_SIDE * scale),
        ink_start=left + first[index] * scale,
        ink_stop=left + stop[index] * scale,
        digit_index=index.astype(np.int64),
    )
    return composition.X, composition.y, layout


def _check_digit_indices(digit_indices: ArrayLike) -> np.ndarray:
    n_digits = len(_digit_bank()[0])
    indices = np.asarray(digit_indices)
    if (
        indices.ndim != 1
        or indices.size == 0
        or not np.issubdtype(indices.dtype, np.integer)
        or indices.min() < 0
        or indices.max() >= n_digits
    ):
        raise ValueError(
            "digit_indices must be a non-empty 1-D array of integers in "
            f"[0, {n_digits}) (rows of load_digits); found {digit_indices!r:.80}"
        )
    return indices.astype(np.int64)


def write_merged(
    data_dir: str | os.PathLike[str],
    X: ArrayLike,
    y: ArrayLike,
    n_subsets: int = 3,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Save images and labels as the merged dataset's ``data{i}``/``lab{i}`` files.

    ``X`` and ``y`` are split in order into ``n_subsets`` consecutive parts of
    nearly equal size (:func:`numpy.array_split`); part ``i`` is written with
    :func:`numpy.save` to ``data{i}.npy`` and ``lab{i}.npy``. Reading the folder
    back with :func:`load_merged` gives the same arrays.

    Parameters
    ----------
    data_dir : str or os.PathLike
        Folder to write to; created, with its parents, if it does not exist.
    X : array-like of shape (n_samples, height, width) or \
(n_samples, height, width, channels)
        Images, saved with their dtype.
    y : array-like of shape (n_samples,)
        Integer labels (floats with whole values are accepted), saved as int64.
    n_subsets : int, default=3
        Number of subsets, from 1 to ``n_samples`` so that none is empty.
    overwrite : bool, default=False
        Whether to replace ``data{i}.npy``/``lab{i}.npy`` files that already
        exist.

    Returns
    -------
    paths : list of pathlib.Path
        The files written: ``data0.npy``, ``lab0.npy``, ``data1.npy``, ...

    Raises
    ------
    ValueError
        If ``X`` is not 3-D or 4-D, ``y`` is not 1-D whole numbers, their
        lengths differ, or ``n_subsets`` is out of range.
    TypeError
        If ``n_subsets`` is not an integer.
    FileExistsError
        If a file to be written exists and ``overwrite`` is False, or if
        ``data{n_subsets}.npy`` or ``lab{n_subsets}.npy`` exists (whatever
        ``overwrite`` says): :func:`load_merged` would read it as an extra
        subset, so it must be removed first. Nothing is written then.

    Examples
    --------
    >>> import tempfile
    >>> from resnetclf.datasets import make_digit_sums, write_merged
    >>> X, y = make_digit_sums(4, random_state=0)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     paths = write_merged(folder, X, y, n_subsets=2)
    >>> [path.name for path in paths]
    ['data0.npy', 'lab0.npy', 'data1.npy', 'lab1.npy']
    """
    X = np.asarray(X)
    _check_images(X, "X")
    y = _check_labels(np.asarray(y), "y")
    if len(X) != len(y):
        raise ValueError(
            f"X holds {len(X)} images but y holds {len(y)} labels; "
            "they must have the same length"
        )
    n_subsets = _check_int("n_subsets", n_subsets, 1)
    if n_subsets > len(X):
        raise ValueError(
            f"n_subsets must be at most the number of samples ({len(X)}) so that "
            f"no subset is empty; found {n_subsets}"
        )

    data_dir = Path(data_dir)
    targets = []
    for index in range(n_subsets):
        targets += [_data_path(data_dir, index), _label_path(data_dir, index)]
    # Check everything before writing anything, so a refusal leaves no mix of
    # old and new subsets behind.
    if not overwrite:
        existing = [path for path in targets if path.exists()]
        if existing:
            raise FileExistsError(
                f"{existing[0]} already exists; pass overwrite=True "
                "(--overwrite on the command line) to replace it"
            )
    for extra in (_data_path(data_dir, n_subsets), _label_path(data_dir, n_subsets)):
        if extra.exists():
            raise FileExistsError(
                f"{extra} exists and load_merged would read it as subset "
                f"{n_subsets} after the {n_subsets} subsets written now; remove it"
            )

    data_dir.mkdir(parents=True, exist_ok=True)
    parts = zip(np.array_split(X, n_subsets), np.array_split(y, n_subsets))
    for index, (images, labels) in enumerate(parts):
        np.save(_data_path(data_dir, index), images, allow_pickle=False)
        np.save(_label_path(data_dir, index), labels, allow_pickle=False)
    return targets


# ---------------------------------------------------------------- photo patches

# Photographs bundled with scikit-learn (needs Pillow to read them).
_SKLEARN_PHOTOS = ("china", "flower")
# Colour photographs bundled with scikit-image, each read by its own function
# of skimage.data. Its grayscale pictures are left out (a colour model would
# tell them apart by colour alone), and so are retina and hubble_deep_field,
# mostly black areas that a patch could come from either.
_SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle",
    "immunohistochemistry",
)


def photo_names(photos: str | Iterable[str] = "sklearn") -> list[str]:
    """The photographs :func:`make_photo_patches` draws from, in label order.

    Parameters
    ----------
    photos : {"sklearn", "all"} or iterable of str, default="sklearn"
        ``"sklearn"``: the two photographs of
        :func:`sklearn.datasets.load_sample_images`, ``china`` and
        ``flower``. ``"all"``: those and six colour photographs of
        scikit-image (``astronaut``, ``chelsea``, ``coffee``, ``rocket``,
        ``motorcycle``, ``immunohistochemistry``), which must be installed
        (``pip install "resnetclf[photos]"``). Or the names themselves, in
        the order of their labels.

    Returns
    -------
    list of str
        Name of class ``k`` at position ``k``.

    Raises
    ------
    ValueError
        If ``photos`` names no such set or photograph, repeats one, or names
        none.

    Examples
    --------
    >>> from resnetclf.datasets import photo_names
    >>> photo_names()
    ['china', 'flower']
    """
    known = _SKLEARN_PHOTOS + _SKIMAGE_PHOTOS
    if isinstance(photos, str):
        if photos == "sklearn":
            return list(_SKLEARN_PHOTOS)
        if photos == "all":
            return list(known)
        raise ValueError(
            "photos must be 'sklearn', 'all' or a list of photograph names "
            f"from {known}; found {photos!r}"
        )
    try:
        names = list(photos)
    except TypeError:
        raise ValueError(
            f"photos must be 'sklearn', 'all' or a list of names; found {photos!r}"
        ) from None
    unknown = [name for name in names if name not in known]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            "photos must name at least one photograph, each once, from "
            f"{known}; found {photos!r}"
        )
    return names


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """The photograph ``name`` as uint8 ``(H, W, 3)``, read-only."""
    if name in _SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        try:
            image = load_sample_image(f"{name}.jpg")
        except ImportError:
            # scikit-learn reads its JPEG files with Pillow, not one of its
            # own requirements.
            raise ImportError(
                f"reading scikit-learn's photograph {name!r} needs Pillow, "
                'which is not installed; pip install "resnetclf[photos]" (or '
                "pillow)"
            ) from None
    else:
        try:
            import skimage.data
        except ImportError:
            raise ImportError(
                f"the photograph {name!r} ships with scikit-image, which is not "
                'installed; pip install "resnetclf[photos]" (or scikit-image), '
                "or use photos='sklearn'"
            ) from None
        if name == "motorcycle":
            image = skimage.data.stereo_motorcycle()[0]
        else:
            image = getattr(skimage.data, name)()
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    # The cache hands out the same array on every call: keep it immutable.
    image.flags.writeable = False
    return image


class _Blocks(NamedTuple):
    """A photograph's checkerboard of blocks, those of one region."""

    top: np.ndarray  # first row of each block of the region
    left: np.ndarray  # first column of each block of the region


def _region_blocks(
    shape: tuple[int, ...], block: int, region: str, name: str, patch_size: int
) -> _Blocks:
    """The blocks of ``region`` in a photograph of ``shape``.

    Blocks of ``block`` pixels tile the photograph's centre; those with an
    even row plus column are the training region, the others the test
    region, the same whatever the seed.
    """
    height, width = shape[:2]
    rows, columns = height // block, width // block
    if rows * columns < 2:
        largest = max(
            side
            for side in range(1, max(height, width) // 2 + 1)
            if (height // (2 * side)) * (width // (2 * side)) >= 2
        )
        raise ValueError(
            f"patch_size={patch_size} is too large for the {height}x{width} "
            f"photograph {name!r}: it must hold two blocks of 2 * patch_size "
            f"pixels, one per region; the largest patch_size it allows is "
            f"{largest}"
        )
    row, column = np.divmod(np.arange(rows * columns), columns)
    wanted = (row + column) % 2 == (0 if region == "train" else 1)
    top = (height - rows * block) // 2 + row[wanted] * block
    left = (width - columns * block) // 2 + column[wanted] * block
    return _Blocks(top.astype(np.int64), left.astype(np.int64))


def make_photo_patches(
    n_samples: int,
    patch_size: int = 32,
    region: str = "train",
    random_state: int | np.random.RandomState | None = None,
    *,
    photos: str | Iterable[str] = "sklearn",
) -> tuple[np.ndarray, np.ndarray]:
    """Square patches of real photographs, labelled with the photograph they are from.

    A small task on real photographs that ship with the libraries (no
    download): which of a few photographs does a patch of it come from. Its
    images are colour, of any size, with the statistics of camera pictures,
    where :func:`make_digit_sums` gives grayscale strips.

    Each photograph is tiled with square blocks of ``2 * patch_size``
    pixels (the tiling centred, its leftover border unused), coloured as a
    checkerboard: blocks with an even row plus column form the ``"train"``
    region, the others the ``"test"`` region. A patch lies inside one block,
    at least ``patch_size // 8`` pixels from its edges, so no pixel is in
    both regions and a training patch is at least ``patch_size // 4`` pixels
    from any test patch, whatever the seeds of the two calls. The checkerboard
    spreads both regions over the whole photograph (sky, ground, subject).

    Classes are balanced: class ``k`` gets ``n_samples // n_classes``
    patches, plus one for the first ``n_samples % n_classes`` classes, in a
    random order. A patch's block is drawn uniformly from its photograph's
    blocks of the region, and its position uniformly within the block.
    Patches are copied at the photographs' own resolution; some are nearly
    uniform (sky), as in any crop of a photograph.

    Parameters
    ----------
    n_samples : int
        Number of patches, at least 1.
    patch_size : int, default=32
        Side of the patches in pixels, at least 8. Each photograph must hold
        two blocks of ``2 * patch_size``: up to 160 for the scikit-learn
        photographs (427x640), 112 with ``photos="all"`` (the smallest is
        300x451).
    region : {"train", "test"}, default="train"
        Which region of the photographs the patches come from.
    random_state : int, RandomState instance or None, default=None
        Seeds the labels' order and the patches' places; an int gives the
        same arrays on every call. See :term:`Glossary <random_state>`.
    photos : {"sklearn", "all"} or iterable of str, default="sklearn"
        Which photographs are the classes, see :func:`photo_names`; class
        ``k`` is ``photo_names(photos)[k]``. ``"all"`` needs scikit-image.
        Keyword-only.

    Returns
    -------
    X : ndarray of shape (n_samples, patch_size, patch_size, 3), dtype uint8
        The patches.
    y : ndarray of shape (n_samples,), dtype int64
        The index of the photograph each patch is from.

    Raises
    ------
    TypeError
        If ``n_samples`` or ``patch_size`` is not an integer.
    ValueError
        If ``n_samples`` is below 1, ``patch_size`` below 8 or too large
        for a photograph, ``region`` is neither ``"train"`` nor ``"test"``,
        or ``photos`` is not valid.
    ImportError
        If a photograph of scikit-image is asked for and scikit-image is not
        installed.

    See Also
    --------
    photo_names : The class names.

    Examples
    --------
    >>> from resnetclf.datasets import make_photo_patches, photo_names
    >>> X_train, y_train = make_photo_patches(40, random_state=0)
    >>> X_test, y_test = make_photo_patches(20, region="test", random_state=1)
    >>> X_train.shape, X_train.dtype, y_train.dtype
    ((40, 32, 32, 3), dtype('uint8'), dtype('int64'))
    >>> [int((y_train == k).sum()) for k in range(len(photo_names()))]
    [20, 20]
    """
    n_samples = _check_int("n_samples", n_samples, 1)
    patch_size = _check_int("patch_size", patch_size, 8)
    if region not in ("train", "test"):
        raise ValueError(f"region must be 'train' or 'test'; found {region!r}")
    names = photo_names(photos)
    images = [_photo(name) for name in names]
    block = 2 * patch_size
    blocks = [
        _region_blocks(image.shape, block, region, name, patch_size)
        for image, name in zip(images, names)
    ]
    rng = check_random_state(random_state)
    y = rng.permutation(np.arange(n_samples) % len(names)).astype(np.int64)
    margin = patch_size // 8
    X = np.empty((n_samples, patch_size, patch_size, 3), dtype=np.uint8)
    offsets = np.arange(patch_size)
    for label, (image, region_blocks) in enumerate(zip(images, blocks)):
        where = np.flatnonzero(y == label)
        chosen = rng.randint(0, len(region_blocks.top), size=len(where))
        # Positions inside the block, keeping the margin on both sides.
        shift = rng.randint(
            margin, block - patch_size - margin + 1, size=(2, len(where))
        )
        top = region_blocks.top[chosen] + shift[0]
        left = region_blocks.left[chosen] + shift[1]
        rows = top[:, None, None] + offsets[None, :, None]
        cols = left[:, None, None] + offsets[None, None, :]
        X[where] = image[rows, cols]
    return X, y
