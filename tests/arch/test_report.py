"""The architecture report: units, costs, the teacher-vs-student table and `python -m bksdm.arch`."""

import json
import os
import subprocess
import sys

import pytest

from bksdm.arch import render_report, student_config, unet_cost
from bksdm.arch.__main__ import main
from bksdm.arch.report import check_latent_size, report_rows

TINY_REMOVED = {
    *(f"down_blocks.{i}.{part}.1" for i in range(3) for part in ("resnets", "attentions")),
    "down_blocks.2.downsamplers.0", "down_blocks.3.resnets.0", "down_blocks.3.resnets.1",
    "mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1",
    "up_blocks.0.resnets.0", "up_blocks.0.resnets.1", "up_blocks.0.resnets.2", "up_blocks.0.upsamplers.0",
    *(f"up_blocks.{i}.{part}.1" for i in (1, 2, 3) for part in ("resnets", "attentions")),
}  # fmt: skip


def test_report_rows_say_what_was_removed_and_what_each_kept_unit_became(sd14_config):
    rows = report_rows(sd14_config, "tiny", 64)
    assert {r.teacher for r in rows if r.student is None} == TINY_REMOVED
    by_teacher = {r.teacher: r.student for r in rows}
    assert by_teacher["up_blocks.1.resnets.2"] == "up_blocks.0.resnets.1"
    assert by_teacher["down_blocks.0.attentions.0"] == "down_blocks.0.attentions.0"
    assert by_teacher["conv_out"] == "conv_out"
    assert sum(r.params for r in rows) == 859_520_964
    assert sum(r.params for r in rows if r.student is not None) == 323_384_964
    # forward order: the mid block sits between the down and the up blocks
    names = [r.teacher for r in rows]
    assert (
        names.index("down_blocks.3.resnets.1")
        < names.index("mid_block.resnets.0")
        < names.index("up_blocks.0.resnets.0")
    )


def test_unit_costs_add_up_to_the_whole_model(sd14_config):
    cost = unet_cost(student_config(sd14_config, "small"), 64)
    assert cost.params == 482_346_884
    assert all(u.params >= 0 and u.macs >= 0 for u in cost.units)
    assert cost.attention_macs > 0  # Q K^T and A V are counted apart, not lost


def test_macs_scale_with_resolution(sd14_config):
    # conv and linear MACs grow with the number of latent pixels (attention to text included)
    small, large = unet_cost(sd14_config, 32).macs, unet_cost(sd14_config, 64).macs
    assert 3.9 < large / small < 4.1


@pytest.mark.parametrize("latent", [0, 60, 63])
def test_latent_size_must_fit_the_downsamplers(sd14_config, latent):
    with pytest.raises(ValueError, match=f"latent size {latent} does not fit .* multiple of 8"):
        check_latent_size(sd14_config, latent)


def test_rendered_table_shows_all_three_variants_with_exact_counts(sd14_config):
    text = render_report(sd14_config, "tiny", 64, "sd14")
    for figure in (
        "859,520,964",
        "579,384,964",
        "482,346,884",
        "323,384,964",
        "338.61",
        "223.67",
        "217.65",
        "204.95",
    ):
        assert figure in text
    assert "down_blocks.0.resnets.1" in text and "REMOVED" in text
    assert "-> up_blocks.0.resnets.1" in text


def run_main(monkeypatch, capsys, *overrides):
    monkeypatch.setattr(sys, "argv", ["bksdm.arch", *overrides])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # let the original exception through
    main()
    return capsys.readouterr().out


def test_cli_json_on_the_toy_teacher(monkeypatch, capsys, tmp_path, toy_path):
    monkeypatch.chdir(tmp_path)
    report = json.loads(run_main(monkeypatch, capsys, "teacher=toy", "arch=base_no_inner", "format=json"))
    assert report["teacher"] == "toy" and report["latent_size"] == 16
    assert report["spec"] == {
        "layers_per_block": 1, "keep_mid_block": True, "drop_innermost_stages": 1, "mid_block_attention": True,
        "transformer_layers_per_block": None, "reverse_transformer_layers_per_block": None, "kept_layers": "first",
        "kept_layers_listed": {},
    }  # fmt: skip
    assert report["removal"] == "base_no_inner"  # the arch config's name
    assert [row["model"] for row in report["summary"]] == [
        "teacher",
        "base",
        "small",
        "tiny",
        report["removal"],
    ]
    assert list(tmp_path.iterdir()) == []  # a report writes nothing


@pytest.mark.parametrize(
    ("override", "message"),
    [("format=xml", r"format='xml'.*\['table', 'json'\]"), ("resolution=500", "divisible by 8")],
)
def test_cli_rejects_bad_settings(monkeypatch, capsys, override, message):
    with pytest.raises(ValueError, match=message):
        run_main(monkeypatch, capsys, "teacher=sd14", override)


def test_cli_as_a_user_runs_it():
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bksdm.arch", "teacher=sd14", "arch=tiny"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "323,384,964" in done.stdout and "204.95" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "bksdm.arch", "arch=medium"], capture_output=True, text=True, env=env
    )
    assert bad.returncode != 0
    assert "arch/medium" in bad.stderr
    shipped = ["base", "base_no_inner", "flux_mini", "koala_1b", "koala_700m", "pixart_half", "sd35_hprune",
               "sdxl_base", "sdxl_small", "small", "ssd_1b", "tiny", "vega"]  # fmt: skip
    assert "".join(f"\t{name}\n" for name in shipped) in bad.stderr
