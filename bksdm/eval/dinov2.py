"""FD-DINOv2's feature network: DINOv2 ViT-L/14 (Stein et al., 2023, who found Fréchet distances on its
features to follow human judgement of generated images better than Inception's), loaded with
transformers from the Hugging Face cache, so it needs no torchvision and no extra package."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bksdm.eval.paper_extractors import _check_images, resolve_device

# ImageNet's, which DINOv2 was trained with
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DINOv2Features(nn.Module):
    """``(uint8 images (N, 3, H, W)) -> (features (N, D), None)``: the CLS token after the final layer
    norm (transformers' ``pooler_output``, the hub model's ``x_norm_clstoken``) of images resized to
    ``size`` px (bicubic) and normalised with ImageNet's mean and std, as the study's ``dgm-eval`` does.

    ``model``: a hub id (default ``facebook/dinov2-large``, ViT-L/14) or a local folder."""

    def __init__(self, model: str = "facebook/dinov2-large", size: int = 224, device: str = "auto"):
        super().__init__()
        from transformers import Dinov2Model

        try:
            self.model = Dinov2Model.from_pretrained(model)
        except OSError as error:
            raise FileNotFoundError(
                f"DINOv2 model {model!r} could not be loaded ({error}); offline, put it in the Hugging Face "
                "cache first (huggingface-cli download facebook/dinov2-large) or give a local folder"
            ) from error
        self.device = resolve_device(device)
        self.model.requires_grad_(False).eval().to(self.device)
        self.size = size
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.to(self.device)
        self.name = f"dinov2-{Path(model).name}-{size}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        _check_images(images)
        pixels = images.to(self.device).float() / 255
        pixels = nn.functional.interpolate(
            pixels, size=(self.size, self.size), mode="bicubic", antialias=True
        )
        pixels = (pixels.clamp(0, 1) - self.mean) / self.std
        return self.model(pixel_values=pixels).pooler_output.double(), None
