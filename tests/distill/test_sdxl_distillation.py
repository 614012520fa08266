"""Distillation from an SDXL teacher (builtin:sdxl-toy): the step conditions both U-Nets as
StableDiffusionXLPipeline does, every SDXL student trains, and a trained one loads in plain diffusers."""

import functools

import pytest
import torch
import yaml
from helpers.paths import CONF
from helpers.train_config import FAST, config
from helpers.trainer import cpu_trainer

from bksdm import train as train_app
from bksdm.data.datamodule import SyntheticDataModule
from bksdm.distill.losses import DistillLoss
from bksdm.distill.module import DistillModule
from bksdm.distill.taps import check_tap_pairs, koala_tap_pairs
from bksdm.teachers.builtin import SDXL_TOY_UNET_CONFIG
from bksdm.teachers.loading import resolve_source

SDXL_ARCHS = ["koala_700m", "koala_1b", "ssd_1b", "vega", "sdxl_base", "sdxl_small"]


def arch(name: str) -> dict:
    return yaml.safe_load((CONF / "arch" / f"{name}.yaml").read_text())


def sdxl_module(name: str = "koala_700m", **kwargs) -> DistillModule:
    torch.manual_seed(0)
    return DistillModule(
        teacher_source="builtin:sdxl-toy", removal=arch(name)["removal"], taps=arch(name)["taps"],
        loss=DistillLoss(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), student_name=name,
        **{"frozen_dtype": "float32", **kwargs},
    )  # fmt: skip


@pytest.fixture(scope="module")
def pipeline():
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(resolve_source("builtin:sdxl-toy"))


def test_the_step_conditions_teacher_and_student_as_the_sdxl_pipeline_does(pipeline):
    module = sdxl_module()
    assert module.frozen.sdxl and module.frozen.text_encoder_2 is not None
    captions = ["a red circle on the left", "a blue square"]
    batch = {
        "pixel_values": torch.rand(2, 3, 64, 64) * 2 - 1,
        "caption": captions,
        "original_size": torch.tensor([[480, 640], [64, 64]]),
        "crop_top_left": torch.tensor([[0, 21], [0, 0]]),
    }
    latents, conditioning = module.step.encode(batch, torch.device("cpu"))
    context, _, pooled, _ = pipeline.encode_prompt(captions, do_classifier_free_guidance=False)
    assert torch.equal(conditioning.context, context)
    assert torch.equal(conditioning.added["text_embeds"], pooled)
    first_ids = pipeline._get_add_time_ids(
        (480, 640), (0, 21), (64, 64), dtype=torch.float32,
        text_encoder_projection_dim=pipeline.text_encoder_2.config.projection_dim,
    )  # fmt: skip
    assert torch.equal(conditioning.added["time_ids"][:1], first_ids)
    assert conditioning.added["time_ids"][1].tolist() == [64, 64, 0, 0, 64, 64]
    timesteps = torch.tensor([10, 500])
    prediction, features = module.step.teacher_forward(latents, timesteps, conditioning)
    added = {"text_embeds": pooled, "time_ids": conditioning.added["time_ids"]}
    with torch.no_grad():
        expected = pipeline.unet(latents, timesteps, context, added_cond_kwargs=added).sample
    torch.testing.assert_close(prediction, expected)
    assert set(features) == {pair.teacher for pair in module.tap_pairs}


def test_a_batch_without_the_sizes_is_refused_naming_what_is_missing():
    module = sdxl_module()
    batch = {"pixel_values": torch.zeros(1, 3, 64, 64), "caption": ["x"]}
    with pytest.raises(ValueError, match=r"has no \['original_size', 'crop_top_left'\].*bksdm.prepare"):
        module.step.encode(batch, torch.device("cpu"))
    latent_batch = {
        "latent_mean": torch.zeros(1, 4, 8, 8), "latent_std": torch.ones(1, 4, 8, 8), "caption": ["x"],
        "text_embeds": torch.zeros(1, 77, 48), "original_size": torch.tensor([[64, 64]]),
        "crop_top_left": torch.zeros(1, 2),
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"has no \['pooled_text_embeds'\]"):
        module.step.encode(latent_batch, torch.device("cpu"))


def test_sdxls_vae_stays_float32_where_the_frozen_parts_are_float16():
    # SDXL's VAE overflows in fp16: kept in fp32 as StableDiffusionXLPipeline's force_upcast does
    module = sdxl_module(frozen_dtype="float16")
    assert module.frozen.unet.dtype == module.frozen.text_encoder_2.dtype == torch.float16
    assert module.frozen.vae.dtype == module.frozen.vae_dtype == torch.float32


