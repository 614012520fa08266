"""Peak memory as the runs and the benchmark report it."""

from pathlib import Path

import pytest
import torch

from bksdm.training.memory import peak_memory_gb, reset_peak_memory


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resettable peak RSS is Linux-only")
def test_peak_memory_resets_on_cpu():
    cpu = torch.device("cpu")
    block = torch.ones(2**29, dtype=torch.uint8)  # 512 MiB, touched
    high = peak_memory_gb(cpu)
    del block
    reset_peak_memory(cpu)
    assert peak_memory_gb(cpu) < high - 0.3
