"""What the machine can do, probed in the benchmark's own process: the matmul rate in a dtype and the
memory bandwidth of large passes over memory. Together they give a step's roofline limit (``bksdm.bench.roofline``).

Each probe runs a few repeats after a warm-up and keeps the best (the machine's rate, not the noise of a
shared box); on a GPU it synchronises around the timed region.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from bksdm.training.memory import synchronize


def best_seconds(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The shortest wall time of ``repeats`` calls of ``work`` after one untimed call."""
    work()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        work()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flop_per_s(
    device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5
) -> float:
    """FLOP/s of a square ``size`` x ``size`` matmul (2 size^3 FLOPs) in ``dtype``. ``size`` None: doubled
    from 256 until one call takes a tenth of a second, at most 4096 on a CPU and 8192 on a GPU (large
    enough to reach the peak). A dtype without fast kernels stops early: bf16 on a CPU without AVX-512
    runs near 1 GFLOP/s, where one 4096 matmul would take two minutes."""
    if size is None:
        largest, size = (8192 if device.type == "cuda" else 4096), 256
        while size < largest and best_seconds(_matmul(device, dtype, size), device, 1) < 0.1:
            size *= 2
    return 2 * size**3 / best_seconds(_matmul(device, dtype, size), device, repeats)


def _matmul(device: torch.device, dtype: torch.dtype, size: int) -> Callable[[], object]:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    return lambda: torch.matmul(a, b, out=out)


def memory_bytes_per_s(
    device: torch.device, megabytes: int | None = None, repeats: int = 5
) -> dict[str, float]:
    """Bytes/s of two passes over ``megabytes`` fp32 tensors (None: 512 on a CPU, well beyond its caches;
    2048 on a GPU): ``copy`` (read one, write another) and ``update`` (``a += b`` in place: read both,
    write one; the access pattern of the optimizer, the EMA and gradient accumulation, and the faster on
    CPUs, where a copy's target is also read into the cache before it is written)."""
    megabytes = megabytes or (2048 if device.type == "cuda" else 512)
    a = torch.ones(megabytes * 2**18, device=device)  # 4-byte elements
    b, target = torch.ones_like(a), torch.empty_like(a)
    size = a.numel() * 4
    return {
        "copy": 2 * size / best_seconds(lambda: target.copy_(a), device, repeats),
        "update": 3 * size / best_seconds(lambda: a.add_(b), device, repeats),
    }


def probe_machine(device: torch.device, dtypes: list[torch.dtype]) -> dict:
    """``{"matmul_flop_per_s": {dtype name: FLOP/s}, "memory_bytes_per_s": {"copy", "update"},
    "bytes_per_s": the faster of the two}`` for ``device``: the rates a step's roofline is drawn with."""
    rates = {
        str(dtype).removeprefix("torch."): matmul_flop_per_s(device, dtype) for dtype in dict.fromkeys(dtypes)
    }
    memory = memory_bytes_per_s(device)
    return {"matmul_flop_per_s": rates, "memory_bytes_per_s": memory, "bytes_per_s": max(memory.values())}
