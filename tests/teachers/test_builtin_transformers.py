"""The offline transformer teachers (bksdm.teachers.builtin_transformers): their T5 tokenizer, and the full-width
FLUX build's parts fitting together (counted on the meta device, never built here: 33 GB)."""

import torch

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
