"""MixUp, CutMix and the mixed loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from resnetclf._mixing import (
    _symmetric_beta,
    mix_batch,
    mixed_cross_entropy,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _constant_images(n: int = 6, height: int = 10, width: int = 12):
    """Image i is filled with the value i + 1: a pixel says where it is from."""
    values = torch.arange(1, n + 1, dtype=torch.float32)
    return values.view(n, 1, 1, 1).expand(n, 3, height, width).contiguous()


def _loss_inputs(n: int = 7, n_classes: int = 5):
    generator = _generator(3)
    logits = torch.randn(n, n_classes, generator=generator)
    targets = torch.randint(0, n_classes, (n,), generator=generator)
    weights = torch.rand(n, generator=generator) * 2
    return logits, targets, weights


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_lam_one_is_the_plain_loss(smoothing):
    logits, targets, weights = _loss_inputs()
    perm = torch.randperm(len(targets), generator=_generator())
    plain = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    torch.testing.assert_close(
        mixed_cross_entropy(logits, targets, perm, 1.0, None, smoothing), plain
    )
    # Weighted: each term times its weight, averaged over the batch, as
    # the library's weighted_cross_entropy does.
    terms = F.cross_entropy(
        logits, targets, label_smoothing=smoothing, reduction="none"
    )
    torch.testing.assert_close(
        mixed_cross_entropy(
            logits, targets, perm, torch.tensor(1.0), weights, smoothing
        ),
        (terms * weights).mean(),
    )


def test_loss_is_the_written_out_formula():
    logits, targets, weights = _loss_inputs()
    perm = torch.randperm(len(targets), generator=_generator())
    lam, smoothing, n_classes = 0.3, 0.1, logits.shape[1]
    log_p = torch.log_softmax(logits, dim=1)

    def smoothed_ce(i, label):
        soft = torch.full((n_classes,), smoothing / n_classes)
        soft[label] += 1 - smoothing
        return -(soft * log_p[i]).sum()

    expected = sum(
        lam * weights[i] * smoothed_ce(i, targets[i])
        + (1 - lam) * weights[perm[i]] * smoothed_ce(i, targets[perm[i]])
        for i in range(len(targets))
    ) / len(targets)
    loss = mixed_cross_entropy(logits, targets, perm, lam, weights, smoothing)
    torch.testing.assert_close(loss, expected)
    # Without weights: cross-entropy with timm's mixed soft targets.
    one_hot = F.one_hot(targets, n_classes).float()
    smooth = one_hot * (1 - smoothing) + smoothing / n_classes
    soft = lam * smooth + (1 - lam) * smooth[perm]
    torch.testing.assert_close(
        mixed_cross_entropy(logits, targets, perm, lam, None, smoothing),
        -(soft * log_p).sum(dim=1).mean(),
    )


def test_mixup_blends_each_image_with_its_partner():
    images = torch.rand(5, 3, 6, 7, generator=_generator(1))
    mixed = mix_batch(images, 0.4, 0.0, _generator())
    assert sorted(mixed.perm.tolist()) == list(range(5))
    assert mixed.lam.ndim == 0 and 0 < float(mixed.lam) < 1
    lam = mixed.lam
    torch.testing.assert_close(
        mixed.inputs, lam * images + (1 - lam) * images[mixed.perm]
    )


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_lam_is_the_area_kept(seed):
    height, width = 10, 12
    images = _constant_images(height=height, width=width)
    mixed = mix_batch(images, 0.0, 1.0, _generator(seed))
    own = mixed.inputs == images
    partner = mixed.inputs == images[mixed.perm]
    assert bool((own | partner).all())  # pixels are copied, never blended
    # One box for the whole batch, a rectangle, pasted from the partner
    # (images paired with themselves show none of it).
    moved = mixed.perm != torch.arange(len(images))
    pasted = ~own[moved][:, 0]
    if len(pasted):
        assert bool((pasted == pasted[0]).all())
        box = pasted[0]
        rows, columns = box.any(dim=1), box.any(dim=0)
        assert bool((box == rows[:, None] & columns[None, :]).all())
        kept = 1 - box.float().mean()
        torch.testing.assert_close(mixed.lam, kept)
    # And lam is at most what fits: the box is the floor of the drawn one.
    assert 0 <= float(mixed.lam) <= 1


def test_both_alphas_pick_one_method_per_batch():
    images = _constant_images(n=4)
    kinds = []
    for seed in range(40):
        mixed = mix_batch(images, 1.0, 1.0, _generator(seed))
        own, partner = mixed.inputs == images, mixed.inputs == images[mixed.perm]
        kinds.append("cutmix" if bool((own | partner).all()) else "mixup")
    assert 10 <= kinds.count("cutmix") <= 30


def test_mixing_is_deterministic_given_the_generator():
    images = torch.rand(6, 1, 8, 8, generator=_generator(2))
    first = mix_batch(images, 0.4, 1.0, _generator(9))
    again = mix_batch(images, 0.4, 1.0, _generator(9))
    assert torch.equal(first.inputs, again.inputs)
    assert torch.equal(first.perm, again.perm) and torch.equal(first.lam, again.lam)


def test_no_mixing_returns_the_batch_and_draws_nothing():
    images = torch.rand(3, 1, 4, 4)
    generator = _generator()
    state = generator.get_state()
    mixed = mix_batch(images, 0, 0.0, generator)
    assert mixed.inputs is images and float(mixed.lam) == 1.0
    assert mixed.perm.tolist() == [0, 1, 2]
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 3.0])
def test_beta_draws_follow_the_beta_distribution(alpha):
    draws = _symmetric_beta(torch.full((4000,), alpha), _generator())
    assert bool(((draws >= 0) & (draws <= 1)).all())
    result = stats.kstest(draws.double().numpy(), stats.beta(alpha, alpha).cdf)
    assert result.pvalue > 1e-3


def test_tiny_alpha_still_draws_finite_values():
    draws = _symmetric_beta(torch.full((200,), 0.01), _generator())
    assert bool(torch.isfinite(draws).all())
    # Beta(0.01, 0.01) puts nearly all its mass at 0 and 1.
    assert float(((draws < 0.01) | (draws > 0.99)).float().mean()) > 0.9


@pytest.mark.parametrize(
    "mixup, cutmix, match",
    [
        (-0.1, 0.0, "mixup_alpha"),
        (0.0, float("inf"), "cutmix_alpha"),
        (True, 0.0, "mixup_alpha"),
        ("1", 0.0, "mixup_alpha"),
    ],
)
def test_bad_alphas_are_refused(mixup, cutmix, match):
    with pytest.raises(ValueError, match=match):
        mix_batch(torch.rand(2, 1, 4, 4), mixup, cutmix, None)


def test_a_batch_that_is_not_4d_is_refused():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        mix_batch(torch.rand(2, 4, 4), 1.0, 0.0, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixing_on_cuda_stays_on_the_device():
    device = torch.device("cuda")
    images = _constant_images().to(device)
    mixed = mix_batch(images, 0.4, 1.0, torch.Generator(device).manual_seed(0))
    assert mixed.inputs.device.type == "cuda" and mixed.lam.device.type == "cuda"
    assert mixed.perm.device.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixing_does_not_wait_on_the_gpu():
    device = torch.device("cuda")
    images = torch.rand(8, 3, 12, 12, device=device)
    logits = torch.randn(8, 5, device=device)
    targets = torch.randint(0, 5, (8,), device=device)
    weights = torch.rand(8, device=device)
    generator = torch.Generator(device).manual_seed(0)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mixed = mix_batch(images, 0.4, 1.0, generator)
        mixed_cross_entropy(logits, targets, mixed.perm, mixed.lam, weights, 0.1)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
