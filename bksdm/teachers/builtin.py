"""The offline toy teacher: a complete SD-v1-shaped pipeline with narrow widths, built from a seed.

Real Stable Diffusion weights cannot be downloaded everywhere (CI, air-gapped clusters), so tests and
the demo use this pipeline. It has SD-v1's topology (four U-Net stages, two (ResNet, attention) pairs
per down block, a cross-attention mid block, a VAE with 8x downsampling, a CLIP text encoder and SD's
scheduler settings) at widths that make a distillation step on CPU take milliseconds. It is saved once
in diffusers layout to a cache folder and then loaded like any other teacher, with ``from_pretrained``.
The same builder makes ``builtin:sd14-random``: SD-v1.4's shapes at full width, random weights, so that
``python -m bksdm.bench`` can time the real model's step without a download, and ``builtin:sdxl-toy``:
SDXL's topology (two text encoders, added size and crop conditioning, three U-Net stages with SDXL's
transformer depths) at narrow widths, a StableDiffusionXLPipeline folder; ``builtin:sdxl-random`` is that
at SDXL-base-1.0's full widths, random weights, for benchmarks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from bksdm.training.atomic import atomic_directory

# Bump when anything below changes what is built: cached folders of older versions are then ignored.
BUILTIN_VERSION = 2  # 2: the scheduler config has SD-v1.4's clip_sample
TEXT_TOKENS = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

TOY_UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    # the last two widths are equal, as in SD (1280, 1280), so BK-SDM-Tiny's weight map fits
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
}
TOY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "latent_channels": 4,
    "sample_size": 128,
    "scaling_factor": 0.18215,
}
TOY_TEXT_WIDTHS = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}

# Stable Diffusion v1.4 at full width with random weights (``builtin:sd14-random``): what a benchmark
# needs to time the real model's step offline. diffusers' U-Net defaults are SD-v1's, less the context width.
SD14_UNET_CONFIG = {"sample_size": 64, "cross_attention_dim": 768}
SD14_VAE_CONFIG = {
    **TOY_VAE_CONFIG,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}
# CLIP ViT-L/14's text tower (the vocabulary is the byte-level tokenizer's)
SD14_TEXT_WIDTHS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
}
SHAPES = {
    "toy": (TOY_UNET_CONFIG, TOY_VAE_CONFIG, TOY_TEXT_WIDTHS, torch.float32),
    "sd14-random": (SD14_UNET_CONFIG, SD14_VAE_CONFIG, SD14_TEXT_WIDTHS, torch.float16),  # 2 GB on disk
}

# SDXL's topology at narrow widths (``builtin:sdxl-toy``): three stages, two (ResNet, attention) pairs per
# down block, SDXL's transformer depths (1, 2, 10: every published SDXL student's depths fit inside),
# a cross-attention mid block, two text encoders whose penultimate hidden states are concatenated (16 + 32
# wide) and the second's pooled projection (16) with the six size and crop ids as added conditioning.
SDXL_TOY_UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [2, 4, 4],
    "norm_num_groups": 8,
    "cross_attention_dim": 48,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 16 + 6 * 8,
}
SDXL_TOY_VAE_CONFIG = {**TOY_VAE_CONFIG, "scaling_factor": 0.13025}  # SDXL's VAE scale
SDXL_TOY_TEXT_WIDTHS = (
    {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
    {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
)
SDXL_POOLED_WIDTH = 16

# SDXL-base-1.0 at full width with random weights (``builtin:sdxl-random``, 2.57B-parameter U-Net; 7 GB in
# fp16 on disk): its U-Net config (the embedded one of conf/teacher/sdxl.yaml, checked in the tests),
# SD's VAE widths at SDXL's scale, CLIP ViT-L's text tower and OpenCLIP ViT-bigG's with its 1280-wide
# pooled projection (over the byte-level vocabulary, as sd14-random's).
SDXL_UNET_CONFIG = {
    "sample_size": 128,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SDXL_VAE_CONFIG = {**SD14_VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_TEXT_WIDTHS = (
    SD14_TEXT_WIDTHS,
    {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
     "hidden_act": "gelu"},
)  # fmt: skip
SDXL_SHAPES = {  # U-Net, VAE, text towers, pooled width, stored dtype
    "sdxl-toy": (
        SDXL_TOY_UNET_CONFIG,
        SDXL_TOY_VAE_CONFIG,
        SDXL_TOY_TEXT_WIDTHS,
        SDXL_POOLED_WIDTH,
        torch.float32,
    ),
    "sdxl-random": (SDXL_UNET_CONFIG, SDXL_VAE_CONFIG, SDXL_TEXT_WIDTHS, 1280, torch.float16),
}
# SDXL-base-1.0's scheduler_config.json (Euler, "leading" spacing), its training schedule SD's
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
}

# SD-v1.4's scheduler_config.json. clip_sample is not PNDM's, yet SD keeps it there for the samplers built
# from this config (DDIM's default, True, turns SD's images to noise): build with PNDMScheduler.from_config,
# which stores it, not PNDMScheduler(**...), which refuses it.
SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every byte a token, 514 tokens in all.

    It is CLIP's own vocabulary construction stopped before the 48,894 learned merges, so any text
    tokenizes (one token per byte) and nothing maps to the unknown token.
    """
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + [BOS, EOS]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])
    tokenizer.model_max_length = TEXT_TOKENS
    return tokenizer


