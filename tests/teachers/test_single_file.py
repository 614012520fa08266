"""The U-Net in the original checkpoint layout (bksdm.teachers.single_file): compact block numbering, and
diffusers' own from_single_file reads it back to the same tensors and outputs, for SD-v1 students and
SDXL-shaped ones (asymmetric transformer depths, a ResNet-only mid block)."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from helpers.sdxl import narrow_sdxl

from bksdm.arch import build_student
from bksdm.teachers.export import SINGLE_FILE
from bksdm.teachers.single_file import original_key, original_state_dict, save_single_file


def round_trip(unet, tmp_path, **inputs):
    unet.save_pretrained(tmp_path / "unet")
    path = save_single_file(unet, tmp_path / "unet.safetensors")
    loaded = UNet2DConditionModel.from_single_file(str(path), config=str(tmp_path), subfolder="unet")
    state = unet.state_dict()
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(tensor, state[key]) for key, tensor in loaded.state_dict().items())
    torch.manual_seed(0)
    sample, timesteps = torch.randn(2, 4, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(
            unet(sample, timesteps, **inputs).sample, loaded(sample, timesteps, **inputs).sample
        )


def test_sd_v1_numbering_is_the_original_one_made_compact(toy_teacher):
    config = dict(toy_teacher.unet.config)
    assert original_key("down_blocks.0.downsamplers.0.conv.weight", config) == "input_blocks.3.0.op.weight"
    assert original_key("up_blocks.1.attentions.2.proj_out.bias", config) == "output_blocks.5.1.proj_out.bias"
    assert original_key("mid_block.resnets.1.norm1.weight", config) == "middle_block.2.in_layers.0.weight"
    tiny = build_student(toy_teacher.unet, "tiny")  # one pair per down block: every slot moves up
    keys = set(original_state_dict(tiny))
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in keys  # SD-v1's input_blocks.3.0.op
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in keys  # after resnet and attention
    assert not any(".middle_block." in key for key in keys) and not any(
        "input_blocks.7" in key for key in keys
    )
    assert "model.diffusion_model.input_blocks.1.0.skip_connection.weight" not in keys  # widths 32 -> 32


@pytest.mark.parametrize("variant", [None, "small", "tiny"])
def test_diffusers_reads_an_sd_student_back_from_the_file(toy_teacher, tmp_path, variant):
    unet = toy_teacher.unet if variant is None else build_student(toy_teacher.unet, variant)
    round_trip(unet.eval(), tmp_path, encoder_hidden_states=torch.randn(2, 77, 32))


@pytest.mark.parametrize(
    "spec",
    [
        None,
        {"layers_per_block": 1, "mid_block_attention": False, "transformer_layers_per_block": [1, 1, 2],
         "reverse_transformer_layers_per_block": [[2, 3], [1, 1], [1, 1]]},
        {"layers_per_block": 1, "keep_mid_block": False},
    ],
)  # fmt: skip
def test_diffusers_reads_an_sdxl_student_back_from_the_file(tmp_path, spec):
    teacher = narrow_sdxl()
    unet = teacher if spec is None else build_student(teacher, spec)
    added = {"text_embeds": torch.randn(2, 16), "time_ids": torch.randn(2, 6)}
    round_trip(unet.eval(), tmp_path, encoder_hidden_states=torch.randn(2, 7, 24), added_cond_kwargs=added)
    assert "model.diffusion_model.label_emb.0.0.weight" in original_state_dict(unet)


def test_the_exported_folder_holds_the_single_file_too(toy_teacher, tmp_path):
    from bksdm.teachers.export import save_student_pipeline

    student = build_student(toy_teacher.unet, "small").eval()
    folder = save_student_pipeline(student, "builtin:toy", tmp_path / "student")
    loaded = UNet2DConditionModel.from_single_file(
        str(folder / SINGLE_FILE), config=str(folder), subfolder="unet"
    )
    assert all(torch.equal(t, student.state_dict()[k]) for k, t in loaded.state_dict().items())
    save_student_pipeline(student, "builtin:toy", tmp_path / "without", single_file=False)
    assert not (tmp_path / "without" / SINGLE_FILE).exists()
