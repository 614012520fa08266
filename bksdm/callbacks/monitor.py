"""TrainingMonitor: gradient norm, images/s and peak memory, logged every step (aggregated by the logger
interval), so that "how fast, how much memory" has an answer in every run's metrics."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch


def peak_memory_gb(device: torch.device) -> float:
    """CUDA max allocated on a GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


class TrainingMonitor(L.Callback):
    """Logs ``train/grad_norm`` (total L2 norm of the student's gradients, after AMP unscaling and before
    clipping), ``perf/images_per_s`` (images of the step over the wall time since the previous step's end)
    and ``perf/peak_memory_gb``."""

    def __init__(self):
        self._last_end: float | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.detach() for p in pl_module.student.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            pl_module.log("train/grad_norm", norm)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_end is not None and isinstance(batch, dict) and "caption" in batch:
            images = len(batch["caption"]) * trainer.world_size
            pl_module.log("perf/images_per_s", images / max(now - self._last_end, 1e-9))
        pl_module.log("perf/peak_memory_gb", peak_memory_gb(pl_module.device))
        self._last_end = now
