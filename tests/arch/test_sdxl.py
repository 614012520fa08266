"""SDXL students as removal specs: the exact counts of SDXL-base-1.0, SSD-1B, Segmind-Vega and KOALA, the
transformer-layer weight map (first, evenly, listed), its errors, a real copy on a narrow SDXL-shaped
U-Net, and the per-block report."""

import json
import sys

import pytest
import torch
from helpers.paths import arch_removal, teacher_preset
from helpers.sdxl import narrow_sdxl

from bksdm.arch import build_student, student_config, student_weight_map, unit_map
from bksdm.arch.__main__ import main
from bksdm.arch.report import report_rows, sdxl_added_conditioning
from bksdm.arch.student import empty_unet

# the facts: diffusers UNet2DConditionModel parameter counts of these structures
COUNTS = {
    "ssd_1b": 1_331_334_404,
    "vega": 745_225_604,
    "koala_1b": 1_161_184_324,
    "koala_700m": 782_822_724,
}
SDXL_PARAMS = 2_567_463_684


def params(config: dict) -> int:
    return sum(p.numel() for p in empty_unet(config).parameters())


@pytest.fixture(scope="module")
def sdxl() -> dict:
    return teacher_preset("sdxl")


def test_the_sdxl_teacher_and_its_published_students_have_their_exact_counts(sdxl):
    assert params(sdxl) == SDXL_PARAMS
    for name, count in COUNTS.items():
        config = student_config(sdxl, arch_removal(name))
        assert params(config) == count, name
        assert len(student_weight_map(sdxl, arch_removal(name))) == len(empty_unet(config).state_dict())


def test_the_structures_are_the_published_ones(sdxl):
    ssd = student_config(sdxl, arch_removal("ssd_1b"))
    assert ssd["mid_block_type"] == "UNetMidBlock2D" and ssd["layers_per_block"] == 2
    assert ssd["reverse_transformer_layers_per_block"] == [[4, 4, 10], [2, 1, 1], [1, 1, 1]]
    koala = student_config(sdxl, arch_removal("koala_700m"))
    assert koala["mid_block_type"] is None and koala["layers_per_block"] == 1
    koala_1b = empty_unet(student_config(sdxl, arch_removal("koala_1b")))
    assert len(koala_1b.mid_block.attentions[0].transformer_blocks) == 6  # the last down level's depth
    assert [len(a.transformer_blocks) for a in koala_1b.up_blocks[0].attentions] == [6, 6]


def test_a_shallower_stack_keeps_the_layers_its_rule_names(sdxl):
    spec = {**arch_removal("koala_1b"), "kept_layers": "evenly"}
    units = unit_map(sdxl, spec)
    assert [units[f"down_blocks.2.attentions.0.transformer_blocks.{k}"] for k in range(6)] == [
        f"down_blocks.2.attentions.0.transformer_blocks.{t}" for t in (0, 2, 4, 5, 7, 9)
    ]
    assert (
        units["mid_block.attentions.0.transformer_blocks.5"] == "mid_block.attentions.0.transformer_blocks.9"
    )
    first = unit_map(sdxl, arch_removal("koala_1b"))
    assert first["up_blocks.0.attentions.1.transformer_blocks.5"].endswith(
        "up_blocks.0.attentions.2.transformer_blocks.5"
    )
    ssd = unit_map(sdxl, arch_removal("ssd_1b"))  # listed: the community's finding for SSD-1B
    assert [ssd[f"up_blocks.0.attentions.1.transformer_blocks.{k}"].rsplit(".", 1)[1] for k in range(4)] == [
        "0", "1", "2", "6",
    ]  # fmt: skip
    assert (
        "up_blocks.0.attentions.2.transformer_blocks.0" not in ssd
    )  # all 10 kept: the stack is copied whole
    assert ssd["mid_block.resnets.0"] == "mid_block.resnets.0" and "mid_block" not in ssd


@pytest.mark.parametrize(
    "change, message",
    [
        ({"transformer_layers_per_block": [1, 2, 11]}, r"has 11 transformer layers but its teacher stack .* has 10"),
        ({"transformer_layers_per_block": [1, 2]}, r"needs one depth per student stage \(3\)"),
        ({"reverse_transformer_layers_per_block": [[5, 5], [2, 2]]}, r"needs one list per up block \(3\) of 2"),
        ({"kept_layers": "last"}, r"kept_layers='last': accepted are \['first', 'evenly'\]"),
        ({"kept_layers_listed": {"down_blocks.9.attentions.0": [0]}}, r"names \['down_blocks.9.attentions.0'\]"),
        ({"kept_layers_listed": {"down_blocks.2.attentions.0": [0, 1]}}, r"accepted are 5 increasing indices"),
        ({"kept_layers_listed": {"down_blocks.2.attentions.0": [0, 1, 2, 3, 10]}}, r"of the teacher stack's 10"),
        ({"transformer_layers_per_block": [1, 0, 5]}, r"must be a list of depths >= 1"),
    ],
)  # fmt: skip
def test_a_spec_that_does_not_fit_says_why(sdxl, change, message):
    with pytest.raises(ValueError, match=message):
        student_weight_map(sdxl, {**arch_removal("koala_700m"), **change})


