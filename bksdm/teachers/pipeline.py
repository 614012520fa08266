"""A diffusers pipeline around any U-Net with the teacher's frozen parts: what sample grids and the
evaluation callbacks draw with during training."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from bksdm.teachers.frozen import FrozenTeacher
from bksdm.teachers.loading import load_components


def frozen_pipeline(frozen: FrozenTeacher, unet: UNet2DConditionModel, device: torch.device):
    """A StableDiffusionPipeline around ``unet`` with the frozen VAE, text encoder and tokenizer (loaded
    from the teacher for the occasion when training keeps them out of memory) and a PNDM scheduler with
    the teacher's betas (the paper's sampler)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    frozen.to(device)
    vae, text_encoder = frozen.vae, frozen.text_encoder
    missing = [name for name, part in (("vae", vae), ("text_encoder", text_encoder)) if part is None]
    if missing:
        loaded = load_components(frozen.source, missing, frozen.dtype, frozen.revision)
        vae = vae or loaded.vae.to(device)
        text_encoder = text_encoder or loaded.text_encoder.to(device)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=frozen.tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(frozen.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
