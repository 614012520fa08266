"""PreemptionCheckpoint: on SIGTERM or a scheduler's requeue signal, save a checkpoint and stop.

Lightning only notes SIGTERM and exits after the current batch, without a checkpoint; under submitit
(``hydra/launcher=slurm``) SLURM's pre-timeout or preemption signal (USR2) makes submitit requeue the job
and exit at once, in the middle of a step. This callback notes either signal, and at the end of that
batch, on every rank together (a signal seen by any rank stops all of them), saves
``checkpoints/preempted.ckpt``; then submitit's own handler requeues the job, and Lightning exits after
the batch's metrics reached the loggers, which are flushed. ``resume=auto`` continues from exactly there.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bksdm.training.host_sync import ranks_agree

# submitit's requeue signal (its --signal=USR2@<delay>); Lightning's SLURM auto-requeue uses USR1 itself
REQUEUE_SIGNALS = (signal.SIGUSR2,)


class PreemptionCheckpoint(L.Callback):
    def __init__(self, dirpath: str | Path, filename: str = "preempted.ckpt"):
        self.path = Path(dirpath) / filename
        self._previous: dict[int, object] = {}
        self._pending: int | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        for signum in REQUEUE_SIGNALS:
            previous = signal.getsignal(signum)
            if callable(previous):  # only where a launcher handles it (submitit); else it would kill us
                self._previous[signum] = previous
                signal.signal(signum, self._note)

    def on_fit_end(self, trainer, pl_module) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    @property
    def requested(self) -> bool:
        """A requeue signal arrived and waits for the end of the batch."""
        return self._pending is not None

    def _note(self, signum, frame) -> None:
        self._pending = signum  # acted on at the end of the batch: a signal handler cannot save mid-step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every rank must take the same branch: the save is collective
        stop = ranks_agree(trainer.received_sigterm or self._pending is not None, every=False)
        if not stop:
            return
        # the whole training state (Lightning's weights_only=None means the same, with a notice)
        trainer.save_checkpoint(self.path, weights_only=False)
        rank_zero_info(
            f"preemption: saved {self.path} at step {trainer.global_step}; stopping (resume=auto continues)"
        )
        for logger in trainer.loggers:
            logger.save()
        if self._pending is not None:  # submitit's handler: rank 0 requeues the job and exits
            self._previous[self._pending](self._pending, None)
        # Lightning raises SIGTERMException at the end of this batch on the ranks that saw a SIGTERM:
        # mark it on all of them, so that every rank stops at the same point
        trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            for logger in trainer.loggers:  # metrics of the last batch were logged after the save
                logger.save()
