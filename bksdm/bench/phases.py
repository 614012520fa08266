"""Where a step's time goes: seconds per optimizer step by phase, timed with the device synchronised at
each phase boundary.

The phases, in the order they run (``bksdm.distill.step`` and ``DistillModule``):

    inputs           encoding (VAE, text encoder) or sampling pre-encoded latents; noise and timesteps
    teacher_forward  the frozen teacher U-Net, taps recording
    student_forward  the student U-Net and the loss
    backward         autograd through the student
    grad_norm_clip   the step guard's gradient norm and non-finite check, and clipping
    optimizer        the optimizer's update
    ema              the EMA's averaging, per step: the time of one averaging over ``distill.ema_every``
    other            the rest of the step: logging, data loading, Lightning's hooks

Synchronising costs nothing on a CPU; on a GPU it keeps the device from running ahead, so the benchmark
times its breakdown steps after, and apart from, the steps it reports.
"""

from __future__ import annotations

import time
from collections import defaultdict

import lightning as L

from bksdm.training.memory import synchronize

PHASES = (
    "inputs", "teacher_forward", "student_forward", "backward", "grad_norm_clip", "optimizer", "ema", "other",
)  # fmt: skip


class PhaseTimer(L.Callback):
    """Times the phases of the optimizer steps from ``start_step`` on (``trainer.global_step`` before the
    step); ``per_step()`` gives the seconds per step by phase."""

    def __init__(self, start_step: int):
        self.start_step = start_step
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.device = None
        self.ema_every, self.ema_average_s = 0, 0.0
        self._active = False
        self._step_at_start = -1  # trainer.global_step when the step being timed began
        self._marks: dict[str, float] = {}

    def per_step(self) -> dict[str, float]:
        """Seconds per optimizer step by phase (``PHASES``); ``other`` is what the phases left of the step.
        An EMA averaged every k steps may not average within the breakdown's steps at all: its phase is
        one averaging, timed after them, over k."""
        if not self.steps:
            return {}
        per_step = {
            phase: self.seconds[phase] / self.steps for phase in PHASES if phase not in ("ema", "other")
        }
        in_steps = sum(per_step.values()) + self.seconds["ema"] / self.steps
        per_step["ema"] = self.ema_average_s / self.ema_every if self.ema_every else 0.0
        per_step["other"] = max(0.0, self.seconds["step"] / self.steps - in_steps)
        return {phase: per_step[phase] for phase in PHASES}

    def step_s(self) -> float | None:
        """Wall seconds per breakdown step, the phases' synchronisations included (None before a step)."""
        return self.seconds["step"] / self.steps if self.steps else None

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def _timed(self, owner, name: str, phase: str) -> None:
        """Replaces the method ``owner.name`` by a timed call of it (an instance attribute shadows it)."""
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            if not self._active:
                return original(*args, **kwargs)
            start = self._now()
            result = original(*args, **kwargs)
            self.seconds[phase] += self._now() - start
            return result

        setattr(owner, name, timed)

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.device = module.device
        step = module.step
        for name, phase in (("encode", "inputs"), ("add_noise", "inputs"), ("teacher_forward", "teacher_forward"),
                            ("student_forward", "student_forward"), ("objective", "student_forward")):  # fmt: skip
            self._timed(step, name, phase)
        if module.ema is not None:
            self._timed(module.ema, "catch_up", "ema")
            self.ema_every = module.ema.every
        # Lightning calls the clipping hook on every step, clipping or not; the update starts where it
        # ends (both run inside optimizer.step(closure), so the optimizer's pre-hook would come too early)
        clipping = module.configure_gradient_clipping

        def clip_then_mark(*args, **kwargs):
            result = clipping(*args, **kwargs)
            if self._active:
                now = self._now()
                self.seconds["grad_norm_clip"] += now - self._marks.pop("grad_norm_clip")
                self._marks["optimizer"] = now
            return result

        module.configure_gradient_clipping = clip_then_mark
        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(self._after_update)

    def _after_update(self, optimizer, args, kwargs) -> None:
        if self._active and "optimizer" in self._marks:
            self.seconds["optimizer"] += self._now() - self._marks.pop("optimizer")

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.steps and module.ema is not None:  # one averaging, as the k-th step of a window does
            start = self._now()
            module.ema.catch_up(module.student)
            self.ema_average_s = self._now() - start

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step >= self.start_step and "step" not in self._marks:
            self._active = True
            self._marks["step"] = self._now()
            self._step_at_start = trainer.global_step

    def on_before_backward(self, trainer, module, loss) -> None:
        if self._active:
            self._marks["backward"] = self._now()

    def on_after_backward(self, trainer, module) -> None:
        if self._active:
            self.seconds["backward"] += self._now() - self._marks.pop("backward")

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if self._active:  # the guard's norm, in the module's hook after this one, counts to clipping
            self._marks["grad_norm_clip"] = self._now()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._active and trainer.global_step > self._step_at_start:  # an optimizer step ended
            now = self._now()
            self.seconds["step"] += now - self._marks.pop("step")
            self.steps += 1
            self._active = False
