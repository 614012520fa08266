"""FixedBatches: one random batch, served every step, so that a benchmark times the step and not the data."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from bksdm.arch.report import TEXT_TOKENS, sdxl_added_conditioning
from bksdm.bench.flops import _context_width
from bksdm.teachers.denoiser_call import example_inputs
from bksdm.teachers.frozen import FrozenTeacher
from bksdm.teachers.transformer_text import t5_length_of

CAPTION = "a photograph of a small red bird sitting on a branch of a tree in a green forest, high detail"


class _Repeated(Dataset):
    def __init__(self, batch: dict, times: int):
        self.batch, self.times = batch, times

    def __len__(self) -> int:
        return self.times

    def __getitem__(self, index: int) -> dict:
        return self.batch


def stored_inputs(frozen: FrozenTeacher, batch_size: int, side: int, generator: torch.Generator) -> dict:
    """Random pre-encoded inputs shaped as ``data=latents`` brings them for this teacher: ``latent_mean`` and
    ``latent_std`` (B, C, side, side), ``text_embeds`` (B, T, D), and by family ``pooled_text_embeds`` (B, P)
    (SDXL, FLUX, SD3) or ``text_mask`` (B, T) (PixArt; all ones, the most a caption costs). T: 77 CLIP
    tokens, T5's training length (FLUX, PixArt), or both (SD3)."""
    config = frozen.denoiser.config
    if frozen.is_transformer:
        t5 = t5_length_of(frozen, frozen.family)
        tokens = TEXT_TOKENS + t5 if frozen.family == "StableDiffusion3Pipeline" else t5
        named = {**config, "_class_name": type(frozen.denoiser).__name__}
        latents, _, example = example_inputs(named, side, batch_size, tokens)
        context, pooled, mask = example.context, example.pooled, example.mask
    else:
        latents = torch.empty(batch_size, config["in_channels"], side, side)
        context = torch.empty(batch_size, TEXT_TOKENS, _context_width(config))
        added = sdxl_added_conditioning(config, batch_size)
        pooled, mask = (added["text_embeds"] if added is not None else None), None
    inputs = {
        "latent_mean": torch.randn(latents.shape, generator=generator),
        "latent_std": torch.full(latents.shape, 0.01),
        "text_embeds": torch.randn(context.shape, generator=generator),
    }
    if pooled is not None:
        inputs["pooled_text_embeds"] = torch.randn(pooled.shape, generator=generator)
    if mask is not None:
        inputs["text_mask"] = torch.ones_like(mask)
    return inputs


class FixedBatches(L.LightningDataModule):
    """``steps`` copies of one random batch for the teacher of a built module.

    Args:
        batch_size: images per batch.
        resolution: image side in pixels (the latent side is ``resolution // frozen.vae_scale``).
        steps: batches to serve.
        frozen: the module's frozen teacher (its family and configs shape the batch).
        pre_encoded: True: latent distributions and text embeddings, as ``data=latents`` brings them
            (``stored_inputs``); False: pixels (B, 3, H, W) in [-1, 1] and captions, which the step encodes
            with the VAE and the text encoders. For an SDXL teacher the batch also holds each image's
            original size and crop.
    """

    def __init__(
        self, batch_size: int, resolution: int, steps: int, frozen: FrozenTeacher, pre_encoded: bool
    ):
        super().__init__()
        if resolution % frozen.vae_scale:
            raise ValueError(
                f"bench.resolution={resolution}: accepted are multiples of {frozen.vae_scale} pixels (the "
                "teacher's VAE factor)"
            )
        self.steps = steps
        generator = torch.Generator().manual_seed(0)
        batch: dict = {"caption": [CAPTION] * batch_size}
        if pre_encoded:
            batch.update(stored_inputs(frozen, batch_size, resolution // frozen.vae_scale, generator))
        else:
            batch["pixel_values"] = (
                torch.rand(batch_size, 3, resolution, resolution, generator=generator) * 2 - 1
            )
        if frozen.sdxl:  # an uncropped image of the trained size
            batch["original_size"] = torch.tensor([[resolution, resolution]] * batch_size)
            batch["crop_top_left"] = torch.zeros(batch_size, 2, dtype=torch.long)
        self.batch = batch

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            _Repeated(self.batch, self.steps), batch_size=None, pin_memory=torch.cuda.is_available()
        )
