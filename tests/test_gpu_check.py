"""experiments/gpu/check.py, the GPU check run whenever a GPU is lent: every command it runs composes here,
so the script cannot rot between loans (the checks themselves need a GPU and run only there)."""

import subprocess
import sys

import pytest
from helpers.paths import ROOT

SCRIPT = ROOT / "experiments" / "gpu" / "check.py"


@pytest.mark.slow
def test_every_gpu_check_composes(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--compose-only", "--out", str(tmp_path / "results.jsonl")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = [
        line.split('"check": "')[1].split('"')[0] for line in done.stdout.splitlines() if '"check"' in line
    ]
    assert names == ["train_default_512px", "train_16_mixed", "train_gradient_checkpointing", "generate",
                     "evaluate_tiny", "bench_512px_batch64"]  # fmt: skip
    assert not (tmp_path / "results.jsonl").exists()  # composing records nothing
