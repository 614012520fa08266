"""StudentEMA: an exponential moving average of the student's weights, updated without a host sync."""

from __future__ import annotations

import copy

import torch


class StudentEMA(torch.nn.Module):
    """EMA of a model's floating-point parameters and buffers, with diffusers' warm-up: update ``n`` uses
    decay ``min(decay, (1 + n) / (10 + n))``; the first update copies the model.

    torch's ``AveragedModel`` reads its update count on the host at every update (one device sync per
    parameter on a GPU); here the count and the step's skip flag stay on the device. The state dict keys
    (``module.*``, ``n_averaged``) are AveragedModel's, so checkpoints of either load into the other.

    Args:
        model: the model to average (deep-copied, frozen).
        decay: the EMA decay in (0, 1).
        foreach: one multi-tensor lerp over all tensors (reads two tensors, writes one); False: the loop
            of diffusers' ``EMAModel`` that BK-SDM's reference used, ``a -= (1 - d) * (a - m)`` tensor by
            tensor, with two temporaries each (the benchmark's reference mode).
    """

    def __init__(self, model: torch.nn.Module, decay: float, foreach: bool = True):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay={decay!r} must be in (0, 1), or null for no EMA")
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.foreach = foreach
        device = next(model.parameters()).device
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, applied: torch.Tensor | None = None) -> None:
        """Moves the average towards ``model``. ``applied``: a 0-dim bool tensor, False when this
        optimizer step was skipped (the average and its count then stay as they are), read on the device."""
        averaged, current = [], []
        for mine, theirs in zip(self._tensors(self.module), self._tensors(model), strict=True):
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs.detach())
            else:
                mine.copy_(theirs)
        n = self.n_averaged.float()
        weight = torch.where(n == 0, 1.0, 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=self.decay))
        if applied is not None:
            weight = weight * applied
        # lerp with weight 1 gives the model exactly, with weight 0 the average exactly
        if averaged and self.foreach:
            torch._foreach_lerp_(averaged, current, [weight.to(averaged[0].dtype)] * len(averaged))
        else:
            for mine, theirs in zip(averaged, current, strict=True):
                mine.sub_(weight * (mine - theirs))
        self.n_averaged += 1 if applied is None else applied.long()

    @staticmethod
    def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers()]
