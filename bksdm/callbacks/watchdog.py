"""DataWatchdog: a run whose data loader stops producing batches says so, and a SIGTERM still ends it.

A stuck loader (a ``pipe:`` command waiting on a dead mount, an http read that never returns, a worker
hung in a decoder) blocks the training loop where no callback runs: Lightning notes a SIGTERM and waits
for the end of a batch that never comes, and the job burns its allocation. This callback watches from a
thread. After ``warn_after_s`` without a new batch it logs which source it waits for, and again every
``warn_after_s``; after ``stop_after_s`` (None: never), or ``sigterm_grace_s`` after a SIGTERM (or a
scheduler's requeue signal) without the batch ending, it interrupts the main thread. The run then stops
between two steps, where the state is whole: in a single-process run it saves ``preempted.ckpt`` (what
``resume=auto`` continues from), flushes the loggers and exits with status 1, naming the wait.

Listed last among the callbacks, so that what other callbacks do at a batch's end (a sample grid, an
evaluation) counts as part of the step, not as waiting for data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

POLL_S = 0.5
INTERRUPT = signal.SIGALRM  # how the watching thread stops the main thread

log = logging.getLogger(__name__)


def descendant_processes() -> list[int]:
    """The ids of this process's children, their children and so on (from /proc; none without it)."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [os.getpid()]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


class DataWatchdog(L.Callback):
    def __init__(
        self,
        dirpath: str | Path,
        warn_after_s: float = 300.0,
        stop_after_s: float | None = None,
        sigterm_grace_s: float = 30.0,
        filename: str = "preempted.ckpt",
    ):
        for name, value in (("warn_after_s", warn_after_s), ("sigterm_grace_s", sigterm_grace_s)):
            if value <= 0:
                raise ValueError(f"callbacks.data_watchdog.{name}={value!r} must be > 0 (seconds)")
        if stop_after_s is not None and stop_after_s <= 0:
            raise ValueError(f"callbacks.data_watchdog.stop_after_s={stop_after_s!r} must be > 0 or null")
        self.path = Path(dirpath) / filename
        self.warn_after_s, self.stop_after_s, self.sigterm_grace_s = (
            warn_after_s,
            stop_after_s,
            sigterm_grace_s,
        )
        self.reason: str | None = None  # why the main thread was interrupted
        self._last_batch = time.monotonic()
        self._in_step = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._trainer: L.Trainer | None = None
        self._previous_handler = None

    # -- the training loop's side: heartbeats ---------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        # before Lightning fetches the first batch (it prefetches before on_train_start)
        self._trainer, self._last_batch = trainer, time.monotonic()
        if threading.current_thread() is threading.main_thread():
            # SIGALRM, not SIGINT: a job started in the background of a shell ignores SIGINT
            self._previous_handler = signal.signal(INTERRUPT, self._raise_interrupt)
        self._stopped.clear()
        self._thread = threading.Thread(target=self._watch, name="bksdm-data-watchdog", daemon=True)
        self._thread.start()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._in_step, self._last_batch = True, time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._in_step, self._last_batch = False, time.monotonic()

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop_watching()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._stop_watching()
        if self.reason is None or not isinstance(exception, KeyboardInterrupt):
            return
        if trainer.world_size == 1:  # between two steps: the state is whole (other ranks may be mid-step)
            # the whole training state (Lightning's weights_only=None means the same, with a notice)
            trainer.save_checkpoint(self.path, weights_only=False)
            saved = f"saved {self.path} at step {trainer.global_step} (resume=auto continues from it)"
        else:
            saved = "no checkpoint saved (several ranks); the newest periodic one is in checkpoints/"
        for logger in trainer.loggers:
            logger.save()
        # Lightning exits with status 1 after the interrupt; this says why
        print(f"Error: {self.reason}; {saved}", file=sys.stderr, flush=True)
        # the stuck reader's own processes (a `pipe:` command and what its shell started, loader
        # workers) would hold the exit: webdataset waits for a pipe's command, which a stuck one never ends
        for pid in descendant_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _stop_watching(self) -> None:
        self._stopped.set()
        if self._previous_handler is not None:
            signal.signal(INTERRUPT, self._previous_handler)
            self._previous_handler = None

    def _raise_interrupt(self, signum, frame) -> None:
        # what Ctrl-C raises: Lightning stops the fit gracefully and calls on_exception
        raise KeyboardInterrupt(self.reason)

    # -- the watching thread ----------------------------------------------------------------------------
    def _source(self) -> str:
        datamodule = getattr(self._trainer, "datamodule", None)
        return getattr(datamodule, "source", "the data source")

    def _signalled(self) -> bool:
        trainer = self._trainer
        return bool(trainer.received_sigterm) or any(
            getattr(callback, "requested", False) for callback in trainer.callbacks
        )

    def _watch(self) -> None:
        warned_at = 0.0
        signalled_at: float | None = None
        while not self._stopped.wait(POLL_S):
            if self._in_step:  # a long step (evaluation, a grid) is not a stuck loader
                warned_at, signalled_at = 0.0, None
                continue
            now = time.monotonic()
            waited = now - self._last_batch
            if signalled_at is None and self._signalled():
                signalled_at = now
            if signalled_at is not None and now - signalled_at >= self.sigterm_grace_s:
                self._interrupt(
                    f"stop signal received, but the data loader produced no batch for {waited:.0f} s "
                    f"(waiting for {self._source()})"
                )
                return
            if self.stop_after_s is not None and waited >= self.stop_after_s:
                self._interrupt(
                    f"the data loader produced no batch for {waited:.0f} s (waiting for {self._source()}; "
                    f"callbacks.data_watchdog.stop_after_s={self.stop_after_s:g})"
                )
                return
            if waited >= self.warn_after_s and now - warned_at >= self.warn_after_s:
                warned_at = now
                if rank_zero_only.rank == 0:  # a log record (console and train.log), not a Python warning
                    log.warning(f"no batch for {waited:.0f} s: still waiting for {self._source()}")

    def _interrupt(self, reason: str) -> None:
        self.reason = reason
        # a real signal to the main thread, not _thread.interrupt_main: it also breaks a blocking read
        signal.pthread_kill(threading.main_thread().ident, INTERRUPT)
