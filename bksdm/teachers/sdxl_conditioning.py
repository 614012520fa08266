"""SDXL's conditioning as its U-Net takes it, in plain torch, for distillation from an SDXL teacher.

SDXL reads its captions through two CLIP text towers: the U-Net's cross-attention context is both towers'
penultimate hidden states side by side (B, 77, D1 + D2), and its added conditioning is the second tower's
pooled projection (B, P) with six size ids per image (B, 6): the original image's height and width, the
crop's top and left offset, and the target height and width. This is what
``StableDiffusionXLPipeline.encode_prompt`` and ``_get_add_time_ids`` compute (checked against them in the
tests), without the pipeline object, so that a training step can call it on a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def encode_captions(
    tokenizers: Sequence, text_encoders: Sequence[torch.nn.Module], captions: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (B, T, D1 + D2), pooled (B, P)) of ``captions`` through SDXL's two towers (the first a
    ``CLIPTextModel``, the second a ``CLIPTextModelWithProjection``), on the towers' device and in their
    dtype. An empty caption is encoded as any other (caption dropout trains the unconditional branch so)."""
    if len(tokenizers) != 2 or len(text_encoders) != 2:
        raise ValueError(
            f"SDXL conditioning needs two tokenizers and two text encoders, got {len(tokenizers)} and "
            f"{len(text_encoders)}"
        )
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if out[0].ndim == 2:  # the projection tower's text_embeds: the pooled conditioning
            pooled = out[0]
    if pooled is None:
        raise ValueError(
            "the second SDXL text encoder has no pooled projection: load it as CLIPTextModelWithProjection"
        )
    return torch.cat(hidden, dim=-1), pooled


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
    target = torch.tensor(target_size, dtype=original_sizes.dtype).expand_as(original_sizes)
    return torch.cat([original_sizes, crops_top_left, target], dim=1)


def added_conditioning(pooled: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``added_cond_kwargs`` an SDXL U-Net call takes."""
    return {"text_embeds": pooled, "time_ids": ids.to(pooled.device, pooled.dtype)}
