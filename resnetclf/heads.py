"""Heads over the last stage's feature map: what the network reads from it.

A head is chosen with the estimator's ``head`` parameter. ``"linear"`` is
torchvision's own: average pooling and a ``Linear`` layer, one output per
class. Any other head is built as ``head(feature_channels, classes)`` and
receives the last stage's map ``(N, C, h, w)``; it returns ``(N,
len(classes))`` logits. It sits where torchvision's ``fc`` sits, so its
parameters keep the ``fc.`` prefix: stage groups, freezing, learning rates and
``freeze_epochs`` treat it as the head, whatever it is.

:class:`DigitSumHead` reads an image of ``n_digits`` handwritten digits whose
label is their sum. Each of ``n_digits`` slots attends to a part of the map
and classifies what it sees into 0..9 with weights shared by all slots; the
distribution of the sum is the convolution of the slots' distributions
(:func:`digit_sum_log_probs`), so cross-entropy on the sum label is the exact
likelihood of the observed sum, and the digits are learnt from sums alone.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DigitSumHead", "HEAD_NAMES", "digit_sum_log_probs", "resolve_head"]

# The names the ``head`` parameter takes as strings.
HEAD_NAMES = ("linear", "digit-sum")

# How sharply a slot's initial attention peaks on its column (see _DigitSumReader).
_COLUMN_SHARPNESS = 32.0


def digit_sum_log_probs(digit_log_probs: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the sum of independent digits.

    Parameters
    ----------
    digit_log_probs : torch.Tensor of shape (N, n_digits, n_values)
        Log-probability of each value ``0 .. n_values - 1`` of each digit.

    Returns
    -------
    sum_log_probs : torch.Tensor of shape (N, n_digits * (n_values - 1) + 1)
        ``log P(sum = s)`` for ``s = 0 ..`` the largest sum: the convolution of
        the digits' distributions, one digit at a time, in log space
        (``logsumexp`` over the ways to reach each sum), so that sums as
        unlikely as four nines stay finite. Batched; compute it in float32 or
        wider: half precision underflows.
    """
    if digit_log_probs.ndim != 3:
        raise ValueError(
            "digit_log_probs must have shape (N, n_digits, n_values); got "
            f"{tuple(digit_log_probs.shape)}"
        )
    n_values = digit_log_probs.shape[2]
    total = digit_log_probs[:, 0]
    for k in range(1, digit_log_probs.shape[1]):
        digit = digit_log_probs[:, k]
        # Row v: the sums so far shifted by v, plus log P(digit k = v).
        shifted = torch.stack(
            [
                F.pad(total, (v, n_values - 1 - v), value=-torch.inf)
                + digit[:, v : v + 1]
                for v in range(n_values)
            ],
            dim=1,
        )
        total = torch.logsumexp(shifted, dim=1)
    return total


class DigitSumHead:
    """A head that reads ``n_digits`` digits and predicts their sum.

    The label of an image is the sum of the ``n_digits`` digits it shows
    (the merged dataset's four digits, sums 0..36). The head learns to read
    each digit from those sums alone: every slot attends to a part of the last
    stage's map (its attention starts on the ``k``-th of ``n_digits`` equal
    columns, left to right, and learns where to look from the map's content
    and position), a ``Linear`` layer shared by the slots gives each slot's
    distribution over 0..9, and the sum's distribution is their convolution
    (:func:`digit_sum_log_probs`, in float32 with autocast off). The logit of
    each class is ``log P(sum = class)``.

    After a fit, :meth:`ResNetFineTuneClassifier.predict_digits` returns the
    digits read, left to right.

    Parameters
    ----------
    n_digits : int, default=4
        Digits per image. Every class must be an integer in
        ``0 .. 9 * n_digits``.

    Examples
    --------
    >>> import numpy as np
    >>> from resnetclf import DigitSumHead
    >>> head = DigitSumHead(n_digits=2)
    >>> module = head(feature_channels=8, classes=np.arange(19))
    >>> module(torch.zeros(3, 8, 2, 6)).shape
    torch.Size([3, 19])
    """

    def __init__(self, n_digits: int = 4) -> None:
        self.n_digits = n_digits

    def get_params(self, deep: bool = True) -> dict:
        """The head's parameters, as scikit-learn's ``get_params``."""
        return {"n_digits": self.n_digits}

    def set_params(self, **params) -> DigitSumHead:
        """Set the head's parameters, as scikit-learn's ``set_params``."""
        for name, value in params.items():
            if name not in self.get_params():
                raise ValueError(f"DigitSumHead has no parameter {name!r}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        return f"DigitSumHead(n_digits={self.n_digits!r})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.get_params() == self.get_params()

    def __hash__(self) -> int:
        return hash((type(self), self.n_digits))

    def check(self, classes: np.ndarray) -> np.ndarray:
        """The classes as sum indices; a ValueError if some cannot be a sum."""
        n = self.n_digits
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"DigitSumHead's n_digits must be an int >= 1; got {n!r}")
        classes = np.asarray(classes)
        largest = 9 * int(n)
        as_numbers = classes.astype(float, copy=False) if classes.dtype.kind in (
            "i", "u", "f", "b"
        ) else None  # fmt: skip
        if as_numbers is None or not np.all(
            (as_numbers == np.round(as_numbers))
            & (as_numbers >= 0)
            & (as_numbers <= largest)
        ):
            shown = classes[:10].tolist()
            raise ValueError(
                f"head=DigitSumHead(n_digits={n}) needs classes that are sums of "
                f"{n} digits, integers in 0..{largest}; y has {shown}"
                f"{' ...' if len(classes) > 10 else ''}"
            )
        return as_numbers.astype(np.int64)

    def __call__(self, feature_channels: int, classes) -> nn.Module:
        """The head's module for a map of ``feature_channels`` and ``classes``."""
        sums = self.check(classes)
        return _DigitSumReader(int(feature_channels), int(self.n_digits), sums)


