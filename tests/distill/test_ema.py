"""StudentEMA: diffusers' warm-up schedule, skipped steps, and the two update loops agree."""

import pytest
import torch

from bksdm.distill.ema import StudentEMA


def test_ema_follows_the_warm_up_schedule_and_skips_unapplied_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    emas = {foreach: StudentEMA(model, decay=0.5, foreach=foreach) for foreach in (True, False)}
    expected = model.weight.detach().clone()
    for step, applied in enumerate([True, True, False, True, True]):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        flag = torch.tensor(applied)
        for ema in emas.values():
            ema.update(model, applied=flag)
        if applied:
            n = sum([True, True, False, True, True][:step])  # updates applied before this one
            weight = 1.0 if n == 0 else 1.0 - min(0.5, (1 + n) / (10 + n))
            expected = expected + weight * (model.weight.detach() - expected)
        for ema in emas.values():
            torch.testing.assert_close(ema.module.weight, expected)
    assert all(int(ema.n_averaged) == 4 for ema in emas.values())


def test_ema_decay_outside_zero_one_is_named():
    with pytest.raises(ValueError, match=r"ema_decay=1\.0 must be in \(0, 1\)"):
        StudentEMA(torch.nn.Linear(2, 2), decay=1.0)


def test_averaging_every_few_steps_takes_the_decays_of_all_the_steps_since():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ema = StudentEMA(model, decay=0.5, every=3)
    expected, n, pending = model.weight.detach().clone(), 0, 0
    flags = [True, True, True, True, False, True, True]
    for step, applied in enumerate(flags, start=1):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        ema.update(model, applied=torch.tensor(applied), step=step)
        pending += applied
        if step % 3 == 0:  # steps 3 and 6 average; 4 and 6 of the second window were applied
            factor = 1.0
            for j in range(n, n + pending):
                factor *= 0.0 if j == 0 else min(0.5, (1 + j) / (10 + j))
            expected = expected + (1 - factor) * (model.weight.detach() - expected)
            n, pending = n + pending, 0
        torch.testing.assert_close(ema.module.weight, expected)
    assert (int(ema.n_averaged), int(ema.pending)) == (5, 1)  # step 7 counted, not averaged yet
    state = {
        k: v.clone() for k, v in ema.state_dict().items()
    }  # a checkpoint keeps the lag, so that a resumed run averages the same
    ema.catch_up(model)
    ema.catch_up(model)  # nothing pending: nothing changes
    weight = 1 - min(0.5, 6 / 15)
    torch.testing.assert_close(ema.module.weight, expected + weight * (model.weight.detach() - expected))
    resumed = StudentEMA(model, decay=0.5, every=3)
    resumed.load_state_dict(state)
    assert (int(resumed.n_averaged), int(resumed.pending)) == (5, 1)
    assert "pending" not in StudentEMA(model, decay=0.5).state_dict()  # every step: AveragedModel's keys


def test_averaging_every_few_steps_stays_close_to_averaging_every_step():
    """Weights on a random walk: averaging every 5 steps at decay 0.99 differs from every step by a few
    percent of the average's own distance from the weights (at 0.9999 and every 10: 0.17%)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(50, 50)
    every_step, every_five = StudentEMA(model, 0.99), StudentEMA(model, 0.99, every=5)
    for step in range(1, 1001):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight) * 1e-3)
        every_step.update(model)
        every_five.update(model, step=step)
    gap = (every_step.module.weight - model.weight).norm()
    assert (every_five.module.weight - every_step.module.weight).norm() < 0.05 * gap


@pytest.mark.parametrize("every", [0, 1.5, True])
def test_ema_every_other_than_a_positive_integer_is_named(every):
    with pytest.raises(ValueError, match=rf"ema_every={every!r}: accepted are integers >= 1"):
        StudentEMA(torch.nn.Linear(2, 2), decay=0.9, every=every)
