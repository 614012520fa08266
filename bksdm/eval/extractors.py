"""Feature extractors for the metrics, behind two small interfaces so that they can be swapped.

- image features: ``(images uint8 (N, 3, H, W)) -> (pool features (N, D), class logits (N, C))`` for FID
  and IS (the paper: Inception-v3 with pytorch-fid weights, via the ``eval`` extra);
- text-image embeddings: ``embed_images(uint8 images) -> (N, E)``, ``embed_texts(list[str]) -> (N, E)``
  for the CLIP score (the paper: open_clip ViT-g-14 ``laion2b_s34b_b88k``).

``StandInInception`` (image statistics, no weights) and ``StandInCLIP`` (a small random network built from a
seed) let the whole evaluation path run offline (``eval=standin``); the stand-in FID separates noise and
flat images from real ones by orders of magnitude, but its numbers are not comparable with the paper's.
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


def _image_statistics(images: torch.Tensor) -> torch.Tensor:
    """(N, 64) float32 statistics of unit-range images (N, 3, H, W) that tell photographs, drawings and
    noise apart the way a trained network's pool features would, without weights: per channel the mean
    and spread (6), the channels' covariances (6), a 4x4 grid of brightness (16), and the log energy of
    horizontal and vertical differences (24) and of the Laplacian (12) at 1, 2, 4 and 8 pixels' scale."""
    n = images.shape[0]
    flat = images.flatten(2)
    mean, spread = flat.mean(2), flat.std(2)
    centred = flat - mean[..., None]
    covariance = torch.einsum("ncp,ndp->ncd", centred, centred) / flat.shape[2]
    rows, columns = torch.triu_indices(3, 3, 1)
    upper = covariance[:, rows, columns]
    layout = nn.functional.adaptive_avg_pool2d(images.mean(1, keepdim=True), 4).flatten(1)
    edges, curvature = [], []
    for scale in (1, 2, 4, 8):
        level = nn.functional.avg_pool2d(images, scale) if scale > 1 else images
        dx, dy = level.diff(dim=3), level.diff(dim=2)
        laplacian = (
            level[..., 1:-1, 2:] + level[..., 1:-1, :-2] + level[..., 2:, 1:-1] + level[..., :-2, 1:-1]
        )
        laplacian = laplacian - 4 * level[..., 1:-1, 1:-1]
        edges += [dx.abs().flatten(2).mean(2), dy.abs().flatten(2).mean(2)]
        curvature.append(laplacian.abs().flatten(2).mean(2))
    energies = torch.log(torch.cat(edges + curvature, dim=1) + 1e-4)
    return torch.cat(
        [mean, spread, covariance.diagonal(dim1=1, dim2=2), upper, layout, energies], dim=1
    ).view(n, -1)


class StandInInception(nn.Module):
    """Stands in for Inception-v3 without weights: 64-d features of image statistics (``_image_statistics``:
    colour, layout, edge and texture energy at four scales), so that FID separates noise, flat images
    and real ones as Inception's does (tested), and 10 class logits from a fixed random projection of
    them for IS."""

    name = "standin-inception"

    def __init__(self, seed: int = 0, classes: int = 10):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Linear(64, classes)
            nn.init.normal_(self.head.weight, 0.0, 0.3)  # logits spread by about 2.4 between typical images
            # logits of standardised features: raw ones differ by tenths between images around large
            # offsets, which would put every image in one class; the reference is 16 smooth random images
            coarse = torch.rand(16, 3, 6, 6)
            reference = _image_statistics(nn.functional.interpolate(coarse, 256, mode="bicubic").clamp(0, 1))
        self.register_buffer("centre", reference.mean(0))
        self.register_buffer("scale", reference.std(0) + 1e-3)
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = _image_statistics(_to_unit(images) * 0.5 + 0.5)
        return features, self.head((features - self.centre) / self.scale)


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
