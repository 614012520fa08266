"""Loading SD parts from a local folder or a hub id, degenerate loads, the offline toy teacher, and the
shapes of builtin:sd14-random (the benchmarks' full-width stand-in)."""

import shutil
import time

import pytest
import torch
from diffusers import DDPMScheduler
from helpers.paths import CONF
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from bksdm.arch import build_student, check_teacher_topology
from bksdm.arch.student import empty_unet
from bksdm.teachers.builtin import (
    SD14_UNET_CONFIG,
    TOY_UNET_CONFIG,
    build_random_pipeline,
    random_pipeline_path,
)
from bksdm.teachers.loading import ComponentError, load_components, resolve_source, teacher_denoiser_config


def test_tiny_teacher_is_deterministic_per_seed():
    first, again, other = (build_random_pipeline(seed).unet.state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["conv_in.weight"], other["conv_in.weight"])


def test_tiny_teacher_is_saved_once_and_then_reused(tmp_path):
    path = random_pipeline_path(seed=3, root=tmp_path)
    assert (path / "model_index.json").is_file()
    for part in ("unet", "vae", "text_encoder"):
        assert list((path / part).glob("*.safetensors")), part
    assert {"vocab.json", "merges.txt"} <= {f.name for f in (path / "tokenizer").iterdir()}
    stamp = (path / "unet" / "config.json").stat().st_mtime_ns
    time.sleep(0.01)
    assert random_pipeline_path(seed=3, root=tmp_path) == path
    assert (path / "unet" / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staging folder left behind


def test_tiny_teacher_has_sd_v1_topology_and_sd_settings(toy_teacher):
    unet, scheduler = toy_teacher.unet, toy_teacher.noise_scheduler
    check_teacher_topology(unet.config)
    assert unet.config.layers_per_block == 2 and unet.mid_block is not None
    assert isinstance(scheduler, DDPMScheduler)
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
    assert scheduler.config.prediction_type == "epsilon"
    assert toy_teacher.vae.config.scaling_factor == 0.18215
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert toy_teacher.vae.encode(image).latent_dist.sample().shape == (1, 4, 8, 8)  # 8x downsampling


def test_byte_level_tokenizer_reads_any_text(toy_teacher):
    tokenizer = toy_teacher.tokenizer
    ids = tokenizer("Ünïcode & emoji 🐦, a bird", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and tokenizer.unk_token_id not in ids[1 : ids.index(tokenizer.eos_token_id)]
    assert tokenizer.decode(tokenizer("a red cube").input_ids, skip_special_tokens=True) == "a red cube"


def test_a_kd_step_on_the_tiny_teacher_runs_on_cpu(toy_teacher):
    """Teacher forward, student forward and backward; the figure itself is measured by benchmarks."""
    student = build_student(toy_teacher.unet, "small")
    ids = toy_teacher.tokenizer(
        ["a red square"] * 2, padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        context = toy_teacher.text_encoder(ids)[0]
        latents = torch.randn(2, 4, 16, 16)
        target = toy_teacher.unet(latents, torch.tensor([10, 500]), context).sample
    loss = torch.nn.functional.mse_loss(student(latents, torch.tensor([10, 500]), context).sample, target)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_builtin_and_local_folder_take_the_same_path(toy_path):
    assert resolve_source("builtin:toy") == str(toy_path)
    assert (
        teacher_denoiser_config("builtin:toy")["block_out_channels"] == TOY_UNET_CONFIG["block_out_channels"]
    )
    half = load_components("builtin:toy", parts=["unet", "text_encoder"], dtype=torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16 and half.text_encoder.dtype == torch.bfloat16
    assert half.vae is None and half.tokenizer is None


def test_bad_sources_and_parts_are_named(tmp_path):
    with pytest.raises(ComponentError, match=r"unknown component\(s\) \['safety_checker'\]"):
        load_components("builtin:toy", parts=["safety_checker"])
    with pytest.raises(
        ComponentError,
        match=r"unknown builtin teacher 'builtin:huge'.*\['builtin:toy', 'builtin:sd14-random', 'builtin:sdxl-toy', "
        r"'builtin:sdxl-random', 'builtin:flux-toy', 'builtin:sd3-toy', 'builtin:pixart-toy', 'builtin:flux-random', "
        r"'builtin:sd35-random', 'builtin:pixart-random', 'builtin:miniworld', 'builtin:miniworld-scenes'\]",
    ):
        load_components("builtin:huge")
    with pytest.raises(ComponentError, match=r"(?s)could not load the unet of '.*nowhere'.*Accepted sources"):
        load_components(str(tmp_path / "nowhere"), parts=["unet"])


def test_hub_id_offline_and_not_cached_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(
        ComponentError, match=r"(?s)could not load the unet of 'CompVis/stable-diffusion-v1-4'.*offline"
    ):
        load_components("CompVis/stable-diffusion-v1-4", parts=["unet"])


@pytest.fixture
def tiny_copy(tmp_path, toy_path):
    return shutil.copytree(toy_path, tmp_path / "teacher")


def test_degenerate_tokenizer_is_detected(tiny_copy):
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (tiny_copy / "tokenizer" / name).unlink()
    with pytest.raises(ComponentError, match=r"tokenizer of .* is degenerate"):
        load_components(str(tiny_copy), parts=["tokenizer"])


def test_tokenizer_without_its_config_is_detected(tiny_copy):
    (tiny_copy / "tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(ComponentError, match="model_max_length"):
        load_components(str(tiny_copy), parts=["tokenizer"])


@pytest.mark.parametrize("part", ["text_encoder", "unet", "vae"])
def test_weights_missing_from_a_checkpoint_are_not_silently_random(tiny_copy, part):
    file = next((tiny_copy / part).glob("*.safetensors"))
    state = load_file(file)
    dropped = sorted(state)[-1]
    del state[dropped]
    save_file(state, file)
    with pytest.raises(ComponentError, match=f"{part} of .*random initialisation.*{dropped}"):
        load_components(str(tiny_copy), parts=[part])


def test_teacher_presets_hold_only_settings_that_are_read():
    # a key no code reads looks like an override and does nothing (prediction_type did: the target
    # comes from the teacher's scheduler config)
    read = {
        "name",
        "source",
        "revision",
        "vae_source",
        "resolution",
        "unet_config",
        "transformer_config",
        "sampling",
        "world",  # a mini-world teacher's world and folder: data=miniworld and its evaluation read them
        "world_dir",
    }
    for preset in sorted((CONF / "teacher").glob("*.yaml")):
        assert set(OmegaConf.load(preset)) <= read, preset.name


def test_sd14_random_teacher_has_sd14_shapes():
    sd14 = OmegaConf.to_container(OmegaConf.load(CONF / "teacher" / "sd14.yaml").unet_config)
    unet = empty_unet(SD14_UNET_CONFIG)
    assert {k: unet.config[k] for k in sd14} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in sd14.items()
    }
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964  # the paper's teacher
