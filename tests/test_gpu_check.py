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
                     "evaluate_tiny", "generation_rate_512px", "bench_512px_batch64", "train_sdxl_toy",
                     "bench_sdxl_1024px", "train_flux_toy_fp8", "bench_flux_512px"]  # fmt: skip
    assert not (tmp_path / "results.jsonl").exists()  # composing records nothing


def test_the_generation_rate_is_read_from_the_progress_bar():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    bar = "generating into /s/images: {}|#| {}/64 [00:10<00:10, {}]"
    output = "\r".join([bar.format(" 50%", 32, "3.05image/s"), bar.format("100%", 64, "3.10image/s")])
    assert check.generation_rate(output + "\nscoring: 100%|#| 64/64 [00:01<00:00, 60.1image/s]") == 3.1
    assert check.generation_rate(bar.format("100%", 64, "2.50s/image")) == pytest.approx(0.4)
    assert check.generation_rate("no bar") is None
