"""EveryNSteps: the evaluation schedule shared by PeriodicEval and MiniWorldEval."""

from __future__ import annotations

import lightning as L


class EveryNSteps(L.Callback):
    """Calls ``self.evaluate(trainer, pl_module)`` after every optimizer step whose global step is a
    multiple of ``every_n_steps``, and at the end of training unless that step was just evaluated.
    ``evaluate`` records the step it scored in ``self._last_step`` (batches of one accumulated step
    share their global step, so it runs once per step)."""

    def __init__(self, every_n_steps: int):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps!r} must be >= 1")
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step and step > 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module):
        raise NotImplementedError
