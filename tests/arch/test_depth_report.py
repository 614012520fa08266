"""python -m bksdm.arch for transformer teachers: params and MACs per block of the teacher, what the student keeps."""

import json
import os
import subprocess
import sys

from bksdm.arch.depth_report import depth_report_dict, transformer_cost
from bksdm.bench.flops import transformer_flops
from bksdm.teachers.builtin_transformers import PIXART_TOY_TRANSFORMER_CONFIG


def test_units_sum_to_the_model_and_the_flops_are_twice_the_macs():
    config = {**PIXART_TOY_TRANSFORMER_CONFIG, "_class_name": "PixArtTransformer2DModel"}
    units = transformer_cost(config, 16)
    assert [u.name for u in units if u.name.startswith("transformer_blocks.")] == [
        f"transformer_blocks.{i}" for i in range(28)
    ]
    report = depth_report_dict(config, {"transformer_blocks": {"keep": 14}}, 16, "pixart_half")
    teacher, student = report["summary"]
    assert teacher["params"] == sum(u.params for u in units)
    kept = [u for u in report["units"] if u["student"] is not None]
    assert student["params"] == sum(u["params"] for u in kept)
    assert student["macs"] == sum(u["macs"] for u in kept)
    assert [u["student"] for u in report["units"] if u["name"] == "transformer_blocks.27"] == [
        "transformer_blocks.13"
    ]
    assert transformer_flops(config, 16, 1, backward=False) == 2 * (
        teacher["macs"] + teacher["attention_macs"]
    )


def test_cli_reports_flux_mini_from_the_embedded_config():
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bksdm.arch", "teacher=flux_dev", "arch=flux_mini", "resolution=512", "format=json"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [row["params"] for row in report["summary"]] == [11_901_408_320, 3_179_199_552]
    assert report["kept"]["transformer_blocks"] == [0, 1, 2, 10, 18]
    removed = [u["name"] for u in report["units"] if u["student"] is None]
    assert len(removed) == 14 + 28 and "transformer_blocks.3" in removed
    bad = subprocess.run(
        [sys.executable, "-m", "bksdm.arch", "teacher=pixart_sigma", "arch=flux_mini"], capture_output=True,
        text=True, env=env,
    )  # fmt: skip
    assert bad.returncode != 0 and "arch=flux_mini does not fit teacher=pixart_sigma" in bad.stderr
