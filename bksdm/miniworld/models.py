"""The mini-world teacher's parts (an SD-v1-shaped pipeline at 64 px) and the attribute classifier.

Sizes follow the feasibility run in ``shared/reference/miniworld.md``: a 1.25M-parameter VAE (8x down,
latents 4x8x8), a 3.3M-parameter U-Net with SD-v1's topology, and a small CLIP text encoder left at its
seeded random initialisation (enough for the U-Net to read the captions), over the byte-level tokenizer.
"""

from __future__ import annotations

import itertools

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from bksdm.miniworld.world import ATTRIBUTES, RESOLUTION
from bksdm.teachers.builtin import build_tokenizer, text_encoder_config

TEXT_TOKENS = 40  # the longest caption is 33 byte tokens with its start and end tokens

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "latent_channels": 4,
    "sample_size": RESOLUTION,
}
UNET_CONFIG = {
    "sample_size": RESOLUTION // 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [32, 64, 64, 64],
    "layers_per_block": 2,
    "norm_num_groups": 16,
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
}
TEXT_WIDTHS = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}


def tokenizer() -> CLIPTokenizer:
    built = build_tokenizer()
    built.model_max_length = TEXT_TOKENS
    return built


def text_encoder(seed: int, vocabulary: CLIPTokenizer) -> CLIPTextModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = text_encoder_config(vocabulary, TEXT_WIDTHS, TEXT_TOKENS)
        return CLIPTextModel(config).eval().requires_grad_(False)


def vae(seed: int) -> AutoencoderKL:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**VAE_CONFIG)


def unet(seed: int) -> UNet2DConditionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**UNET_CONFIG)


class AttributeClassifier(nn.Module):
    """Reads shape, colour, position and size from a (B, 3, 64, 64) image in [-1, 1].

    ``forward`` gives one logit tensor (B, n_values) per attribute; ``features`` the (B, 128) penultimate
    embedding that mini-world FID is computed on.
    """

    def __init__(self, width: int = 32, feature_dim: int = 128):
        super().__init__()
        widths = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        # 64 -> 4 px: position survives in the 4x4 map (other sizes are pooled to it)
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4))
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * 16, feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict(
            {name: nn.Linear(feature_dim, len(values)) for name, values in ATTRIBUTES.items()}
        )
        self.width, self.feature_dim = width, feature_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}
