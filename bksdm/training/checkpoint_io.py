"""Checkpoint files written atomically, read without running pickled code.

A kill during ``torch.save`` leaves a truncated file; if it had the final name, ``resume=auto`` would pick
the newest, broken checkpoint. Here the bytes go to a hidden ``.<name>.partial`` file in the same folder,
are flushed to disk and renamed over the target, so the newest ``*.ckpt`` is always whole. Loading uses
``weights_only=True``: tensors and plain containers only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def save_atomically(value: Any, path: Path) -> None:
    """``torch.save(value, path)`` so that readers see either the old file or the whole new one."""
    staging = path.with_name(f".{path.name}.partial")
    with open(staging, "wb") as handle:
        torch.save(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
