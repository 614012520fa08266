"""The offline toy teacher: a complete SD-v1-shaped pipeline with narrow widths, built from a seed.

Real Stable Diffusion weights cannot be downloaded everywhere (CI, air-gapped clusters), so tests and
the demo use this pipeline. It has SD-v1's topology (four U-Net stages, two (ResNet, attention) pairs
per down block, a cross-attention mid block, a VAE with 8x downsampling, a CLIP text encoder and SD's
scheduler settings) at widths that make a distillation step on CPU take milliseconds. It is saved once
in diffusers layout to a cache folder and then loaded like any other teacher, with ``from_pretrained``.
The same builder makes ``builtin:sd14-random``: SD-v1.4's shapes at full width, random weights, so that
``python -m bksdm.bench`` can time the real model's step without a download.
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

    if shape not in SHAPES:
        raise ValueError(f"unknown builtin pipeline shape {shape!r}: accepted are {list(SHAPES)}")
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
            for model in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
                torch.nn.Module.to(model, SHAPES[shape][3])  # stored precision; loading casts as asked
            pipeline.save_pretrained(staging, safe_serialization=True)
            write_vocab_files(pipeline.tokenizer, staging / "tokenizer")
    return target
