"""FLOPs of one KD training step, counted on meta-device copies of the models (no weights, no compute).

The counter is torch's FlopCounterMode, as in the architecture report: two FLOPs per multiply-accumulate
of every matmul, convolution and attention product. Counted are the teacher's forward, the student's
forward and backward (U-Nets and FLUX, SD3 and PixArt transformers), and, when the step encodes its own
inputs, the VAE encoder and the text encoder.
Gradient checkpointing's recomputed forward is not counted (model FLOPs, the usual convention for
utilisation figures).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from bksdm.arch.report import TEXT_TOKENS, VAE_SCALE, sdxl_added_conditioning
from bksdm.arch.student import empty_unet, plain_config


def _context_width(config: Mapping) -> int:
    width = config.get("cross_attention_dim", 1280)
    return width[0] if isinstance(width, list) else width


def unet_flops(config: Mapping, latent_size: int, batch_size: int, backward: bool) -> int:
    """FLOPs of one U-Net call on a (batch, 4, latent, latent) input with a 77-token context (and SDXL's
    added conditioning where the U-Net takes it), plus its backward (input and weight gradients) when
    ``backward``."""
    config = plain_config(config)
    unet = empty_unet(config).requires_grad_(backward)
    with torch.device("meta"):
        sample = torch.empty(batch_size, config.get("in_channels", 4), latent_size, latent_size)
        context = torch.empty(batch_size, TEXT_TOKENS, _context_width(config))
        timesteps = torch.zeros(batch_size, dtype=torch.long)
        added = sdxl_added_conditioning(config, batch_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(backward):
        out = unet(sample, timesteps, context, added_cond_kwargs=added).sample
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


def transformer_flops(config: Mapping, latent_size: int, batch_size: int, backward: bool) -> int:
    """FLOPs of one call of a FLUX, SD3 or PixArt transformer on a (batch, C, latent, latent) input with
    its pipeline's default text length (``bksdm.arch.depth_report.TEXT_TOKENS``), plus its backward when
    ``backward``."""
    from bksdm.arch.depth import family
    from bksdm.arch.depth_report import TEXT_TOKENS
    from bksdm.teachers.denoiser_call import meta_transformer_call

    model, call = meta_transformer_call(config, latent_size, batch_size, TEXT_TOKENS[family(config)])
    model.requires_grad_(backward)
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(backward):
        out = call(model)
        if backward:
            out.sum().backward()
    return counter.get_total_flops()


def denoiser_flops(config: Mapping, latent_size: int, batch_size: int, backward: bool) -> int:
    """``unet_flops`` or ``transformer_flops``, by the config's kind."""
    from bksdm.arch.depth import is_transformer

    counter = transformer_flops if is_transformer(config) else unet_flops
    return counter(config, latent_size, batch_size, backward)


def vae_encode_flops(config: Mapping, resolution: int, batch_size: int) -> int:
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(dict(config))
        pixels = torch.empty(batch_size, 3, resolution, resolution)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        vae.encode(pixels)
    return counter.get_total_flops()


def text_encode_flops(config, batch_size: int, t5_tokens: int = 512) -> int:
    """One text tower's FLOPs: a CLIP tower on 77 tokens (SDXL's and SD3's ``CLIPTextModelWithProjection``
    with its projection), a T5 encoder on ``t5_tokens``."""
    import transformers

    if config.model_type == "t5":
        cls, tokens = transformers.T5EncoderModel, t5_tokens
    else:
        projected = "CLIPTextModelWithProjection" in (config.architectures or [])
        cls, tokens = (CLIPTextModelWithProjection if projected else CLIPTextModel), TEXT_TOKENS
    with torch.device("meta"):
        encoder = cls(config)
        ids = torch.zeros(batch_size, tokens, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        encoder(ids)
    return counter.get_total_flops()


def step_flops(
    teacher: Mapping | None,
    student: Mapping,
    resolution: int,
    batch_size: int,
    vae: Mapping | None = None,
    text_encoders: Sequence = (),
    t5_tokens: int = 512,
    vae_scale: int = VAE_SCALE,
) -> dict[str, int]:
    """FLOPs per optimizer step by part (``teacher_forward``, ``student_forward_backward``,
    ``vae_encode``, ``text_encode``: all text towers) and their ``total``. A part whose config is None (no
    text tower: empty) is not run. ``vae_scale``: pixels per latent cell."""
    latent = resolution // vae_scale
    parts = {"student_forward_backward": denoiser_flops(student, latent, batch_size, backward=True)}
    if teacher is not None:
        parts["teacher_forward"] = denoiser_flops(teacher, latent, batch_size, backward=False)
    if vae is not None:
        parts["vae_encode"] = vae_encode_flops(vae, resolution, batch_size)
    if text_encoders:
        parts["text_encode"] = sum(
            text_encode_flops(config, batch_size, t5_tokens) for config in text_encoders
        )
    parts["total"] = sum(parts.values())
    return parts
