"""The offline SDXL-shaped teacher (builtin:sdxl-toy): a StableDiffusionXLPipeline folder from which every
shipped SDXL student is built and exported as a folder plain diffusers loads and draws with, and a single
file diffusers reads back."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from helpers.paths import arch_removal

from bksdm.arch import build_student
from bksdm.teachers.export import SINGLE_FILE, save_student_pipeline
from bksdm.teachers.loading import resolve_source

SDXL_ARCHS = ["koala_700m", "koala_1b", "ssd_1b", "vega", "sdxl_base", "sdxl_small"]


@pytest.fixture(scope="module")
def teacher():
    return StableDiffusionXLPipeline.from_pretrained(resolve_source("builtin:sdxl-toy"))


def draw(pipeline) -> np.ndarray:
    return pipeline(
        "a small red square", num_inference_steps=1, guidance_scale=5.0, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip


def test_the_toy_has_sdxls_topology(teacher):
    config = teacher.unet.config
    assert config.addition_embed_type == "text_time" and list(config.transformer_layers_per_block) == [
        1,
        2,
        10,
    ]
    assert teacher.text_encoder_2.config.projection_dim + 6 * config.addition_time_embed_dim == (
        config.projection_class_embeddings_input_dim
    )
    assert config.cross_attention_dim == teacher.text_encoder.config.hidden_size + (
        teacher.text_encoder_2.config.hidden_size
    )
    assert draw(teacher).shape == (1, 128, 128, 3)


def test_every_sdxl_student_builds_from_the_toy_and_runs(teacher):
    added = {
        "text_embeds": torch.randn(1, 16),
        "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]]),
    }
    for arch in SDXL_ARCHS:
        student = build_student(teacher.unet, arch_removal(arch)).eval()
        with torch.no_grad():
            out = student(torch.randn(1, 4, 16, 16), 500, torch.randn(1, 77, 48), added_cond_kwargs=added)
        assert out.sample.shape == (1, 4, 16, 16), arch


# the export does not depend on the arch beyond the U-Net's config: no mid block, and a ResNet-only one
@pytest.mark.parametrize("arch", ["koala_700m", "ssd_1b"])
def test_an_sdxl_student_exports_a_folder_diffusers_draws_with(teacher, tmp_path, arch):
    student = build_student(teacher.unet, arch_removal(arch)).eval()
    folder = save_student_pipeline(student, "builtin:sdxl-toy", tmp_path / "student")
    loaded = StableDiffusionXLPipeline.from_pretrained(folder)
    in_memory = StableDiffusionXLPipeline(**{**teacher.components, "unet": student})
    np.testing.assert_allclose(draw(loaded), draw(in_memory), atol=1e-5)
    single = UNet2DConditionModel.from_single_file(
        str(folder / SINGLE_FILE), config=str(folder), subfolder="unet"
    )
    assert all(torch.equal(t, student.state_dict()[k]) for k, t in single.state_dict().items())


def test_sdxl_random_has_sdxl_base_shapes_at_full_width():
    from helpers.paths import CONF
    from omegaconf import OmegaConf

    from bksdm.teachers.builtin import random_sdxl_models

    with torch.device("meta"):  # shapes only: the 3.5B parameters are not allocated
        models = random_sdxl_models(shape="sdxl-random")
    sdxl = OmegaConf.to_container(OmegaConf.load(CONF / "teacher" / "sdxl.yaml").unet_config)
    config = models["unet"].config

    def plain(value):
        return list(value) if isinstance(value, tuple | list) else value

    assert {k: plain(config[k]) for k in sdxl} == sdxl

    def params(model):
        return sum(p.numel() for p in model.parameters())

    assert params(models["unet"]) == 2_567_463_684 and params(models["vae"]) == 83_653_863
    # the towers' widths are CLIP ViT-L's and OpenCLIP ViT-bigG's (over the byte-level vocabulary)
    first, second = models["text_encoder"].config, models["text_encoder_2"].config
    widths = (first.hidden_size, first.num_hidden_layers, second.hidden_size, second.num_hidden_layers)
    assert widths == (768, 12, 1280, 32) and second.projection_dim == 1280
    assert models["vae"].config.scaling_factor == 0.13025 and models["vae"].config.force_upcast
