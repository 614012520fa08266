"""What a teacher's denoiser is conditioned on, in plain torch: the text context of SD-v1/v2's one CLIP tower,
or SDXL's two towers with its added conditioning (the transformer families' text: ``transformer_text``).

SDXL reads its captions through two CLIP text towers: the U-Net's cross-attention context is both towers'
penultimate hidden states side by side (B, 77, D1 + D2), and its added conditioning is the second tower's
pooled projection (B, P) with six size ids per image (B, 6): the original image's height and width, the
crop's top and left offset, and the target height and width. This is what
``StableDiffusionXLPipeline.encode_prompt`` and ``_get_add_time_ids`` compute (checked against them in the
tests), without the pipeline object, so that a training step can call it on a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from bksdm.teachers.transformer_text import ENCODERS, TEXT_PARTS

UNET_TOWERS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))  # SDXL: both


def takes_added_conditioning(unet_config: Mapping) -> bool:
    """Whether a U-Net takes SDXL's added conditioning (pooled text and size ids)."""
    return unet_config.get("addition_embed_type") == "text_time"


@torch.no_grad()
def encode_captions(
    tokenizers: Sequence, text_encoders: Sequence[torch.nn.Module], captions: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context (B, T, D), pooled (B, P) or None) of ``captions``, on the towers' device and in their
    dtype. One tower (SD-v1/v2): its last hidden state, no pooled embedding. Two (SDXL; the first a
    ``CLIPTextModel``, the second a ``CLIPTextModelWithProjection``): both penultimate hidden states side by
    side, and the second tower's pooled projection. An empty caption is encoded as any other (caption
    dropout trains the unconditional branch so)."""
    if len(tokenizers) != len(text_encoders) or len(tokenizers) not in (1, 2):
        raise ValueError(
            f"text conditioning needs one tokenizer and text encoder (SD-v1/v2) or two of each (SDXL), got "
            f"{len(tokenizers)} and {len(text_encoders)}"
        )
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        ids = ids.to(next(encoder.parameters()).device)
        if len(text_encoders) == 1:
            return encoder(ids)[0], None
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if out[0].ndim == 2:  # the projection tower's text_embeds: the pooled conditioning
            pooled = out[0]
    if pooled is None:
        raise ValueError(
            "the second SDXL text encoder has no pooled projection: load it as CLIPTextModelWithProjection"
        )
    return torch.cat(hidden, dim=-1), pooled


def text_towers(family: str, sdxl: bool = False) -> tuple[tuple[str, str], ...]:
    """The (tokenizer, text encoder) part names a teacher reads its captions with, in the order its
    encoder takes them: one CLIP tower (SD-v1/v2), two (SDXL), or a transformer family's towers."""
    return TEXT_PARTS[family] if family in TEXT_PARTS else UNET_TOWERS[: 1 + sdxl]


def encode_text(parts, family: str, captions: Sequence[str], sdxl: bool = False) -> Conditioning:
    """The text conditioning of ``captions`` by the towers ``parts`` holds (an ``SDComponents`` or a
    ``FrozenTeacher``), on their device and in their dtype: the context (B, T, D) and, by family, the pooled
    text (SDXL, FLUX, SD3; B, P) or the attention mask (PixArt; B, T)."""
    towers = [(getattr(parts, tokenizer), getattr(parts, encoder)) for tokenizer, encoder in text_towers(family, sdxl)]
    tokenizers, encoders = zip(*towers, strict=True)
    if family in ENCODERS:
        context, extra = ENCODERS[family](tokenizers, encoders, captions)
        if family == "PixArtSigmaPipeline":
            return Conditioning(context, mask=extra)
        return Conditioning(context, pooled=extra)
    context, pooled = encode_captions(tokenizers, encoders, captions)
    return Conditioning(context, pooled=pooled)


def size_ids(
    original_sizes: torch.Tensor, crops_top_left: torch.Tensor, target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL's six size ids per image (B, 6): original (height, width) (B, 2), crop (top, left) (B, 2) in
    pixels of the resized image, and the (height, width) trained at."""
    if original_sizes.shape != crops_top_left.shape or original_sizes.shape[-1:] != (2,):
        raise ValueError(
            f"original sizes {tuple(original_sizes.shape)} and crops {tuple(crops_top_left.shape)}: "
            "accepted are two (B, 2) tensors"
        )
    target = torch.tensor(target_size, dtype=original_sizes.dtype, device=original_sizes.device)
    return torch.cat([original_sizes, crops_top_left, target.expand_as(original_sizes)], dim=1)


def added_conditioning(pooled: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``added_cond_kwargs`` an SDXL U-Net call takes."""
    return {"text_embeds": pooled, "time_ids": ids.to(pooled.device, pooled.dtype)}


@dataclass
class Conditioning:
    """What one batch's denoiser calls are conditioned on: the text context (B, T, D); for SDXL the added
    conditioning (``text_embeds`` (B, P), ``time_ids`` (B, 6)); for FLUX and SD3 the pooled text (B, P); for
    PixArt the context's attention mask (B, T); for FLUX the guidance scale (B,) its embedding takes."""

    context: torch.Tensor
    added: dict[str, torch.Tensor] | None = None
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    guidance: torch.Tensor | None = None

    def unet_kwargs(self, dtype: torch.dtype | None = None) -> dict:
        """The keyword arguments of a ``UNet2DConditionModel`` call, cast to ``dtype`` if given."""
        kwargs: dict = {"encoder_hidden_states": _cast(self.context, dtype)}
        if self.added is not None:
            kwargs["added_cond_kwargs"] = {name: _cast(value, dtype) for name, value in self.added.items()}
        return kwargs


def _cast(tensor: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return tensor if dtype is None or tensor is None else tensor.to(dtype)