class _DigitSumReader(nn.Module):
    """The module of :class:`DigitSumHead`: slots over the map, digits, sum."""

    def __init__(self, channels: int, n_digits: int, sums: np.ndarray) -> None:
        super().__init__()
        self.n_digits = n_digits
        # Where each slot looks: from the content and the position (x, x^2,
        # y, y^2 of each cell, in [0, 1]) of every cell of the map.
        self.where = nn.Linear(channels + 4, n_digits)
        self.digit = nn.Linear(channels, 10)
        with torch.no_grad():
            # A slot starts on its column: logit -s (x - c)^2, no content.
            centres = (torch.arange(n_digits) + 0.5) / n_digits
            self.where.weight.zero_()
            self.where.weight[:, channels] = 2 * _COLUMN_SHARPNESS * centres
            self.where.weight[:, channels + 1] = -_COLUMN_SHARPNESS
            self.where.bias.copy_(-_COLUMN_SHARPNESS * centres**2)
        # Not in the state dict: it follows from the classes.
        self.register_buffer("sums", torch.as_tensor(sums), persistent=False)

    def _cells(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The map's cells as ``(N, h*w, C)``, and their positions ``(h*w, 4)``."""
        _, _, height, width = feature_map.shape
        device, dtype = feature_map.device, feature_map.dtype
        ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        x, y = x.reshape(-1), y.reshape(-1)
        positions = torch.stack([x, x * x, y, y * y], dim=1)
        return feature_map.flatten(2).transpose(1, 2), positions

    def attention(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Each slot's attention over the map's cells, ``(N, n_digits, h*w)``."""
        cells, positions = self._cells(feature_map)
        # shape[0], not len(): an ONNX export keeps the batch size symbolic.
        positions = positions.expand(cells.shape[0], -1, -1)
        logits = self.where(torch.cat([cells, positions], dim=2))
        return logits.transpose(1, 2).softmax(dim=2)

    def digit_logits(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Each slot's logits over 0..9, ``(N, n_digits, 10)``."""
        cells, _ = self._cells(feature_map)
        slots = self.attention(feature_map) @ cells
        return self.digit(slots)

    def read_digits(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The most likely digit of each slot, slots ordered left to right by
        the centre of their attention: ``(N, n_digits)``."""
        attention = self.attention(feature_map).float()
        width = feature_map.shape[3]
        x = (torch.arange(width, device=attention.device) + 0.5) / width
        centres = attention @ x.repeat(feature_map.shape[2])
        order = centres.argsort(dim=1)
        digits = self.digit_logits(feature_map).argmax(dim=2)
        return digits.gather(1, order)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        logits = self.digit_logits(feature_map)
        # P(sum = 36) = p9^4 underflows in half precision.
        with _autocast_off(feature_map.device):
            log_probs = F.log_softmax(logits.float(), dim=2)
            return digit_sum_log_probs(log_probs).index_select(1, self.sums)


def _autocast_off(device: torch.device):
    """Autocast off on ``device`` (the meta device, where shapes are probed,
    has no autocast)."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def resolve_head(head):
    """The head the ``head`` parameter names: None for torchvision's linear
    head, else an object called as ``head(feature_channels, classes)``."""
    if isinstance(head, str):
        if head == "linear":
            return None
        if head == "digit-sum":
            return DigitSumHead()
        raise ValueError(
            f"head must be one of {', '.join(map(repr, HEAD_NAMES))}, a "
            f"DigitSumHead or a callable head(feature_channels, classes); got {head!r}"
        )
    if not callable(head):
        raise TypeError(
            "head must be a name, a DigitSumHead or a callable "
            f"head(feature_channels, classes); got {type(head).__name__}"
        )
    return head