def write_vocab_files(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """Write CLIP's vocab.json and merges.txt (header only: this vocabulary has no merges).

    transformers 5 saves only tokenizer.json; the slow CLIPTokenizer of transformers 4 (which
    model_index.json names, and which other loaders use) needs these two files.
    """
    (folder / "vocab.json").write_text(json.dumps(tokenizer.get_vocab(), ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def text_encoder_config(
    tokenizer: CLIPTokenizer, widths: dict, max_positions: int = TEXT_TOKENS
) -> CLIPTextConfig:
    """A CLIP text encoder's config over ``tokenizer``'s vocabulary and special tokens; ``widths``:
    hidden_size, intermediate_size, num_hidden_layers, num_attention_heads."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        **widths,
        max_position_embeddings=max_positions,
        projection_dim=widths["hidden_size"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_random_pipeline(seed: int = 0, shape: str = "toy"):
    """Build the toy pipeline (a StableDiffusionPipeline) in memory; a seed gives the same weights anywhere.
    ``shape="sd14-random"``: the same at SD-v1.4's full widths (for benchmarks; its outputs mean nothing)."""
    # imported here: the pipeline module pulls in transformers' image processors, which the arch report
    # and training never need
    from diffusers import StableDiffusionPipeline

    from bksdm.teachers.builtin_transformers import TRANSFORMER_SHAPES, build_transformer_pipeline

    if shape in SDXL_SHAPES:
        return build_random_sdxl_pipeline(seed, shape)
    if shape in TRANSFORMER_SHAPES:
        return build_transformer_pipeline(seed, shape)
    if shape not in SHAPES:
        raise ValueError(
            f"unknown builtin pipeline shape {shape!r}: accepted are {[*SHAPES, *SDXL_SHAPES, *TRANSFORMER_SHAPES]}"
        )
    unet_config, vae_config, text_widths, _ = SHAPES[shape]
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(text_encoder_config(tokenizer, text_widths))
        vae = AutoencoderKL(**vae_config)
        unet = UNet2DConditionModel(**unet_config)
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def random_sdxl_models(seed: int = 0, shape: str = "sdxl-toy") -> dict[str, torch.nn.Module]:
    """The U-Net, VAE and both text towers of an SDXL ``shape`` with random weights from ``seed``."""
    from transformers import CLIPTextModelWithProjection

    unet_config, vae_config, (first, second), pooled_width, _ = SDXL_SHAPES[shape]
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(text_encoder_config(tokenizer, first))
        second_config = text_encoder_config(tokenizer, second)
        second_config.projection_dim = pooled_width
        text_encoder_2 = CLIPTextModelWithProjection(second_config)
        vae = AutoencoderKL(**vae_config)
        unet = UNet2DConditionModel(**unet_config)
    models = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    return {name: model.eval() for name, model in models.items()}


def build_random_sdxl_pipeline(seed: int = 0, shape: str = "sdxl-toy"):
    """The SDXL-shaped toy pipeline (a StableDiffusionXLPipeline) in memory, from ``seed``;
    ``shape="sdxl-random"``: the same at SDXL's full widths."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        **random_sdxl_models(seed, shape),
        tokenizer=build_tokenizer(),
        tokenizer_2=build_tokenizer(),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def cache_dir() -> Path:
    """Where built assets are kept: ``$BKSDM_CACHE``, else ``$XDG_CACHE_HOME/bksdm``, else ``~/.cache/bksdm``."""
    if os.environ.get("BKSDM_CACHE"):
        return Path(os.environ["BKSDM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bksdm"


def random_pipeline_path(seed: int = 0, root: str | os.PathLike | None = None, shape: str = "toy") -> Path:
    """The folder of the toy pipeline (or another ``shape``) for ``seed``, built and saved (diffusers
    layout) on first use.

    The folder is written under a temporary name and renamed when complete, so an interrupted build
    never leaves a half-written pipeline that later runs would load.
    """
    root = Path(root) if root is not None else cache_dir()
    name = "toy-sd" if shape == "toy" else shape
    target = root / f"{name}-v{BUILTIN_VERSION}-seed{seed}"
    if not (target / "model_index.json").is_file():
        with atomic_directory(target, overwrite=False) as staging:
            pipeline = build_random_pipeline(seed, shape)
            from bksdm.teachers.builtin_transformers import STORED_DTYPES

            shapes = {**SHAPES, **SDXL_SHAPES}  # each entry's last item is its stored dtype
            stored = shapes[shape][-1] if shape in shapes else STORED_DTYPES.get(shape, torch.float32)
            for component in pipeline.components.values():
                if isinstance(component, torch.nn.Module):
                    torch.nn.Module.to(component, stored)  # stored precision; loading casts as asked
            pipeline.save_pretrained(staging, safe_serialization=True)
            for part, component in pipeline.components.items():
                if isinstance(component, CLIPTokenizer):
                    write_vocab_files(component, staging / part)
    return target
