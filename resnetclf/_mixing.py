"""MixUp and CutMix of training batches on the device, and the loss that goes with them.

MixUp blends each image with another of the batch, ``lam * x_i + (1 - lam) *
x_perm[i]``; CutMix pastes a box of the other image into it. Either way the
loss is the same mixture of the two images' losses (:func:`mixed_cross_entropy`),
so the targets themselves are never mixed. One ``lam`` and one permutation per
batch, as in timm and the papers.

Everything is drawn from the caller's :class:`torch.Generator` on the batch's
device and stays there: no value comes back to the host, so mixing adds no
synchronisation to a training step. That is why the Beta draw is made here
(``torch.distributions`` draws from torch's global random state) and why the
choice between MixUp and CutMix, and the CutMix box, are tensors rather than
Python branches and slices.

Mixing is linear in the pixels (a blend or a paste with weights summing to 1),
so it may be applied to normalised batches, after every other augmentation.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["MixedBatch", "mix_batch", "mixed_cross_entropy"]

# Candidates per Gamma draw: Marsaglia and Tsang's method accepts each with
# probability above 0.95 for shapes >= 1, so all of 32 fail with probability
# below 1e-41.
_GAMMA_CANDIDATES = 32


class MixedBatch(NamedTuple):
    """A mixed batch and what the loss needs to score it.

    Attributes
    ----------
    inputs : torch.Tensor of shape (N, C, H, W)
        The mixed images.
    perm : torch.Tensor of shape (N,), int64
        Image ``i`` was mixed with image ``perm[i]`` of the batch as given.
    lam : torch.Tensor, 0-d, float32
        The share of image ``i`` in mixed image ``i``: MixUp's blending
        weight, or for CutMix the share of the pixels not pasted over.
    """

    inputs: torch.Tensor
    perm: torch.Tensor
    lam: torch.Tensor


def mix_batch(
    inputs: torch.Tensor,
    mixup_alpha: float,
    cutmix_alpha: float,
    generator: torch.Generator | None,
) -> MixedBatch:
    """MixUp or CutMix one batch.

    - Only ``mixup_alpha > 0``: MixUp, ``lam ~ Beta(mixup_alpha,
      mixup_alpha)``, mixed image ``lam * x_i + (1 - lam) * x_perm[i]``.
    - Only ``cutmix_alpha > 0``: CutMix. ``lam ~ Beta(cutmix_alpha,
      cutmix_alpha)`` sizes a box of ``floor(H * sqrt(1 - lam)) x floor(W *
      sqrt(1 - lam))`` pixels centred on a uniformly drawn pixel, clipped to
      the image; that box of image ``perm[i]`` replaces image ``i``'s, the
      same box for the whole batch. The returned ``lam`` is corrected to the
      area actually kept, ``1 - box area / (H * W)`` (the box may be clipped
      or floored to a smaller one than drawn).
    - Both > 0: one or the other for the whole batch, with probability 1/2
      each, as timm's ``Mixup`` does.
    - Both 0: the batch as it is (``perm`` the identity, ``lam`` 1), with no
      draw; the loss is then the plain one.

    The permutation is uniform over all orders (``torch.randperm``), so an
    image may be paired with itself, which then leaves it as it is.

    Randomness, drawn from ``generator`` on the batch's device whatever the
    settings: the two Beta draws (MixUp's then CutMix's), three uniforms
    (the choice, the box's row and column), then the permutation.

    Parameters
    ----------
    inputs : torch.Tensor of shape (N, C, H, W)
        A floating-point batch, normalised or not.
    mixup_alpha, cutmix_alpha : float
        The Beta distributions' parameters, >= 0; 0 turns a method off.
        Common values: 0.2 to 1 for MixUp, 1 for CutMix.
    generator : torch.Generator or None
        On the batch's device; None draws from torch's global state.

    Returns
    -------
    MixedBatch
        The mixed images, the permutation and ``lam``, for
        :func:`mixed_cross_entropy`.

    Raises
    ------
    ValueError
        If an alpha is not a finite number >= 0, or ``inputs`` is not 4-D.
    """
    mixup_alpha = _check_alpha("mixup_alpha", mixup_alpha)
    cutmix_alpha = _check_alpha("cutmix_alpha", cutmix_alpha)
    if inputs.ndim != 4:
        raise ValueError(
            f"mix_batch needs an (N, C, H, W) batch; got shape {tuple(inputs.shape)}"
        )
    n, _, height, width = inputs.shape
    device = inputs.device
    if mixup_alpha == 0 and cutmix_alpha == 0:
        perm = torch.arange(n, device=device)
        return MixedBatch(inputs, perm, torch.ones((), device=device))

    # Alphas of 0 are drawn at 1 (any valid value): the draw is not used, and
    # the sequence drawn stays the same whichever method is on.
    # Filled on the device: torch.tensor([...], device=...) would copy from
    # the host and wait on the GPU.
    alphas = torch.full((2,), mixup_alpha or 1.0, device=device)
    alphas[1:].fill_(cutmix_alpha or 1.0)
    lam_mixup, lam_cutmix = _symmetric_beta(alphas, generator)
    choice, row, column = torch.rand(
        3, generator=generator, device=device, dtype=torch.float32
    )
    perm = torch.randperm(n, generator=generator, device=device)

    keep, lam_box = _cutmix_keep(lam_cutmix, row, column, height, width)
    if mixup_alpha == 0:
        use_cutmix = torch.ones((), dtype=torch.bool, device=device)
    elif cutmix_alpha == 0:
        use_cutmix = torch.zeros((), dtype=torch.bool, device=device)
    else:
        use_cutmix = choice < 0.5
    lam = torch.where(use_cutmix, lam_box, lam_mixup)
    # The share of image i at each pixel: 1 outside the box and 0 inside it
    # for CutMix, lam everywhere for MixUp. lerp is exact at 0 and 1, so
    # CutMix copies pixels rather than recomputing them.
    share = torch.where(use_cutmix, keep, lam_mixup).to(inputs.dtype)
    mixed = torch.lerp(inputs[perm], inputs, share)
    return MixedBatch(mixed, perm, lam)


def _cutmix_keep(
    lam: torch.Tensor, row: torch.Tensor, column: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, W)`` float mask, 0 in the pasted box, and the share it keeps."""
    side = torch.sqrt(1 - lam)
    box_h, box_w = torch.floor(height * side), torch.floor(width * side)
    centre_y, centre_x = torch.floor(row * height), torch.floor(column * width)
    top = (centre_y - torch.floor(box_h / 2)).clamp(0, height)
    bottom = (centre_y - torch.floor(box_h / 2) + box_h).clamp(0, height)
    left = (centre_x - torch.floor(box_w / 2)).clamp(0, width)
    right = (centre_x - torch.floor(box_w / 2) + box_w).clamp(0, width)
    rows = torch.arange(height, device=lam.device, dtype=lam.dtype)
    columns = torch.arange(width, device=lam.device, dtype=lam.dtype)
    in_rows = (rows >= top) & (rows < bottom)
    in_columns = (columns >= left) & (columns < right)
    pasted = in_rows[:, None] & in_columns[None, :]
    kept_share = 1 - (bottom - top) * (right - left) / (height * width)
    return (~pasted).to(lam.dtype), kept_share


def _symmetric_beta(alphas: torch.Tensor, generator: torch.Generator | None):
    """One draw of ``Beta(a, a)`` for each ``a`` of ``alphas``, on their device.

    ``X / (X + Y)`` with ``X, Y ~ Gamma(a)``, computed from the Gammas'
    logarithms so that small ``a`` (whose draws underflow) stays exact.
    """
    log_gamma = _log_gamma(alphas.repeat_interleave(2), generator).view(-1, 2)
    return torch.sigmoid(log_gamma[:, 0] - log_gamma[:, 1])


def _log_gamma(shapes: torch.Tensor, generator: torch.Generator | None):
    """``log`` of one ``Gamma(shape, 1)`` draw per entry of ``shapes``.

    Marsaglia and Tsang's method (ACM TOMS 26(3), 2000) on ``shape + 1``,
    which is >= 1, with a fixed number of candidates per draw in place of
    the loop, the first accepted one kept; then ``Gamma(a) = Gamma(a + 1) *
    U ** (1 / a)`` brings the shape back.
    """
    count, device = len(shapes), shapes.device
    d = (shapes + 1 - 1 / 3)[:, None]
    c = 1 / torch.sqrt(9 * d)
    z = torch.randn(
        (count, _GAMMA_CANDIDATES), generator=generator, device=device, dtype=d.dtype
    )
    u = torch.rand(
        (count, _GAMMA_CANDIDATES + 1),
        generator=generator,
        device=device,
        dtype=d.dtype,
    )
    v = (1 + c * z) ** 3
    positive = v > 0
    log_v = torch.log(torch.where(positive, v, torch.ones_like(v)))
    accepted = positive & (torch.log(u[:, :-1]) < 0.5 * z**2 + d - d * v + d * log_v)
    # argmax finds the first True (or 0 if none: a candidate is kept anyway).
    first = accepted.to(torch.uint8).argmax(dim=1, keepdim=True)
    log_draw = torch.log(d) + log_v.gather(1, first)
    boost = torch.log(u[:, -1:].clamp_min(torch.finfo(d.dtype).tiny))
    return (log_draw + boost / shapes[:, None]).squeeze(1)


def mixed_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    perm: torch.Tensor,
    lam: torch.Tensor | float,
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The loss of a mixed batch: each image's two losses, weighted by its shares.

    ``mean_i [lam * w_i * CE(logits_i, y_i) + (1 - lam) * w_perm[i] *
    CE(logits_i, y_perm[i])]``, with ``w`` all 1 when ``weights`` is None and
    ``CE`` the (label-smoothed) cross-entropy. Each of the two images brings
    its own sample weight, multiplied into its term as
    the library's ``weighted_cross_entropy`` does (weights averaging 1 over the
    data set leave the scale of the loss as without them); with ``lam = 1``
    this is that function's loss. Cross-entropy is linear in the target, so
    this equals the cross-entropy with timm's mixed soft targets ``lam *
    smooth(y) + (1 - lam) * smooth(y_perm)`` when there are no weights.

    Parameters
    ----------
    logits : torch.Tensor of shape (N, n_classes)
        The model's output on the mixed batch.
    targets : torch.Tensor of shape (N,), int64
        Class indices of the batch as it was before mixing.
    perm : torch.Tensor of shape (N,)
        :attr:`MixedBatch.perm`.
    lam : torch.Tensor (0-d) or float
        :attr:`MixedBatch.lam`.
    weights : torch.Tensor of shape (N,), optional
        Sample weights of the batch as it was before mixing.
    label_smoothing : float, default=0.0
        As in :func:`torch.nn.functional.cross_entropy`.

    Returns
    -------
    torch.Tensor
        The 0-d mean loss.
    """
    own = F.cross_entropy(
        logits, targets, label_smoothing=label_smoothing, reduction="none"
    )
    other = F.cross_entropy(
        logits, targets[perm], label_smoothing=label_smoothing, reduction="none"
    )
    if weights is not None:
        own = own * weights
        other = other * weights[perm]
    return (lam * own + (1 - lam) * other).mean()


def _check_alpha(name: str, value) -> float:
    if (
        not isinstance(value, Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)
