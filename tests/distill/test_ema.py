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