def test_koala_taps_pair_each_blocks_last_self_attention():
    spec = arch("koala_1b")["removal"]
    pairs = koala_tap_pairs(SDXL_TOY_UNET_CONFIG, spec)
    assert [(p.teacher, p.student) for p in pairs] == [
        ("down_blocks.1.attentions.0.transformer_blocks.1.attn1", "down_blocks.1.attentions.0.transformer_blocks.1.attn1"),
        ("down_blocks.2.attentions.0.transformer_blocks.9.attn1", "down_blocks.2.attentions.0.transformer_blocks.5.attn1"),
        ("mid_block.attentions.0.transformer_blocks.9.attn1", "mid_block.attentions.0.transformer_blocks.5.attn1"),
        ("up_blocks.0.attentions.2.transformer_blocks.9.attn1", "up_blocks.0.attentions.1.transformer_blocks.5.attn1"),
        ("up_blocks.1.attentions.2.transformer_blocks.1.attn1", "up_blocks.1.attentions.1.transformer_blocks.1.attn1"),
    ]  # fmt: skip
    from bksdm.arch import student_config

    shapes = check_tap_pairs(SDXL_TOY_UNET_CONFIG, student_config(SDXL_TOY_UNET_CONFIG, spec), pairs, 16)
    assert shapes[pairs[0].name] == (64, 64)  # (h * w, C): 8 x 8 tokens of the toy's 64-wide stage
    assert arch("koala_700m")["taps"] == arch("koala_1b")["taps"] == "koala"


@pytest.mark.parametrize("name", SDXL_ARCHS)
def test_every_sdxl_student_takes_training_steps_from_the_toy(name, tmp_path):
    torch.set_num_threads(1)
    module = sdxl_module(name)
    before = {k: v.clone() for k, v in module.student.state_dict().items()}
    trainer = cpu_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=SyntheticDataModule(num_samples=8, resolution=64, batch_size=1))
    assert trainer.global_step == 2
    terms = module.step_terms
    assert all(torch.isfinite(value) for value in terms.values()) and terms["loss_kd_feat"] > 0
    changed = [k for k, v in module.student.state_dict().items() if not torch.equal(v, before[k])]
    assert any("add_embedding" in k for k in changed)  # the added conditioning is learnt too


def test_an_sdxl_student_trains_through_the_app_and_loads_in_plain_diffusers(tmp_path):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    cfg = config("teacher=sdxl_toy", "arch=koala_700m", *FAST, "data.resolution=64", output_dir=tmp_path)
    module = train_app.train(cfg)
    assert module.student_name == "koala_700m" and len(module.tap_pairs) == 4  # taps: koala
    student = tmp_path / "student"
    loaded = StableDiffusionXLPipeline.from_pretrained(student)
    image = loaded(
        "a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip
    assert image.shape == (64, 64, 3)
    single = UNet2DConditionModel.from_single_file(
        str(student / "student_unet.safetensors"), config=str(student), subfolder="unet"
    )
    assert all(torch.equal(t, loaded.unet.state_dict()[k]) for k, t in single.state_dict().items())
    assert (tmp_path / "samples").is_dir() and any((tmp_path / "samples").glob("*.png"))


def test_periodic_evaluation_draws_an_sdxl_student_with_the_frozen_parts(tmp_path):
    from helpers.eval_data import coco_json, write_real

    from bksdm.callbacks.periodic_eval import PeriodicEval
    from bksdm.eval.extractors import StandInCLIP, StandInInception

    write_real(tmp_path / "real")
    callback = PeriodicEval(
        prompts=str(coco_json(tmp_path / "captions.json")), real=str(tmp_path / "real"), features=StandInInception(),
        clip=StandInCLIP(), dirpath=tmp_path / "eval", num_images=2, every_n_steps=1, num_inference_steps=2,
        batch_size=2, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    module = sdxl_module(
        "vega", frozen_dtype="bfloat16"
    )  # the CPU default: a bf16 VAE and towers, fp32 student
    trainer = cpu_trainer(tmp_path, max_steps=1, callbacks=[callback])
    trainer.fit(module, datamodule=SyntheticDataModule(num_samples=4, resolution=64, batch_size=1))
    assert [r["step"] for r in callback.history] == [1] and callback.history[0]["fid"] >= 0
    assert len(list((tmp_path / "eval" / "step_0000001").glob("*.png"))) == 2


def test_an_fp16_fixed_vae_from_its_own_folder_replaces_the_teachers_and_stays_fp16(tmp_path):
    from diffusers import AutoencoderKL

    from bksdm.teachers.builtin import SDXL_TOY_VAE_CONFIG
    from bksdm.teachers.loading import ComponentError

    torch.manual_seed(1)
    fixed = AutoencoderKL(**{**SDXL_TOY_VAE_CONFIG, "force_upcast": False})  # what the fp16 fix says
    fixed.save_pretrained(tmp_path / "sdxl-vae-fp16-fix")  # a bare VAE: config.json at the top
    folder = str(tmp_path / "sdxl-vae-fp16-fix")
    cfg = config("teacher=sdxl_toy", f"teacher.vae_source={folder}", "data=latents", output_dir=tmp_path)
    assert cfg.distill.vae_source == cfg.data.vae_source == folder  # training and its latents agree
    module = sdxl_module(frozen_dtype="float16", vae_source=cfg.distill.vae_source)
    assert module.frozen.vae.dtype == module.frozen.vae_dtype == torch.float16
    weights = fixed.state_dict()
    assert all(torch.equal(t, weights[k].half()) for k, t in module.frozen.vae.state_dict().items())
    with pytest.raises(ComponentError, match=r"could not load the vae of '/nowhere'"):
        sdxl_module(vae_source="/nowhere")
