"""Peak memory of a run: CUDA max allocated on a GPU, peak resident set size of the process on CPU."""

from __future__ import annotations

import contextlib
import ctypes
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


def keep_freed_host_memory() -> bool:
    """Makes the C library keep the host memory a step frees, for the next step to reuse: large blocks come
    from the heap instead of their own ``mmap``, and the heap is never trimmed (glibc's ``mallopt``).

    Without it, each step's activations and gradients (GBs at full width) are mapped fresh and unmapped
    again, and the kernel faults in and zeroes every page once more each step: on a 2-core CPU that was a
    third of the step. The cost is a resident size that stays at its peak. Returns False, changing
    nothing, where the C library is not glibc. PyTorch's own CPU allocator does no caching; jemalloc or
    tcmalloc preloaded with ``LD_PRELOAD`` do the same job outside Python."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    # M_MMAP_MAX 0: never mmap a block; M_TRIM_THRESHOLD -1: never hand the heap's top back
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, -1))


def release_host_memory() -> None:
    """Hands freed heap pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
