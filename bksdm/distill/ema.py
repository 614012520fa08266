"""StudentEMA: an exponential moving average of the student's weights, updated without a host sync."""

from __future__ import annotations

import copy

import torch


class StudentEMA(torch.nn.Module):
    """EMA of a model's floating-point parameters and buffers, with diffusers' warm-up: applied step ``n``
    (0-based) has decay ``d(n) = min(decay, (1 + n) / (10 + n))``, and the first copies the model.

    torch's ``AveragedModel`` reads its update count on the host at every update (one device sync per
    parameter on a GPU); here the count and the step's skip flag stay on the device. The state dict keys
    (``module.*``, ``n_averaged``) are AveragedModel's, so checkpoints of either load into the other
    (with ``every`` > 1 it also holds ``pending``).

    Averaging every ``every`` optimizer steps moves the average once towards the weights of the last of
    them, by the decays of all the applied steps since: ``1 - d(n) ... d(n + m - 1)``. That is exactly the
    every-step average if the weights stood still over those steps, and otherwise differs by the weights'
    motion within the window times about ``every * (1 - decay)``: on a random walk at decay 0.9999 and
    every 10, 0.17% of the average's distance from the weights (``experiments/bench/README.md``), for a
    tenth of the memory traffic.

    Args:
        model: the model to average (deep-copied, frozen).
        decay: the EMA decay in (0, 1).
        foreach: one multi-tensor lerp over all tensors (reads two tensors, writes one); False: the loop
            of diffusers' ``EMAModel`` that BK-SDM's reference used, ``a -= (1 - d) * (a - m)`` tensor by
            tensor, with two temporaries each (the benchmark's reference mode).
        every: average every this many optimizer steps (1: every step).
    """

    def __init__(self, model: torch.nn.Module, decay: float, foreach: bool = True, every: int = 1):
        super().__init__()
        self.check_settings(decay, every)
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.foreach, self.every = decay, foreach, every
        device = next(model.parameters()).device
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        # applied steps not averaged in yet; kept in checkpoints only when the average lags behind them
        self.register_buffer(
            "pending", torch.tensor(0, dtype=torch.long, device=device), persistent=every > 1
        )

    @staticmethod
    def check_settings(decay: float, every: int = 1) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay={decay!r} must be in (0, 1), or null for no EMA")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"ema_every={every!r}: accepted are integers >= 1 (optimizer steps)")

    @torch.no_grad()
    def update(
        self, model: torch.nn.Module, applied: torch.Tensor | None = None, step: int | None = None
    ) -> None:
        """Counts one optimizer step of ``model`` and averages it in when ``step`` (its 1-based number) is
        a multiple of ``every``. ``applied``: a 0-dim bool tensor, False when the step was skipped (it then
        counts for nothing), read on the device."""
        if self.every > 1 and step is None:
            raise ValueError(f"ema_every={self.every} needs the step number of each update")
        self.pending += 1 if applied is None else applied.long()
        if step is None or step % self.every == 0:
            self.catch_up(model)

    @torch.no_grad()
    def catch_up(self, model: torch.nn.Module) -> None:
        """Averages in the steps counted since the last average (none: nothing changes), e.g. before the
        average is exported between averaging steps."""
        averaged, current = [], []
        for mine, theirs in zip(self._tensors(self.module), self._tensors(model), strict=True):
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs.detach())
            else:
                mine.copy_(theirs)
        # float64 scalars: 1 - 0.9999 in float32 is off by 2e-4 of itself
        window = torch.arange(self.every, device=self.n_averaged.device)
        n = (self.n_averaged + window).double()
        decays = torch.where(n == 0, 0.0, torch.clamp((1.0 + n) / (10.0 + n), max=self.decay))
        weight = 1.0 - torch.where(window < self.pending, decays, 1.0).prod()
        # lerp with weight 1 gives the model exactly, with weight 0 the average exactly
        if averaged and self.foreach:
            torch._foreach_lerp_(averaged, current, [weight.to(averaged[0].dtype)] * len(averaged))
        else:
            for mine, theirs in zip(averaged, current, strict=True):
                mine.sub_(weight.to(mine.dtype) * (mine - theirs))
        self.n_averaged += self.pending
        self.pending.zero_()

    @staticmethod
    def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers()]
