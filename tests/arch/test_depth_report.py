"""python -m bksdm.arch for transformer teachers: params and MACs per block of the teacher, what the student keeps."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from helpers.paths import CONF, ROOT

from bksdm.arch.depth import empty_transformer
from bksdm.arch.depth_report import depth_report_dict, transformer_cost
from bksdm.bench.flops import transformer_flops
from bksdm.teachers.builtin_transformers import PIXART_TOY_TRANSFORMER_CONFIG


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_units_sum_to_the_model_and_the_flops_are_twice_the_macs():
    config = {**PIXART_TOY_TRANSFORMER_CONFIG, "_class_name": "PixArtTransformer2DModel"}
    units = transformer_cost(config, 16)
    assert [u.name for u in units if u.name.startswith("transformer_blocks.")] == [
        f"transformer_blocks.{i}" for i in range(28)
    ]
    report = depth_report_dict(config, {"transformer_blocks": {"keep": 14}}, 16, "pixart_half")
    teacher, student = report["summary"]
    assert teacher["params"] == sum(u.params for u in units) == params(empty_transformer(config))
    assert units[-1].name == "scale_shift_table"  # PixArt's own parameter, in no child module
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


@pytest.mark.slow
def test_the_readme_table_has_the_transformer_rows_the_report_counts():
    """Each transformer teacher preset and its student preset at 1024 px, as the README's table lists them."""
    rows = re.findall(r"^\| (.+?) \| ([\d,]+) \| ([\d.]+) \|$", (ROOT / "README.md").read_text(), re.M)
    table = {name: (int(count.replace(",", "")), float(gmacs)) for name, count, gmacs in rows}
    for teacher, arch in (
        ("flux_dev", "flux_mini"),
        ("sd35_medium", "sd35_hprune"),
        ("pixart_sigma", "pixart_half"),
    ):
        config = yaml.safe_load((CONF / "teacher" / f"{teacher}.yaml").read_text())["transformer_config"]
        removal = yaml.safe_load((CONF / "arch" / f"{arch}.yaml").read_text())["removal"]
        summary = depth_report_dict(config, removal, 128, arch)["summary"]
        found = [
            value
            for name, value in table.items()
            if f"`teacher={teacher}`" in name or f"`arch={arch}`" in name
        ]
        assert found == [(row["params"], round(row["macs"] / 1e9, 1)) for row in summary], (teacher, arch)
