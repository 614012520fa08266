"""Peak memory as the runs and the benchmark report it."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bksdm.training.memory import peak_memory_gb, release_host_memory, reset_peak_memory


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resettable peak RSS is Linux-only")
def test_peak_memory_resets_on_cpu():
    cpu = torch.device("cpu")
    block = torch.ones(2**29, dtype=torch.uint8)  # 512 MiB, touched
    high = peak_memory_gb(cpu)
    del block
    release_host_memory()  # kept by the C library otherwise, once a CPU training ran in this process
    reset_peak_memory(cpu)
    assert peak_memory_gb(cpu) < high - 0.3


KEEP_FREED_MEMORY = """
import resource, sys, torch
from bksdm.training.memory import keep_freed_host_memory
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert keep_freed_host_memory()
model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(2)])
optimizer = torch.optim.AdamW(model.parameters())
# 64 MB of activations a layer: above 32 MiB, glibc's largest dynamic mmap threshold, so that a plain
# process maps every such block anew (16 MB blocks moved the threshold, and the count, from run to run)
x = torch.randn(65536, 256)
def step():
    model(x).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()  # the gradients are freed, and allocated again by the next step
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_host_memory_spares_the_page_faults_of_every_step():
    """The memory a training step frees is faulted in again by the next one, page by page, unless the C
    library keeps it (speed.keep_host_memory, on by default on a CPU)."""
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", KEEP_FREED_MEMORY, mode], capture_output=True,
                                 text=True, check=True).stdout)
        for mode in ("plain", "keep")
    }  # fmt: skip
    assert faults["plain"] > 3 * 64 * 2**20 // 4096 * 4  # 3 steps, each at least 4 blocks of 4 KiB pages
    assert faults["keep"] * 4 < faults["plain"]
