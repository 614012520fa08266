"""How fast a data module's training loader delivers samples (images/s), measured end to end."""

from __future__ import annotations

import time

import lightning as L


def loader_images_per_second(datamodule: L.LightningDataModule, batches: int = 20, warmup: int = 2) -> float:
    """Usable samples per second out of ``datamodule.train_dataloader()`` after ``warmup`` batches
    (worker start-up excluded); skipped samples do not count."""
    datamodule.setup("fit")
    iterator = iter(datamodule.train_dataloader())
    for _ in range(warmup):
        next(iterator)
    samples, start = 0, time.perf_counter()
    for _ in range(batches):
        samples += len(next(iterator)["caption"])
    return samples / (time.perf_counter() - start)
