"""Offline transformer teachers: FLUX.1, SD3.5-medium and PixArt-Sigma pipelines at their real depths with
narrow widths, built from a seed (``builtin:flux-toy``, ``builtin:sd3-toy``, ``builtin:pixart-toy``).

As ``builtin:toy`` is SD-v1's topology at narrow widths, each of these keeps its family's topology whole: the
same diffusers transformer class with the real model's number of blocks per stack (FLUX.1: 19 double-stream +
38 single-stream; SD3.5-medium: 24 joint blocks, the first 13 with dual attention; PixArt-Sigma: 28), its
text towers (CLIP and T5 for FLUX; two CLIP towers with projections and T5 for SD3; T5 for PixArt), its VAE's
latent channels, scale and shift, and its scheduler's config. The published depth specs (Flux-Mini's blocks,
HierarchicalPrune's removals) therefore apply to them as written, and a student of one trains in seconds
on a CPU. Each is saved once in diffusers layout and loaded like any other teacher, with ``from_pretrained``
of the family's own pipeline class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers import AutoencoderKL

from bksdm.teachers.builtin import TOY_VAE_CONFIG, build_tokenizer, text_encoder_config

T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as T5's own vocabulary has them
T5_TOY_WIDTHS = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 2}
TOY_TEXT_LENGTH = 32  # the toys' T5 tokenizers stop here (flux-random's at FLUX's 512)


def build_t5_tokenizer(max_length: int):
    """A T5 tokenizer (a SentencePiece-style unigram model) over single characters with byte fallback: every
    printable ASCII character a token, with and without the word-start marker, any other byte a byte
    token; T5's special tokens at T5's ids (pad 0, end 1, unknown 2), the end token appended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5Tokenizer

    chars = [chr(c) for c in range(32, 127)]
    vocab = [(t, 0.0) for t in T5_SPECIALS] + [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    vocab += [("▁", -1.0)] + [(c, -2.0) for c in chars] + [(f"▁{c}", -1.5) for c in chars]
    model = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=True))
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    model.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5Tokenizer(
        tokenizer_object=model, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
        model_max_length=max_length,
    )  # fmt: skip


def t5_encoder(tokenizer, widths: dict = T5_TOY_WIDTHS):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), **widths, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
    )  # fmt: skip
    return T5EncoderModel(config)


