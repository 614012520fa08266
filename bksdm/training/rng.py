"""Every random number generator a training step draws from, captured and restored for exact resumes.

The states are tensors, ints and tuples only, so a checkpoint holding them loads with ``weights_only=True``.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_states() -> dict:
    """The global torch (CPU and every CUDA device), numpy and Python generators' states."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian)
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