def test_build_student_copies_each_kept_transformer_layer_from_its_teacher_layer():
    teacher = narrow_sdxl()
    spec = {
        "layers_per_block": 1, "keep_mid_block": True, "mid_block_attention": False,
        "transformer_layers_per_block": [1, 1, 2], "reverse_transformer_layers_per_block": [[2, 3], [1, 1], [1, 1]],
        "kept_layers": "evenly", "kept_layers_listed": {"up_blocks.0.attentions.1": [0, 2, 3]},
    }  # fmt: skip
    student = build_student(teacher, spec)
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    pairs = {
        "down_blocks.2.attentions.0.transformer_blocks.1.attn1.to_q.weight": "down_blocks.2.attentions.0.transformer_blocks.3.attn1.to_q.weight",
        "up_blocks.0.attentions.1.transformer_blocks.1.ff.net.2.weight": "up_blocks.0.attentions.2.transformer_blocks.2.ff.net.2.weight",
        "up_blocks.0.resnets.1.conv1.weight": "up_blocks.0.resnets.2.conv1.weight",  # the BK rule: last pair
        "mid_block.resnets.0.conv2.weight": "mid_block.resnets.0.conv2.weight",
        "add_embedding.linear_1.weight": "add_embedding.linear_1.weight",
    }  # fmt: skip
    for key, source in pairs.items():
        assert torch.equal(student_state[key], teacher_state[source]), key
    assert not hasattr(student.mid_block, "attentions") or not student.mid_block.attentions
    with torch.no_grad():
        added = {"text_embeds": torch.randn(2, 16), "time_ids": torch.randn(2, 6)}
        out = student(
            torch.randn(2, 4, 16, 16), torch.tensor([1, 500]), torch.randn(2, 7, 24), added_cond_kwargs=added
        )
    assert out.sample.shape == (2, 4, 16, 16)


def test_the_report_counts_sdxl_with_its_added_conditioning_and_names_the_kept_layers(sdxl):
    added = sdxl_added_conditioning(sdxl, 2)
    assert added["text_embeds"].shape == (2, 1280) and added["time_ids"].shape == (2, 6)
    rows = {row.teacher: row for row in report_rows(sdxl, arch_removal("ssd_1b"), 32)}
    assert rows["down_blocks.2.attentions.0"].kept_layers == ([0, 1, 2, 6], 10)
    assert rows["up_blocks.0.attentions.2"].kept_layers is None and rows["up_blocks.0.attentions.2"].student
    assert rows["mid_block.attentions.0"].student is None and rows["mid_block.resnets.0"].student
    assert sum(row.params for row in rows.values()) == SDXL_PARAMS


def test_cli_reports_an_sdxl_student_offline(monkeypatch, capsys):
    monkeypatch.setattr(
        sys, "argv", ["bksdm.arch", "teacher=sdxl", "arch=koala_700m", "resolution=256", "format=json"]
    )
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    main()
    report = json.loads(capsys.readouterr().out)
    assert report["removal"] == "koala_700m" and report["teacher"] == "sdxl"
    assert [row["model"] for row in report["summary"]] == ["teacher", "koala_700m"]  # no SD-v1 names
    assert [row["params"] for row in report["summary"]] == [SDXL_PARAMS, COUNTS["koala_700m"]]
    assert report["spec"]["reverse_transformer_layers_per_block"] == [[5, 5], [2, 2], [1, 1]]


def test_sdxl_training_composes_and_other_added_conditioning_is_refused(tmp_path):
    from helpers.train_config import config

    from bksdm.cli.train_setup import check_config

    check_config(config("teacher=sdxl", "arch=koala_700m", "data=synthetic", output_dir=tmp_path))
    with pytest.raises(
        ValueError, match=r"added conditioning of type 'image'.*accepted are none .* 'text_time'"
    ):
        check_config(
            config(
                "teacher=sdxl",
                "arch=koala_700m",
                "data=synthetic",
                "teacher.unet_config.addition_embed_type=image",
                output_dir=tmp_path,
            )
        )


@pytest.mark.slow
def test_the_readme_table_is_what_the_report_counts(sdxl):
    import re

    from helpers.paths import ROOT

    from bksdm.arch.report import unet_cost

    rows = re.findall(r"^\| (.+?) \| ([\d,]+) \| ([\d.]+) \|$", (ROOT / "README.md").read_text(), re.M)
    table = {name: (int(params.replace(",", "")), float(gmacs)) for name, params, gmacs in rows}
    assert table["SDXL-base-1.0 teacher"] == (SDXL_PARAMS, round(unet_cost(sdxl, 128).macs / 1e9, 1))
    for name, (count, gmacs) in table.items():
        arch = re.search(r"`arch=(\w+)`", name)
        if arch is None or "transformer_blocks" in arch_removal(arch[1]):  # transformers: test_depth_report
            continue
        config = student_config(sdxl, arch_removal(arch[1]))
        assert count == params(config), name
        if arch[1] == "koala_700m":  # one student's MACs at 1024 px (each count takes seconds)
            assert gmacs == round(unet_cost(config, 128).macs / 1e9, 1)
