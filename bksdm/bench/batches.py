"""FixedBatches: one random batch, served every step, so that a benchmark times the step and not the data."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from bksdm.arch.report import TEXT_TOKENS, VAE_SCALE

CAPTION = "a photograph of a small red bird sitting on a branch of a tree in a green forest, high detail"


class _Repeated(Dataset):
    def __init__(self, batch: dict, times: int):
        self.batch, self.times = batch, times

    def __len__(self) -> int:
        return self.times

    def __getitem__(self, index: int) -> dict:
        return self.batch


class FixedBatches(L.LightningDataModule):
    """``steps`` copies of one random batch.

    Args:
        batch_size: images per batch.
        resolution: image side in pixels (the latent side is ``resolution // 8``).
        steps: batches to serve.
        text_width: width of the text embeddings (the U-Net's ``cross_attention_dim``).
        pre_encoded: True: latent distributions (B, 4, h, w) and text embeddings (B, 77, text_width), as
            ``data=latents`` brings them; False: pixels (B, 3, H, W) in [-1, 1] and captions, which the
            step encodes with the VAE and the text encoder.
        pooled_width: for an SDXL teacher, the width of its pooled text embedding: the batch also holds
            each image's original size and crop, and (pre-encoded) the pooled embeddings (B, pooled_width).
    """

    def __init__(
        self,
        batch_size: int,
        resolution: int,
        steps: int,
        text_width: int,
        pre_encoded: bool,
        pooled_width: int | None = None,
    ):
        super().__init__()
        if resolution % VAE_SCALE:
            raise ValueError(f"bench.resolution={resolution}: accepted are multiples of {VAE_SCALE} pixels")
        self.steps = steps
        self.pre_encoded = {"latents", "text_embeds"} if pre_encoded else set()
        generator = torch.Generator().manual_seed(0)
        batch: dict = {"caption": [CAPTION] * batch_size}
        if pre_encoded:
            side = resolution // VAE_SCALE
            batch["latent_mean"] = torch.randn(batch_size, 4, side, side, generator=generator)
            batch["latent_std"] = torch.full((batch_size, 4, side, side), 0.01)
            batch["text_embeds"] = torch.randn(batch_size, TEXT_TOKENS, text_width, generator=generator)
            if pooled_width is not None:
                batch["pooled_text_embeds"] = torch.randn(batch_size, pooled_width, generator=generator)
        else:
            batch["pixel_values"] = (
                torch.rand(batch_size, 3, resolution, resolution, generator=generator) * 2 - 1
            )
        if pooled_width is not None:  # an uncropped image of the trained size
            batch["original_size"] = torch.tensor([[resolution, resolution]] * batch_size)
            batch["crop_top_left"] = torch.zeros(batch_size, 2, dtype=torch.long)
        self.batch = batch

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            _Repeated(self.batch, self.steps), batch_size=None, pin_memory=torch.cuda.is_available()
        )
