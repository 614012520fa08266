"""Student configs, exact parameter counts, the reference weight map and build_student."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from helpers.paths import CONF, teacher_preset
from omegaconf import OmegaConf

from bksdm.arch import (
    PAPER_REMOVALS,
    RemovalSpec,
    build_student,
    resolve_removal,
    student_config,
    student_weight_map,
    unet_cost,
    unit_map,
    weight_map,
)

CA_DOWN, DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CA_UP, UP = "CrossAttnUpBlock2D", "UpBlock2D"
# the reference implementation's student configs (bk-sdm-facts.md section 2)
REFERENCE = {
    "base": (
        1,
        "UNetMidBlock2DCrossAttn",
        [CA_DOWN, CA_DOWN, CA_DOWN, DOWN],
        [UP, CA_UP, CA_UP, CA_UP],
        [320, 640, 1280, 1280],
    ),
    "small": (1, None, [CA_DOWN, CA_DOWN, CA_DOWN, DOWN], [UP, CA_UP, CA_UP, CA_UP], [320, 640, 1280, 1280]),
    "tiny": (1, None, [CA_DOWN, CA_DOWN, CA_DOWN], [CA_UP, CA_UP, CA_UP], [320, 640, 1280]),
}
CHANGED_KEYS = {
    "layers_per_block",
    "mid_block_type",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
}


@pytest.mark.parametrize("variant", ["base", "small", "tiny"])
def test_sd14_student_configs_equal_the_reference(sd14_config, variant):
    config = student_config(sd14_config, variant)
    layers, mid, down, up, channels = REFERENCE[variant]
    assert config["layers_per_block"] == layers
    assert config["mid_block_type"] == mid
    assert config["down_block_types"] == down
    assert config["up_block_types"] == up
    assert config["block_out_channels"] == channels
    assert {k: v for k, v in config.items() if k not in CHANGED_KEYS} == {
        k: v for k, v in sd14_config.items() if k not in CHANGED_KEYS
    }


def test_v2_students_cut_per_stage_lists(sd21base_config):
    assert student_config(sd21base_config, "small")["attention_head_dim"] == [5, 10, 20, 20]
    tiny = student_config(sd21base_config, "tiny")
    assert tiny["attention_head_dim"] == [5, 10, 20]
    assert tiny["use_linear_projection"] is True
    assert tiny["cross_attention_dim"] == 1024


def test_sd21_768_students_keep_its_resolution_and_upcast():
    config = student_config(teacher_preset("sd21"), "tiny")
    assert config["sample_size"] == 96
    assert config["upcast_attention"] is True


@pytest.mark.parametrize(
    ("teacher", "variant", "params"),
    [
        ("sd14", None, 859_520_964),
        ("sd14", "base", 579_384_964),
        ("sd14", "small", 482_346_884),
        ("sd14", "tiny", 323_384_964),
        ("sd15", None, 859_520_964),
        ("sd21base", None, 865_910_724),
        ("sd21base", "base", 583_480_964),
        ("sd21base", "small", 485_787_524),
        ("sd21base", "tiny", 326_825_604),
        ("sd21", None, 865_910_724),
        ("sd21", "tiny", 326_825_604),
    ],
)
def test_exact_parameter_counts(teacher, variant, params):
    from bksdm.arch.student import empty_unet

    config = teacher_preset(teacher)
    unet = empty_unet(config if variant is None else student_config(config, variant))
    assert all(p.is_meta for p in unet.parameters())  # counted without allocating weights
    assert sum(p.numel() for p in unet.parameters()) == params


@pytest.mark.parametrize(
    ("variant", "gmacs"), [(None, 338.6), ("base", 223.7), ("small", 217.6), ("tiny", 205.0)]
)
def test_macs_per_call_at_64x64_latent(sd14_config, variant, gmacs):
    config = sd14_config if variant is None else student_config(sd14_config, variant)
    assert round(unet_cost(config, 64).macs / 1e9, 1) == gmacs


@pytest.mark.parametrize(("variant", "keys"), [("base", 442), ("small", 396), ("tiny", 358)])
def test_full_size_weight_map_covers_every_student_key(sd14_config, variant, keys):
    mapping = student_weight_map(sd14_config, variant)
    assert len(mapping) == keys


def test_reference_weight_map_choices(sd14_config):
    small = student_weight_map(sd14_config, "small")
    assert small["down_blocks.0.resnets.0.conv1.weight"] == "down_blocks.0.resnets.0.conv1.weight"
    assert small["up_blocks.1.resnets.0.conv1.weight"] == "up_blocks.1.resnets.0.conv1.weight"
    assert small["up_blocks.1.resnets.1.conv1.weight"] == "up_blocks.1.resnets.2.conv1.weight"
    assert small["up_blocks.3.attentions.1.proj_out.weight"] == "up_blocks.3.attentions.2.proj_out.weight"
    assert not any(k.startswith("mid_block") for k in small)
    tiny_units = unit_map(sd14_config, "tiny")
    assert tiny_units["up_blocks.0.resnets.1"] == "up_blocks.1.resnets.2"
    assert tiny_units["up_blocks.0.upsamplers.0"] == "up_blocks.1.upsamplers.0"
    assert tiny_units["up_blocks.2.attentions.0"] == "up_blocks.3.attentions.0"
    assert "down_blocks.2.downsamplers.0" not in tiny_units
    assert not any(
        source.startswith(("down_blocks.3", "mid_block", "up_blocks.0")) for source in tiny_units.values()
    )


@pytest.mark.parametrize(
    "variant", ["base", "small", "tiny", {"layers_per_block": 2, "drop_innermost_stages": 1}]
)
def test_build_student_copies_every_tensor_from_its_mapped_teacher_tensor(toy_teacher, variant):
    teacher = toy_teacher.unet
    student = build_student(teacher, variant)
    assert student.config.mid_block_type == student_config(teacher.config, variant)["mid_block_type"]
    teacher_state = teacher.state_dict()
    mapping = unit_map(teacher.config, variant)
    from bksdm.arch.student import map_key

    student_state = student.state_dict()
    assert student_state
    for key, tensor in student_state.items():
        assert torch.equal(tensor, teacher_state[map_key(key, mapping)]), key
    # copies, not views: training the student never touches the teacher
    before = teacher_state["conv_in.weight"].clone()
    with torch.no_grad():
        student.conv_in.weight.add_(1.0)
    assert torch.equal(teacher.conv_in.weight, before)
    assert student.training and all(p.requires_grad for p in student.parameters())


def test_build_student_casts_to_the_training_dtype(toy_teacher):
    half_teacher = build_student(toy_teacher.unet, {"layers_per_block": 2}, dtype=torch.bfloat16)
    student = build_student(half_teacher, "small", dtype=torch.float32)
    assert half_teacher.dtype == torch.bfloat16 and student.dtype == torch.float32
    assert torch.equal(student.conv_in.weight, half_teacher.conv_in.weight.float())


def test_student_with_all_blocks_is_the_teacher(toy_teacher):
    teacher = toy_teacher.unet
    clone = build_student(
        teacher, {"layers_per_block": 2, "keep_mid_block": True, "drop_innermost_stages": 0}
    )
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(
            clone(sample, 10, context).sample, teacher(sample, 10, context).sample, atol=1e-6
        )


@pytest.mark.parametrize("variant", ["base", "small", "tiny"])
def test_student_config_round_trips_through_diffusers(tmp_path, toy_teacher, variant):
    config = student_config(toy_teacher.unet.config, variant)
    unet = UNet2DConditionModel.from_config(config)
    unet.save_pretrained(tmp_path)
    loaded = UNet2DConditionModel.from_pretrained(tmp_path)
    assert {k: loaded.config[k] for k in config} == {k: unet.config[k] for k in config}
    assert loaded.config.mid_block_type == config["mid_block_type"]
    assert (loaded.mid_block is None) == (config["mid_block_type"] is None)
    with torch.no_grad():
        out = loaded(torch.randn(2, 4, 16, 16), torch.tensor([1, 999]), torch.randn(2, 77, 32)).sample
    assert out.shape == (2, 4, 16, 16)


def test_shipped_arch_presets_are_the_paper_variants():
    for name, spec in PAPER_REMOVALS.items():
        removal = OmegaConf.to_container(OmegaConf.load(CONF / "arch" / f"{name}.yaml").removal)
        assert resolve_removal(removal) == spec


def test_unknown_variant_lists_what_is_accepted(sd14_config):
    with pytest.raises(ValueError, match=r"unknown removal 'medium'.*\['base', 'small', 'tiny'\]"):
        student_config(sd14_config, "medium")
    with pytest.raises(ValueError, match=r"unknown removal spec keys \['layers'\].*layers_per_block"):
        student_config(sd14_config, {"layers": 1})
    with pytest.raises(ValueError, match="keep_mid_block must be true or false, got 'no'"):
        student_config(sd14_config, {"keep_mid_block": "no"})
    with pytest.raises(TypeError, match="got int"):
        student_config(sd14_config, 3)


def test_removal_spec_must_fit_the_teacher(sd14_config):
    with pytest.raises(ValueError, match=r"layers_per_block=3 .* accepted are 1\.\.2"):
        student_config(sd14_config, RemovalSpec(layers_per_block=3))
    with pytest.raises(ValueError, match=r"drop_innermost_stages=4 .* accepted are 0\.\.3"):
        student_config(sd14_config, RemovalSpec(drop_innermost_stages=4))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"down_block_types": ["SimpleCrossAttnDownBlock2D"] * 4},
            r"down_block_types .*accepted: \['CrossAttnDownBlock2D'",
        ),
        ({"up_block_types": ["UpBlock2D"] * 4}, "do not mirror"),
        (
            {"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"},
            r"mid_block_type .*accepted: \['UNetMidBlock2DCrossAttn'\]",
        ),
        ({"layers_per_block": [2, 2, 1, 1]}, "layers_per_block"),
        ({"block_out_channels": [320, 640, 1280]}, "one width per down block"),
    ],
)
def test_teacher_of_another_topology_is_rejected(sd14_config, change, message):
    with pytest.raises(ValueError, match=message):
        student_config({**sd14_config, **change}, "small")


def test_shape_mismatch_names_the_key():
    # unequal innermost widths: tiny's up block 0 would inherit a block built for another skip width
    teacher = {**teacher_preset("sd14"), "block_out_channels": [320, 640, 960, 1280]}
    with pytest.raises(
        ValueError, match=r"student tensor 'up_blocks\.0\..*' has shape .* teacher tensor 'up_blocks\.1\."
    ):
        student_weight_map(teacher, "tiny")


def test_unmapped_key_is_an_error_not_a_random_init():
    student = {"conv_in.weight": torch.Size([4]), "up_blocks.0.resnets.1.conv1.weight": torch.Size([4])}
    teacher = {"conv_in.weight": torch.Size([4]), "up_blocks.0.resnets.1.conv1.weight": torch.Size([4])}
    units = {"up_blocks.0.resnets.1": "up_blocks.0.resnets.2"}
    with pytest.raises(
        KeyError,
        match=r"'up_blocks\.0\.resnets\.1\.conv1\.weight' maps to teacher tensor 'up_blocks\.0\.resnets\.2",
    ):
        weight_map(student, teacher, units)
