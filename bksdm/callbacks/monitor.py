"""TrainingMonitor: images/s and peak memory, logged every step (aggregated by the logger interval), so
that "how fast, how much memory" has an answer in every run's metrics. (The module logs the gradient
norm, which it computes anyway to skip non-finite steps.)"""

from __future__ import annotations

import time

import lightning as L

from bksdm.training.memory import peak_memory_gb


class TrainingMonitor(L.Callback):
    """Logs ``perf/images_per_s`` (images of the step over the wall time since the previous step's end)
    and ``perf/peak_memory_gb``."""

    def __init__(self):
        self._last_end: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_end is not None and isinstance(batch, dict) and "caption" in batch:
            images = len(batch["caption"]) * trainer.world_size
            pl_module.log("perf/images_per_s", images / max(now - self._last_end, 1e-9))
        pl_module.log("perf/peak_memory_gb", peak_memory_gb(pl_module.device))
        self._last_end = now
