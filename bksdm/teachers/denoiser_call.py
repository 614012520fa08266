"""One call for every denoiser a teacher family has: ``denoise(model, family, noisy, timesteps, conditioning)``
-> the prediction in the latents' layout, whatever the model's own calling convention.

- U-Nets (SD-v1/v2, SDXL): ``unet(noisy, t, encoder_hidden_states, added_cond_kwargs)``.
- FLUX: the latents travel as a sequence of 2x2 patches (B, h/2 * w/2, 4C) with a position id per patch and
  per text token, the timestep as a fraction of the schedule (t / 1000) and the guidance scale for the
  guidance embedding; the prediction is unpacked back to (B, C, h, w). The packing is ``FluxPipeline``'s
  (``_pack_latents``, ``_unpack_latents``, ``_prepare_latent_image_ids``), written out here because those
  are private methods of a pipeline module the training step does not otherwise import (checked equal in
  the tests).
- SD3: ``transformer(noisy, t, encoder_hidden_states, pooled_projections)``.
- PixArt: the context's attention mask and no micro-conditions (Sigma's ``use_additional_conditions`` is
  false); with learned variance the prediction has 2C channels (noise, then the variance interpolation),
  all of which the students imitate.
"""

from __future__ import annotations

import torch

from bksdm.teachers.conditioning import Conditioning, _cast

UNET_FAMILIES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
TRANSFORMER_FAMILIES = ("FluxPipeline", "StableDiffusion3Pipeline", "PixArtSigmaPipeline")


def pack_flux_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): each 2x2 patch one token, channels first within it."""
    b, c, h, w = latents.shape
    return (
        latents.view(b, c, h // 2, 2, w // 2, 2)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(b, (h // 2) * (w // 2), 4 * c)
    )


def unpack_flux_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w), the inverse of ``pack_flux_latents``."""
    b, _, channels = tokens.shape
    tokens = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return tokens.reshape(b, channels // 4, height, width)


def flux_image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids of the packed latents: (0, row, column) per patch."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device, dtype=dtype)
    ids[..., 1] += torch.arange(height // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] += torch.arange(width // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


def denoise(
    model: torch.nn.Module,
    family: str,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    conditioning: Conditioning,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The prediction (B, C', h, w) of ``model`` (a denoiser of ``family``, a pipeline class name) for
    ``noisy`` (B, C, h, w) at ``timesteps`` (B,) on the schedule's scale ([0, 1000)); inputs cast to
    ``dtype`` if given. C' is C, or 2C for PixArt's learned variance."""
    noisy = _cast(noisy, dtype)
    if family in UNET_FAMILIES:
        return model(noisy, timesteps, **conditioning.unet_kwargs(dtype)).sample
    context = _cast(conditioning.context, dtype)
    if family == "FluxPipeline":
        height, width = noisy.shape[-2:]
        out = model(
            hidden_states=pack_flux_latents(noisy), encoder_hidden_states=context,
            pooled_projections=_cast(conditioning.pooled, dtype), timestep=_cast(timesteps / 1000, noisy.dtype),
            guidance=_cast(conditioning.guidance, noisy.dtype),
            img_ids=flux_image_ids(height, width, noisy.device, noisy.dtype),
            txt_ids=torch.zeros(context.shape[1], 3, device=noisy.device, dtype=noisy.dtype),
        ).sample  # fmt: skip
        return unpack_flux_latents(out, height, width)
    if family == "StableDiffusion3Pipeline":
        return model(
            hidden_states=noisy, timestep=timesteps, encoder_hidden_states=context,
            pooled_projections=_cast(conditioning.pooled, dtype),
        ).sample  # fmt: skip
    if family == "PixArtSigmaPipeline":
        return model(
            noisy, encoder_hidden_states=context, encoder_attention_mask=conditioning.mask, timestep=timesteps,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample  # fmt: skip
    raise ValueError(
        f"a denoiser of family {family!r}: accepted are {[*UNET_FAMILIES, *TRANSFORMER_FAMILIES]}"
    )


# the pipeline family of each transformer class
TRANSFORMER_PIPELINES = {
    "FluxTransformer2DModel": "FluxPipeline",
    "SD3Transformer2DModel": "StableDiffusion3Pipeline",
    "PixArtTransformer2DModel": "PixArtSigmaPipeline",
}


def example_inputs(
    config, latent_size: int, batch: int = 1, text_tokens: int = 8
) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    """Noisy latents (B, C, s, s), timesteps (B,) and conditioning shaped for a transformer of ``config``,
    on the current default device (``with torch.device("meta")``: shapes only, for checks and counts)."""
    name = type(config).__name__ if not hasattr(config, "get") else None
    name = config.get("_class_name") if name is None else name
    channels = config["in_channels"] // 4 if name == "FluxTransformer2DModel" else config["in_channels"]
    noisy = torch.empty(batch, channels, latent_size, latent_size)
    timesteps = torch.full((batch,), 500.0)
    if name == "PixArtTransformer2DModel":
        context = torch.empty(batch, text_tokens, config["caption_channels"])
        return noisy, timesteps, Conditioning(context, mask=torch.ones(batch, text_tokens, dtype=torch.long))
    context = torch.empty(batch, text_tokens, config["joint_attention_dim"])
    conditioning = Conditioning(context, pooled=torch.empty(batch, config["pooled_projection_dim"]))
    if config.get("guidance_embeds"):
        conditioning.guidance = torch.full((batch,), 3.5)
    return noisy, timesteps, conditioning


def meta_transformer_call(
    config, latent_size: int, batch_size: int = 1, text_tokens: int = 8, dtype: torch.dtype | None = None
):
    """A transformer of ``config`` on the meta device and ``call(model)``, which runs any model of that family
    on ``example_inputs`` of these sizes (cast to ``dtype`` if given): for counts and shape checks."""
    from bksdm.arch.depth import empty_transformer, family

    name = family(config)
    model = empty_transformer(config)
    with torch.device("meta"):
        inputs = example_inputs({**config, "_class_name": name}, latent_size, batch_size, text_tokens)

    def call(module: torch.nn.Module) -> torch.Tensor:
        return denoise(module, TRANSFORMER_PIPELINES[name], *inputs, dtype=dtype)

    return model, call
