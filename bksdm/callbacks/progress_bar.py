"""The training bar: optimizer steps of the whole run, continued across resumes."""

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting the run's optimizer steps (``step 120/300``) when ``max_steps`` ends it.

    Lightning's own bar counts the batches of one epoch, which for a step-limited run misleads three ways:
    its rate and ETA are the epoch's, its total ignores gradient accumulation (batches, not steps), and a run
    resumed inside an epoch shows ``20/?`` under the name "Training", because Lightning skips
    ``on_train_epoch_start`` for the epoch it resumes in. This bar starts at the checkpoint's step, takes its
    rate and ETA from the steps run since, and closes when the last step ends (so the saving after it does
    not lower the rate it shows). Runs ended by ``max_epochs`` keep Lightning's per-epoch bar.

    ``description``: the bar's name (None: the epoch, ``Epoch 3``); ``refresh_rate`` in optimizer steps.
    """

    def __init__(self, refresh_rate: int = 1, description: str | None = None, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.description = description
        self._shown_step = -1

    def _counts_steps(self, trainer: L.Trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def _name(self, trainer: L.Trainer) -> str:
        return self.description or f"Epoch {trainer.current_epoch}"

    def init_train_tqdm(self) -> Tqdm:
        if not self._counts_steps(self.trainer):
            return super().init_train_tqdm()
        done = self.trainer.global_step
        # Lightning's arguments for its training bar, with the total, the steps already done (``initial``:
        # tqdm's rate counts from there) and the name known at creation, so no "Training 0/?" is drawn first
        return Tqdm(
            desc=self._name(self.trainer),
            total=self.trainer.max_steps,
            initial=done,
            unit="step",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self._counts_steps(trainer):
            super().on_train_epoch_start(trainer, *args)
        elif not self.train_progress_bar.disable:
            self.train_progress_bar.set_description(self._name(trainer))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self._counts_steps(trainer):
            return super().on_train_batch_end(trainer, pl_module, *args)
        bar, step = self.train_progress_bar, trainer.global_step
        if bar.disable or step == self._shown_step:  # an accumulation batch: no step was taken
            return
        last = step >= trainer.max_steps
        if step % self.refresh_rate == 0 or last:
            self._shown_step = step
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws the bar
        if last:
            bar.close()
