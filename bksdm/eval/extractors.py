"""Feature extractors for the metrics, behind two small interfaces so that they can be swapped.

- image features: ``(images uint8 (N, 3, H, W)) -> (pool features (N, D), class logits (N, C))`` for FID
  and IS (the paper: Inception-v3 with pytorch-fid weights, via the ``eval`` extra);
- text-image embeddings: ``embed_images(uint8 images) -> (N, E)``, ``embed_texts(list[str]) -> (N, E)``
  for the CLIP score (the paper: open_clip ViT-g-14 ``laion2b_s34b_b88k``).

``StandInInception`` and ``StandInCLIP`` are small random networks built from a seed: the whole evaluation path
runs offline with them (``eval=standin``); their numbers are not comparable with the paper's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bksdm.data.transforms import uint8_to_unit


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"extractors take uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    return uint8_to_unit(images)


def _conv_tower(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, width // 4, 4, stride=4),
        nn.GELU(),
        nn.Conv2d(width // 4, width // 2, 4, stride=4),
        nn.GELU(),
        nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class StandInInception(nn.Module):
    """A random conv net standing in for Inception-v3: 64-d pool features and 10 class logits."""

    name = "standin-inception"

    def __init__(self, seed: int = 0, width: int = 64, classes: int = 10):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tower = _conv_tower(width)
            self.head = nn.Linear(width, classes)
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.tower(_to_unit(images))
        return features, self.head(features)


class StandInCLIP(nn.Module):
    """A random image tower and a byte-bag text tower with 32-d outputs, standing in for open_clip."""

    name = "standin-clip"

    def __init__(self, seed: int = 0, width: int = 32):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.image_tower = _conv_tower(width)
            self.text_tower = nn.EmbeddingBag(256, width, mode="mean")
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tower(_to_unit(images))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        ids = [torch.tensor(list(text.encode("utf-8")) or [0]) for text in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return self.text_tower(torch.cat(ids), offsets)
