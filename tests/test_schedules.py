"""Learning-rate schedules on a mock optimizer: no model, no data."""

from __future__ import annotations

import pytest
import torch

from resnetclf._schedules import EpochSchedule


def _optimizer(rates=(1.0, 0.25)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": r} for r in rates]
    return torch.optim.SGD(groups)


def _run(schedule, optimizer, scores):
    seen = []
    for score in scores:
        seen.append([g["lr"] for g in optimizer.param_groups])
        schedule.step(score)
    return seen


def test_constant_keeps_rates():
    optimizer = _optimizer()
    seen = _run(EpochSchedule("constant", optimizer, n_epochs=4), optimizer, [0] * 4)
    assert seen == [[1.0, 0.25]] * 4


def test_cosine_with_warmup_keeps_ratios():
    optimizer = _optimizer()
    schedule = EpochSchedule("cosine", optimizer, n_epochs=6, warmup_epochs=2)
    seen = _run(schedule, optimizer, [0] * 6)
    head = [rates[0] for rates in seen]
    assert head[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(head[2:], head[3:]))  # annealing
    assert head[-1] > 0
    for rates in seen:
        assert rates[1] == pytest.approx(rates[0] * 0.25)


def test_plateau_divides_by_ten_after_patience():
    optimizer = _optimizer()
    schedule = EpochSchedule("plateau", optimizer, n_epochs=10, patience=2, tol=0.01)
    # Improves, then stalls (gains below tol) for 3 epochs.
    seen = _run(schedule, optimizer, [0.5, 0.6, 0.605, 0.6, 0.601, 0.6])
    head = [rates[0] for rates in seen]
    assert head[:5] == [1.0] * 5
    assert head[5] == pytest.approx(0.1)
    assert seen[5][1] == pytest.approx(0.025)


def test_plateau_waits_for_warmup():
    optimizer = _optimizer()
    schedule = EpochSchedule("plateau", optimizer, n_epochs=10, warmup_epochs=2)
    seen = _run(schedule, optimizer, [0.1] * 3)
    assert [r[0] for r in seen] == pytest.approx([1 / 3, 2 / 3, 1.0])
