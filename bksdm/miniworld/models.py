"""The mini-world teacher's parts (an SD-v1-shaped pipeline) and the attribute classifier.

Sizes follow the feasibility run in ``shared/reference/miniworld.md``: a 1.25M-parameter VAE (8x down,
latents 4x8x8 at 64 px; the 128 px scenes world's has 3 stages, 4x down, latents 4x32x32), a U-Net with
SD-v1's topology (3.3M parameters at widths 32/64/64/64), and a small CLIP text encoder left at its seeded
random initialisation (enough for the U-Net to read the captions), over the byte-level tokenizer.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from bksdm.miniworld.world import ATTRIBUTES, RESOLUTION
from bksdm.teachers.builtin import build_tokenizer, text_encoder_config

TEXT_TOKENS = 40  # the longest caption is 33 byte tokens with its start and end tokens
SCENE_TEXT_TOKENS = 56  # the relational world's longest is 54 (two objects and a relation)

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


def tokenizer(max_length: int = TEXT_TOKENS) -> CLIPTokenizer:
    built = build_tokenizer()
    built.model_max_length = max_length
    return built


def text_encoder(seed: int, vocabulary: CLIPTokenizer) -> CLIPTextModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = text_encoder_config(vocabulary, TEXT_WIDTHS, vocabulary.model_max_length)
        return CLIPTextModel(config).eval().requires_grad_(False)


def vae(
    seed: int, resolution: int = RESOLUTION, block_out_channels: Sequence[int] | None = None
) -> AutoencoderKL:
    """SD's VAE shape with ``block_out_channels`` (one width per stage) over 32/64/64/64: each stage past
    the first halves the side, so 4 stages make latents of ``resolution // 8`` (SD's), 3 of ``resolution // 4``
    (LDM-4's)."""
    widths = list(block_out_channels or VAE_CONFIG["block_out_channels"])
    config = {
        **VAE_CONFIG,
        "down_block_types": ["DownEncoderBlock2D"] * len(widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        "block_out_channels": widths,
        "sample_size": resolution,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**config)


def latent_side(resolution: int, vae_block_out_channels: Sequence[int] | None = None) -> int:
    """The side of ``vae(seed, resolution, vae_block_out_channels)``'s latents."""
    stages = len(vae_block_out_channels or VAE_CONFIG["block_out_channels"])
    return resolution // 2 ** (stages - 1)


def unet(
    seed: int,
    sample_size: int = RESOLUTION // 8,
    block_out_channels: Sequence[int] | None = None,
    attention_heads: Sequence[int] | None = None,
    top_stage_attention: bool = True,
) -> UNet2DConditionModel:
    """SD-v1's topology for latents of side ``sample_size``; ``block_out_channels`` (4 stages) over the
    default widths 32/64/64/64, ``attention_heads`` (one count per stage) over SD-v1's 8 in every stage
    (diffusers calls the count ``attention_head_dim``). ``top_stage_attention=False`` leaves the outermost
    stage without transformers, as SDXL does."""
    config = {**UNET_CONFIG, "sample_size": sample_size}
    if block_out_channels is not None:
        config["block_out_channels"] = list(block_out_channels)
    if attention_heads is not None:
        config["attention_head_dim"] = list(attention_heads)
    if not top_stage_attention:
        config["down_block_types"] = ["DownBlock2D", *UNET_CONFIG["down_block_types"][1:]]
        config["up_block_types"] = [*UNET_CONFIG["up_block_types"][:-1], "UpBlock2D"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**config)


class AttributeClassifier(nn.Module):
    """Reads a world's label slots from a (B, 3, R, R) image in [-1, 1]: by default the 64 px world's
    shape, colour, position and size; ``heads`` maps each slot to its number of values.

    ``forward`` gives one logit tensor (B, n_values) per slot; ``features`` the (B, feature_dim)
    penultimate embedding that mini-world FID is computed on.
    """

    def __init__(
        self,
        width: int = 32,
        feature_dim: int = 128,
        heads: dict[str, int] | None = None,
        resolution: int = RESOLUTION,
    ):
        super().__init__()
        heads = heads or {name: len(values) for name, values in ATTRIBUTES.items()}
        # stride-2 convs down to 4 px, where positions and relations still show (4 layers at 64 px)
        depth = (resolution // 4).bit_length() - 1
        widths = [3, width, 2 * width] + [4 * width] * (depth - 2)
        layers = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4))
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * 16, feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, count) for name, count in heads.items()})
        self.width, self.feature_dim, self.resolution = width, feature_dim, resolution

    @property
    def config(self) -> dict:
        """What rebuilds it (``classifier.json``)."""
        return {
            "width": self.width,
            "feature_dim": self.feature_dim,
            "heads": {name: head.out_features for name, head in self.heads.items()},
            "resolution": self.resolution,
        }

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}
