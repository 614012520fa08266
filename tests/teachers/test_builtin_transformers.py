"""The offline transformer teachers (bksdm.teachers.builtin_transformers): their T5 tokenizer, and the full-width
builds' parts fitting together (counted on the meta device, never built here: 11-33 GB)."""

import pytest
import torch
import yaml
from helpers.paths import CONF

from bksdm.teachers.builtin_transformers import build_t5_tokenizer, build_transformer_pipeline


def test_the_offline_t5_tokenizer_reads_any_text_with_t5s_special_ids():
    tokenizer = build_t5_tokenizer(16)
    ids = tokenizer("a red cube é", padding="max_length", max_length=16, truncation=True).input_ids
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.unk_token_id not in ids and ids[-1] == 0 and 1 in ids  # end token, then padding
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red cube é"  # é through its byte tokens


def test_the_full_width_flux_build_has_flux_1s_transformer_and_towers_that_fit_it():
    with torch.device("meta"):
        pipeline = build_transformer_pipeline(shape="flux-random")
    transformer = pipeline.transformer
    assert sum(p.numel() for p in transformer.parameters()) == 11_901_408_320
    assert transformer.dtype == torch.bfloat16 and torch.get_default_dtype() == torch.float32  # restored
    assert pipeline.text_encoder_2.config.d_model == transformer.config.joint_attention_dim == 4096
    assert pipeline.text_encoder.config.hidden_size == transformer.config.pooled_projection_dim == 768
    assert pipeline.vae.config.latent_channels * 4 == transformer.config.in_channels
    assert pipeline.tokenizer_2.model_max_length == 512


@pytest.mark.parametrize(
    ("shape", "preset", "real", "params"),
    [("sd35-random", "sd35_random", "sd35_medium", 2_243_171_520),
     ("pixart-random", "pixart_random", "pixart_sigma", 610_856_096)],
)  # fmt: skip
def test_the_full_width_sd3_and_pixart_builds_are_their_presets_transformers(shape, preset, real, params):
    with torch.device("meta"):
        pipeline = build_transformer_pipeline(shape=shape)
    transformer = pipeline.transformer
    assert sum(p.numel() for p in transformer.parameters()) == params and transformer.dtype == torch.bfloat16
    embedded = yaml.safe_load((CONF / "teacher" / f"{preset}.yaml").read_text())["transformer_config"]
    assert embedded == yaml.safe_load((CONF / "teacher" / f"{real}.yaml").read_text())["transformer_config"]
    config = {key: transformer.config[key] for key in embedded if key != "_class_name"}
    as_lists = {key: list(value) if isinstance(value, tuple) else value for key, value in config.items()}
    assert as_lists == {key: value for key, value in embedded.items() if key != "_class_name"}
    assert pipeline.vae.config.latent_channels == transformer.config.in_channels
    t5 = pipeline.text_encoder_3 if shape == "sd35-random" else pipeline.text_encoder
    assert t5.config.d_model == 4096  # T5-XXL: SD3's joint width, PixArt's caption width
    if shape == "sd35-random":  # both CLIP towers' projections side by side are the pooled conditioning
        pooled = pipeline.text_encoder.config.projection_dim + pipeline.text_encoder_2.config.projection_dim
        assert pooled == transformer.config.pooled_projection_dim == 2048
