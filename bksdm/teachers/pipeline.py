"""A diffusers pipeline around any denoiser (U-Net or transformer) with the teacher's frozen parts: what
sample grids and the evaluation callbacks draw with during training."""

from __future__ import annotations

import functools

import torch

from bksdm.teachers.conditioning import text_towers
from bksdm.teachers.frozen import FrozenTeacher
from bksdm.teachers.loading import load_components
from bksdm.teachers.transformer_text import TEXT_PARTS, t5_length_of


def denoiser_part(frozen: FrozenTeacher) -> str:
    """The pipeline component a denoiser of this teacher's family is: ``unet`` or ``transformer``."""
    return "transformer" if frozen.is_transformer else "unet"


def frozen_pipeline(frozen: FrozenTeacher, denoiser: torch.nn.Module, device: torch.device):
    """A pipeline around ``denoiser`` with the frozen VAE, text encoder(s) and tokenizer(s) (loaded from the
    teacher for the occasion when training keeps them out of memory): for SD-v1/v2 a
    StableDiffusionPipeline with a PNDM scheduler of the teacher's betas (the paper's sampler), for SDXL a
    StableDiffusionXLPipeline with SDXL's own Euler scheduler, for a transformer teacher its family's
    pipeline with a fresh copy of its scheduler (flow-matching Euler for FLUX and SD3, DPM-Solver++ for
    PixArt)."""
    from diffusers import (
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    frozen.to(device)
    encoders = [encoder for _, encoder in text_towers(frozen.family, frozen.sdxl)]
    parts = {"vae": frozen.vae, **{encoder: getattr(frozen, encoder) for encoder in encoders}}
    missing = [name for name, part in parts.items() if part is None]
    if missing:
        loaded = load_components(frozen.source, missing, frozen.dtype, frozen.revision, frozen.vae_source)
        for name in missing:
            dtype = frozen.vae_dtype if name == "vae" else frozen.dtype
            parts[name] = torch.nn.Module.to(
                getattr(loaded, name), device, dtype
            )  # quietly: not diffusers' .to
    if frozen.vae_dtype != frozen.dtype:
        parts["vae"] = _decoding_in_own_dtype(parts["vae"], frozen.vae_dtype)
    if frozen.is_transformer:
        pipeline = _transformer_pipeline(frozen, parts, denoiser)
    elif frozen.sdxl:
        pipeline = StableDiffusionXLPipeline(
            **parts,
            tokenizer=frozen.tokenizer,
            tokenizer_2=frozen.tokenizer_2,
            unet=denoiser,
            scheduler=EulerDiscreteScheduler.from_config(frozen.noise_scheduler.config),
            add_watermarker=False,
        )
    else:
        pipeline = StableDiffusionPipeline(
            **parts,
            tokenizer=frozen.tokenizer,
            unet=denoiser,
            scheduler=PNDMScheduler.from_config(frozen.noise_scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pipeline_denoiser(pipeline) -> torch.nn.Module:
    """A pipeline's U-Net, or its transformer."""
    return pipeline.transformer if hasattr(pipeline, "transformer") else pipeline.unet


def call_settings(pipeline) -> dict:
    """What a call of a transformer ``pipeline`` must say beyond the prompt to read captions as training
    does and draw at the size asked: T5's length as in training (``transformer_text.text_length``: the
    pipeline's default, or less where the tokenizer stops sooner), PixArt's captions uncleaned (its pipeline
    cleans them by default, with beautifulsoup4 where installed) and its size not rounded to its bins."""
    family = type(pipeline).__name__
    if family not in TEXT_PARTS:
        return {}
    settings = {"max_sequence_length": t5_length_of(pipeline, family)}
    if family == "PixArtSigmaPipeline":
        settings.update(clean_caption=False, use_resolution_binning=False)
    return settings


def _transformer_pipeline(frozen: FrozenTeacher, parts: dict, transformer: torch.nn.Module):
    import diffusers

    tokenizers = {name: getattr(frozen, name) for name, _ in TEXT_PARTS[frozen.family]}
    if frozen.family == "PixArtSigmaPipeline":
        scheduler = diffusers.DPMSolverMultistepScheduler.from_config(frozen.noise_scheduler.config)
    else:  # a copy: sampling sets its timesteps, training reads the original's table
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(frozen.noise_scheduler.config)
    return getattr(diffusers, frozen.family)(
        **parts, **tokenizers, transformer=transformer, scheduler=scheduler
    )


def _decoding_in_own_dtype(vae, dtype: torch.dtype):
    """The VAE with its ``decode`` run outside autocast, in ``dtype``: sampling autocasts to the frozen
    dtype (``FrozenTeacher.sampling_precision``), which would run SDXL's float32 VAE in float16, where it
    overflows. diffusers' pipeline has no other hook for this, hence the wrapped method (once per VAE)."""
    if getattr(vae.decode, "in_own_dtype", False):
        return vae
    decode = vae.decode

    @functools.wraps(decode)
    def decode_in_own_dtype(latents, *args, **kwargs):
        with torch.autocast(latents.device.type, enabled=False):
            return decode(latents.to(dtype), *args, **kwargs)

    decode_in_own_dtype.in_own_dtype = True
    vae.decode = decode_in_own_dtype
    return vae
