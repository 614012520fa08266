"""Peak memory of a run: CUDA max allocated on a GPU, peak resident set size of the process on CPU."""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_memory_gb(device: torch.device) -> float:
    """GiB since the start of the process, or since the last ``reset_peak_memory``."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if _STATUS.is_file():  # Linux: VmHWM, which reset_peak_memory can reset (ru_maxrss cannot be)
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def reset_peak_memory(device: torch.device) -> None:
    """Starts a new peak at the current use (on CPU: Linux only; elsewhere the peak stays the process's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif _CLEAR_REFS.exists():
        with contextlib.suppress(OSError):  # resets the process's peak RSS (VmHWM) to its current RSS
            _CLEAR_REFS.write_text("5")


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so that host clocks time it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
