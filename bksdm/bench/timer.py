"""Callbacks that time a benchmark's steps and, for the reference mode, sync the host every step."""

from __future__ import annotations

import time

import lightning as L

from bksdm.training.memory import peak_memory_gb, reset_peak_memory, synchronize


class StepTimer(L.Callback):
    """Wall time and peak memory of ``steps`` optimizer steps after ``warmup_steps``: the device is
    synchronised at the start of the first timed step and at the end of the last, and nowhere in between.
    Steps after those (the benchmark's breakdown steps) are not timed. On a CPU, where the host clock
    times each step as it ends, ``step_seconds`` holds each step's time too (on a GPU, timing a single
    step would need a sync that stalls the queue)."""

    def __init__(self, warmup_steps: int, steps: int):
        self.warmup_steps, self.end_step = warmup_steps, warmup_steps + steps
        self.start: float | None = None
        self.seconds: float | None = None
        self.steps = steps
        self.step_seconds: list[float] = []
        self.peak_memory_gb = 0.0
        self._last_end = 0.0
        self._last_step = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step == self.warmup_steps:
            synchronize(pl_module.device)
            reset_peak_memory(pl_module.device)
            self.start = self._last_end = time.perf_counter()
            self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is None or self.seconds is not None or trainer.global_step == self._last_step:
            return  # not timing, or an accumulation batch
        self._last_step = trainer.global_step
        if pl_module.device.type == "cpu":
            now = time.perf_counter()
            self.step_seconds.append(now - self._last_end)
            self._last_end = now
        if trainer.global_step == self.end_step:
            synchronize(pl_module.device)
            self.seconds = time.perf_counter() - self.start
            self.peak_memory_gb = peak_memory_gb(pl_module.device)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.seconds is None:
            raise RuntimeError(f"training ended at step {trainer.global_step}, before step {self.end_step}")

    @property
    def fastest_step(self) -> float:
        """The fastest timed step's seconds (the mean where single steps are not timed)."""
        return min(self.step_seconds) if self.step_seconds else self.seconds / self.steps


class HostSyncEveryStep(L.Callback):
    """Reads the loss on the host after every step, as the reference implementation's logging does
    (``loss.item()``): the host waits for the device each step instead of queueing the next one."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(outputs, dict) and outputs.get("loss") is not None:
            outputs["loss"].item()
