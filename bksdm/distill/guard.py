"""NonfiniteTracker: counts optimizer steps skipped for NaN/inf, on the device, and stops a run that
keeps producing them."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class NonfiniteTracker:
    """Device-side record of non-finite steps: how many were skipped, the current streak, the step at
    which the streak first reached ``patience``, and the last finite step's loss terms.

    ``record`` only issues device operations (no host sync); ``check`` reads the record on the host and
    raises when the streak reached ``patience``: call it every step where a sync is free anyway, or on
    logging steps otherwise.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.skipped: torch.Tensor | None = None  # long: steps skipped in all
        self.streak: torch.Tensor | None = None  # long: skipped in a row, up to now
        self.tripped_at: torch.Tensor | None = None  # long: step the streak reached patience, -1: never
        self.last_finite_step: torch.Tensor | None = None  # long: -1 before the first finite step
        self.last_finite_terms: dict[str, torch.Tensor] = {}

    def record(self, finite: torch.Tensor, step: int, terms: Mapping[str, torch.Tensor]) -> None:
        """``finite``: 0-dim bool tensor, whether optimizer step ``step`` was applied."""
        if self.skipped is None:
            zero = torch.zeros((), dtype=torch.long, device=finite.device)
            self.skipped, self.streak = zero.clone(), zero.clone()
            self.tripped_at, self.last_finite_step = zero - 1, zero - 1
        bad = (~finite).long()
        self.skipped += bad
        self.streak = (self.streak + 1) * bad
        tripped = (self.streak == self.patience) & (self.tripped_at < 0)
        self.tripped_at = torch.where(tripped, step, self.tripped_at)
        self.last_finite_step = torch.where(finite, step, self.last_finite_step)
        for name, value in terms.items():
            value = value.detach().float()
            last = self.last_finite_terms.get(name, torch.full_like(value, float("nan")))
            self.last_finite_terms[name] = torch.where(finite, value, last)

    def check(self, step: int) -> None:
        """Raises FloatingPointError if ``patience`` steps in a row were skipped (one host sync)."""
        if self.tripped_at is None or int(self.tripped_at) < 0:
            return
        tripped_at, last_step = int(self.tripped_at), int(self.last_finite_step)
        last = "none yet" if last_step < 0 else (
            f"step {last_step}: "
            + ", ".join(f"{name}={float(value):.6g}" for name, value in self.last_finite_terms.items())
        )  # fmt: skip
        checked = "" if tripped_at == step else f" (found at step {step}: without a host sync per step, "
        checked += "the check runs on logging steps; the skipped steps changed no weight)" if checked else ""
        raise FloatingPointError(
            f"{self.patience} non-finite losses or gradients in a row, up to step {tripped_at}{checked}; "
            f"last finite loss terms at {last}. Lower the learning rate, check the data, or train in "
            "bf16/fp32 instead of fp16."
        )

    def state(self) -> dict[str, int]:
        """Host copies (a sync): skipped steps in all and the current streak."""
        if self.skipped is None:
            return {"skipped": 0, "streak": 0}
        return {"skipped": int(self.skipped), "streak": int(self.streak)}