# FLUX.1-dev at narrow widths: 19 double + 38 single blocks, 2 heads x 8 (rope axes 2 + 2 + 4), its 16-channel
# VAE with FLUX's scale and shift, CLIP (pooled 16 wide) and T5 (32 wide) text towers, guidance embedding
FLUX_TOY_TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_TOY_WIDTHS["d_model"],
    "pooled_projection_dim": 16,
    "guidance_embeds": True,
    "axes_dims_rope": (2, 2, 4),
}
FLUX_VAE = {"latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159}
FLUX_SCHEDULER_CONFIG = {  # FLUX.1-dev's scheduler_config.json
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
# SD3.5-medium at narrow widths: 24 joint blocks, dual attention in the first 13, RMS qk-norm, two CLIP towers
# (16 + 32 wide, pooled side by side: 48) and T5 (64 wide: the CLIP states are zero-padded to it)
SD3_TOY_TRANSFORMER_CONFIG = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 64,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 48,
    "pos_embed_max_size": 16,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
SD3_VAE = {"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609}
SD3_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}  # SD3.5-medium's
SD3_TEXT_WIDTHS = (
    {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
    {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
)
SD3_T5_WIDTHS = {**T5_TOY_WIDTHS, "d_model": 64, "d_ff": 128, "d_kv": 16}
# PixArt-Sigma at narrow widths: 28 layers, 2 heads x 8, learned variance (8 output channels), SDXL's VAE scale;
# sample size 32 (256 px) is the smallest PixArtSigmaPipeline's resolution binning (on by default) knows
PIXART_TOY_TRANSFORMER_CONFIG = {
    "sample_size": 32,
    "num_layers": 28,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "in_channels": 4,
    "out_channels": 8,
    "cross_attention_dim": 16,
    "caption_channels": T5_TOY_WIDTHS["d_model"],
    "norm_type": "ada_norm_single",
    "use_additional_conditions": False,
    "interpolation_scale": 1,
}
PIXART_SCHEDULER_CONFIG = {  # PixArt-Sigma's (DPM-Solver++ over the linear DDPM schedule it trained on)
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "solver_order": 2,
    "algorithm_type": "dpmsolver++",
}
# The real models at full width with random weights, for timing the real step on a GPU (their outputs mean
# nothing), stored in bf16: ``builtin:flux-random`` (FLUX.1-dev, 11.9B + T5-XXL's 4.7B parameters, 33 GB on
# disk), ``builtin:sd35-random`` (SD3.5-medium, 2.2B + CLIP-L, CLIP-G and T5-XXL) and ``builtin:pixart-random``
# (PixArt-Sigma-XL-2-1024, 0.6B + T5-XXL). diffusers' FLUX defaults are FLUX.1's; the other two transformers are
# the configs conf/teacher/sd35_medium.yaml and pixart_sigma.yaml embed (checked equal in the tests); the VAEs
# have SD's widths with each family's latent channels, scale and shift; the text towers read the toy vocabulary.
FLUX_RANDOM_TRANSFORMER_CONFIG = {"guidance_embeds": True}
SD35_MEDIUM_TRANSFORMER_CONFIG = {
    **SD3_TOY_TRANSFORMER_CONFIG, "sample_size": 128, "attention_head_dim": 64, "num_attention_heads": 24,
    "joint_attention_dim": 4096, "caption_projection_dim": 1536, "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
}  # fmt: skip
PIXART_SIGMA_TRANSFORMER_CONFIG = {
    **PIXART_TOY_TRANSFORMER_CONFIG, "sample_size": 128, "attention_head_dim": 72, "num_attention_heads": 16,
    "cross_attention_dim": 1152, "caption_channels": 4096, "interpolation_scale": 2,
}  # fmt: skip
FULL_WIDTH_VAE_CONFIG = {
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 1024,
}  # fmt: skip
T5_XXL_WIDTHS = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24}
CLIP_L_WIDTHS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
}  # fmt: skip
CLIP_G_WIDTHS = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "hidden_act": "gelu",
}  # fmt: skip
FULL_WIDTH_SHAPES = ("flux-random", "sd35-random", "pixart-random")
TRANSFORMER_SHAPES = ("flux-toy", "sd3-toy", "pixart-toy", *FULL_WIDTH_SHAPES)
# built in bf16: 12B parameters in fp32 would need 48 GB more; the toys: float32
STORED_DTYPES = dict.fromkeys(FULL_WIDTH_SHAPES, torch.bfloat16)


def _vae(latent: dict | None = None, widths: dict | None = None) -> AutoencoderKL:
    config = {**TOY_VAE_CONFIG, "sample_size": 128, **(widths or {})}
    if latent is not None:  # FLUX's and SD3's VAEs have no quantisation convolutions
        config.update(latent, use_quant_conv=False, use_post_quant_conv=False)
    else:
        config.update(scaling_factor=0.13025)
    return AutoencoderKL(**config)


def build_transformer_pipeline(seed: int = 0, shape: str = "flux-toy"):
    """The pipeline of a transformer ``shape`` (FluxPipeline, StableDiffusion3Pipeline or
    PixArtSigmaPipeline) in memory, with random weights from ``seed``."""
    if shape not in TRANSFORMER_SHAPES:
        raise ValueError(
            f"unknown builtin transformer shape {shape!r}: accepted are {list(TRANSFORMER_SHAPES)}"
        )
    full = shape in FULL_WIDTH_SHAPES
    build = {"flux": _flux, "sd3": _sd3, "sd35": _sd3, "pixart": _pixart}[shape.split("-")[0]]
    with torch.random.fork_rng(devices=[]), _default_dtype(STORED_DTYPES.get(shape, torch.float32)):
        torch.manual_seed(seed)
        # T5's own length at full width: the pipelines read 512 (FLUX), 256 (SD3) or 300 (PixArt) of it
        return build(full, build_t5_tokenizer(512 if full else TOY_TEXT_LENGTH))


def _flux(full: bool, t5_tokenizer):
    import diffusers
    from transformers import CLIPTextModel

    # each build draws its weights in the order it always has, so a cached build equals a fresh one
    def clip_tower():
        return CLIPTextModel(
            text_encoder_config(build_tokenizer(), CLIP_L_WIDTHS if full else SD3_TEXT_WIDTHS[0])
        )

    clip = None if full else clip_tower()
    vae = _vae(FLUX_VAE, FULL_WIDTH_VAE_CONFIG if full else None)
    clip = clip or clip_tower()
    transformer = FLUX_RANDOM_TRANSFORMER_CONFIG if full else FLUX_TOY_TRANSFORMER_CONFIG
    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER_CONFIG),
        vae=vae.eval(), text_encoder=clip.eval(),
        tokenizer=build_tokenizer(), tokenizer_2=t5_tokenizer,
        text_encoder_2=t5_encoder(t5_tokenizer, T5_XXL_WIDTHS if full else T5_TOY_WIDTHS).eval(), transformer=diffusers.FluxTransformer2DModel(**transformer).eval(),
    )  # fmt: skip


def _sd3(full: bool, t5_tokenizer):
    import diffusers
    from transformers import CLIPTextModelWithProjection

    widths = (CLIP_L_WIDTHS, CLIP_G_WIDTHS) if full else SD3_TEXT_WIDTHS
    towers = [CLIPTextModelWithProjection(text_encoder_config(build_tokenizer(), w)).eval() for w in widths]
    transformer = SD35_MEDIUM_TRANSFORMER_CONFIG if full else SD3_TOY_TRANSFORMER_CONFIG
    return diffusers.StableDiffusion3Pipeline(
        transformer=diffusers.SD3Transformer2DModel(**transformer).eval(),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG),
        vae=_vae(SD3_VAE, FULL_WIDTH_VAE_CONFIG if full else None).eval(), text_encoder=towers[0],
        tokenizer=build_tokenizer(), text_encoder_2=towers[1], tokenizer_2=build_tokenizer(),
        text_encoder_3=t5_encoder(t5_tokenizer, T5_XXL_WIDTHS if full else SD3_T5_WIDTHS).eval(),
        tokenizer_3=t5_tokenizer,
    )  # fmt: skip


def _pixart(full: bool, t5_tokenizer):
    import diffusers

    transformer = PIXART_SIGMA_TRANSFORMER_CONFIG if full else PIXART_TOY_TRANSFORMER_CONFIG
    with torch.device("cpu"):  # DPM-Solver moves its tables to the CPU, which a meta-device build cannot
        scheduler = diffusers.DPMSolverMultistepScheduler.from_config(PIXART_SCHEDULER_CONFIG)
    return diffusers.PixArtSigmaPipeline(
        tokenizer=t5_tokenizer,
        text_encoder=t5_encoder(t5_tokenizer, T5_XXL_WIDTHS if full else T5_TOY_WIDTHS).eval(),
        vae=_vae(widths=FULL_WIDTH_VAE_CONFIG if full else None).eval(),
        transformer=diffusers.PixArtTransformer2DModel(**transformer).eval(), scheduler=scheduler,
    )  # fmt: skip


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
