"""Depth removal for transformer teachers (bksdm.arch.depth): the published depths' exact parameter counts,
students that are plain diffusers models of the teacher's class with the kept blocks' weights, and errors
that name the bad stack."""

import pytest
import torch
from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel

from bksdm.arch.depth import build_depth_student, depth_student_config, kept_blocks

FLUX_MINI = {"transformer_blocks": [0, 1, 2, 10, 18], "single_transformer_blocks": {"keep": 10}}


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(cls, config):
    with torch.device("meta"):
        return cls.from_config(config)


@pytest.fixture(scope="module")
def flux():
    with torch.device("meta"):
        return FluxTransformer2DModel(guidance_embeds=True)  # diffusers' defaults are FLUX.1's


def test_flux_and_pixart_sigma_have_their_published_counts(flux):
    assert params(flux) == 11_901_408_320
    assert (
        params(on_meta(FluxTransformer2DModel, depth_student_config(flux.config, FLUX_MINI))) == 3_179_199_552
    )
    eight = depth_student_config(flux.config, {"transformer_blocks": {"keep": 8, "rule": "first"}})
    assert (eight["num_layers"], eight["num_single_layers"]) == (8, 38)
    assert params(on_meta(FluxTransformer2DModel, eight)) == 8_163_264_064
    with torch.device("meta"):
        pixart = PixArtTransformer2DModel(
            sample_size=128, num_layers=28, attention_head_dim=72, num_attention_heads=16, cross_attention_dim=1152,
            caption_channels=4096, norm_type="ada_norm_single", use_additional_conditions=False,
            interpolation_scale=2,
        )  # fmt: skip
    assert params(pixart) == 610_856_096


def test_the_rules_pick_the_blocks(flux):
    kept = kept_blocks(flux.config, FLUX_MINI)
    assert kept["transformer_blocks"] == [0, 1, 2, 10, 18]
    assert kept["single_transformer_blocks"] == [0, 4, 8, 12, 16, 21, 25, 29, 33, 37]  # 10 of 38, evenly
    removed = kept_blocks(flux.config, {"single_transformer_blocks": {"remove": [[20, 37]]}})
    assert removed["single_transformer_blocks"] == list(range(20)) and removed["transformer_blocks"] == list(
        range(19)
    )


@pytest.mark.parametrize(
    "stacks, message",
    [
        ({"joint_blocks": [0]}, r"has no stack \['joint_blocks'\]: accepted are \['single_transformer_blocks', 'transformer_blocks'\]"),
        ({"transformer_blocks": [0, 19]}, r"transformer_blocks: keeps \[0, 19\]: accepted are indices of its 19 blocks"),
        ({"transformer_blocks": [2, 1]}, "indices must be increasing, each once"),
        ({"transformer_blocks": {"keep": 20}}, r"keep=20 rule='evenly': accepted are a count in \[1, 19\]"),
        ({"single_transformer_blocks": {"remove": [[30, 40]]}}, r"remove span \[30, 40\]: accepted are \[first, last\] within \[0, 37\]"),
        ({"transformer_blocks": "half"}, "'half' is not accepted: write a list"),
    ],
)  # fmt: skip
def test_a_spec_that_does_not_fit_names_the_stack(flux, stacks, message):
    with pytest.raises(ValueError, match=message):
        kept_blocks(flux.config, stacks)


def tiny_flux():
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=4, num_single_layers=6, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    ).eval()  # fmt: skip


def flux_inputs():
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 16, 8, generator=g), "encoder_hidden_states": torch.randn(1, 5, 16, generator=g),
        "pooled_projections": torch.randn(1, 8, generator=g), "timestep": torch.tensor([0.5]),
        "guidance": torch.tensor([3.5]), "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(5, 3),
    }  # fmt: skip


def test_a_flux_student_is_the_teacher_with_fewer_blocks_and_loads_back_in_plain_diffusers(tmp_path):
    teacher = tiny_flux()
    whole = build_depth_student(teacher, {})
    with torch.no_grad():
        assert torch.equal(whole(**flux_inputs()).sample, teacher(**flux_inputs()).sample)
    stacks = {"transformer_blocks": [0, 3], "single_transformer_blocks": {"keep": 3}}
    student = build_depth_student(teacher, stacks)
    assert (len(student.transformer_blocks), len(student.single_transformer_blocks)) == (2, 3)
    teacher_state = teacher.state_dict()
    for key, tensor in student.state_dict().items():
        source = (
            key.replace("transformer_blocks.1.", "transformer_blocks.3.", 1)
            if key.startswith("transformer_blocks.1.")
            else key
        )
        if key.startswith("single_transformer_blocks."):
            index = int(key.split(".")[1])
            source = key.replace(
                f"single_transformer_blocks.{index}.", f"single_transformer_blocks.{[0, 2, 5][index]}.", 1
            )
        assert torch.equal(tensor, teacher_state[source]), key
    student.save_pretrained(tmp_path / "transformer")
    loaded = FluxTransformer2DModel.from_pretrained(tmp_path / "transformer")
    with torch.no_grad():
        assert torch.equal(loaded(**flux_inputs()).sample, student(**flux_inputs()).sample)


def test_an_sd3_student_keeps_the_last_block_last_and_renumbers_dual_attention():
    torch.manual_seed(0)
    teacher = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=6, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
        pos_embed_max_size=8, dual_attention_layers=(1, 4),
    )  # fmt: skip
    assert kept_blocks(teacher.config, {"transformer_blocks": {"keep": 3, "rule": "first"}})[
        "transformer_blocks"
    ] == [0, 1, 5]
    student = build_depth_student(teacher, {"transformer_blocks": [0, 1, 4, 5]})
    assert list(student.config.dual_attention_layers) == [1, 2]
    assert student.transformer_blocks[-1].context_pre_only
    with pytest.raises(
        ValueError, match=r"keeps \[0, 1, 2\]: an SD3 student keeps the teacher's last block \(5\) last"
    ):
        kept_blocks(teacher.config, {"transformer_blocks": [0, 1, 2]})
    g = torch.Generator().manual_seed(0)
    out = student(
        torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 16, generator=g), torch.randn(1, 8, generator=g),
        torch.tensor([10]),
    ).sample  # fmt: skip
    assert out.shape == (1, 4, 8, 8)


def test_block_numbers_of_sd3_follow_the_kept_blocks():
    from bksdm.arch.depth import student_block_indices

    hprune = {"transformer_blocks": {"remove": [[13, 13], [15, 16], [18, 18], [20, 21]]}}
    teacher = {
        "_class_name": "SD3Transformer2DModel",
        "num_layers": 24,
        "dual_attention_layers": list(range(13)),
    }
    kept = kept_blocks(teacher, hprune)["transformer_blocks"]
    assert kept == [*range(13), 14, 17, 19, 22, 23]
    assert student_block_indices(kept, [7, 8, 9]) == [7, 8, 9]  # SD3.5's skip-layer guidance, before the cuts
    assert student_block_indices(kept, [12, 13, 14, 23]) == [12, 13, 17]  # 13 is gone, 14 and 23 move up
    late = depth_student_config(teacher, {"transformer_blocks": {"remove": [[0, 5]]}})
    assert late["dual_attention_layers"] == list(range(7)) and late["num_layers"] == 18
