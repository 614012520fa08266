"""PreemptionCheckpoint: on SIGTERM (a cluster's preemption or time-limit warning), save and stop.

Lightning only notes the signal and exits after the current batch, without a checkpoint. This callback
saves ``checkpoints/preempted.ckpt`` at the end of that batch, on every rank together (a signal seen by
any rank stops all of them), lets Lightning exit with its SIGTERMException after the batch's metrics
reached the loggers, and flushes the loggers then, so the job exits cleanly, loses no metric, and
``resume=auto`` continues from exactly there.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class PreemptionCheckpoint(L.Callback):
    def __init__(self, dirpath: str | Path, filename: str = "preempted.ckpt"):
        self.path = Path(dirpath) / filename

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = trainer.received_sigterm
        if trainer.world_size > 1:  # every rank must take the same branch: the save is collective
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.save_checkpoint(self.path)
            rank_zero_info(
                f"SIGTERM: saved {self.path} at step {trainer.global_step}; stopping (resume=auto continues)"
            )
            # Lightning raises SIGTERMException at the end of this batch on the ranks that saw the signal:
            # mark it on all of them, so that every rank stops at the same point
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            for logger in trainer.loggers:  # buffered metrics would be lost with the process
                logger.save()
