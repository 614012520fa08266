"""How each transformer family reads its captions, in plain torch: what ``FluxPipeline``,
``StableDiffusion3Pipeline`` and ``PixArtSigmaPipeline`` compute in ``encode_prompt`` (checked against them
in the tests), without the pipeline objects, so that a training step can call it on a batch.

- FLUX.1: the T5 tower's last hidden state is the context (B, L, D); CLIP's pooled output (B, P) is the
  pooled conditioning.
- SD3: both CLIP towers' penultimate hidden states side by side, zero-padded to T5's width and followed by
  T5's last hidden state along the sequence (B, 77 + L, D); both towers' projected pooled outputs side by
  side (B, P1 + P2).
- PixArt: T5's last hidden state (B, L, D) under its attention mask (B, L), which the transformer takes too.

L is the pipeline's default ``max_sequence_length`` (FLUX 512, SD3 256, PixArt 300), or the tokenizer's
``model_max_length`` where that is shorter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TEXT_LENGTHS = {  # each pipeline's default max_sequence_length for T5
    "FluxPipeline": 512,
    "StableDiffusion3Pipeline": 256,
    "PixArtSigmaPipeline": 300,
}


def text_length(pipeline: str, t5_tokenizer) -> int:
    """The T5 length a family's pipeline uses by default, capped at what its tokenizer allows."""
    return min(TEXT_LENGTHS[pipeline], t5_tokenizer.model_max_length)


def t5_length_of(parts, pipeline: str) -> int:
    """``text_length`` of the T5 tokenizer ``parts`` (a pipeline, or a ``FrozenTeacher``) hold: a family's
    last text tower is its T5."""
    return text_length(pipeline, getattr(parts, TEXT_PARTS[pipeline][-1][0]))


def _ids(tokenizer, captions: Sequence[str], length: int, device: torch.device) -> tuple:
    tokens = tokenizer(
        list(captions), padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
        return_tensors="pt",
    )  # fmt: skip
    return tokens.input_ids.to(device), tokens.attention_mask.to(device)


def _device(encoder: torch.nn.Module) -> torch.device:
    return next(encoder.parameters()).device


@torch.no_grad()
def encode_flux(tokenizers: Sequence, encoders: Sequence[torch.nn.Module], captions: Sequence[str]):
    """(context (B, L, D), pooled (B, P)): T5's states and CLIP's pooled output; the towers in FluxPipeline's
    order (CLIP, T5)."""
    (clip_tokenizer, t5_tokenizer), (clip, t5) = tokenizers, encoders
    clip_ids, _ = _ids(clip_tokenizer, captions, clip_tokenizer.model_max_length, _device(clip))
    pooled = clip(clip_ids, output_hidden_states=False).pooler_output
    t5_ids, _ = _ids(t5_tokenizer, captions, text_length("FluxPipeline", t5_tokenizer), _device(t5))
    return t5(t5_ids, output_hidden_states=False)[0], pooled


@torch.no_grad()
def encode_sd3(tokenizers: Sequence, encoders: Sequence[torch.nn.Module], captions: Sequence[str]):
    """(context (B, 77 + L, D), pooled (B, P1 + P2)); the towers in StableDiffusion3Pipeline's order (CLIP-L,
    CLIP-G, T5)."""
    hidden, pooled = [], []
    for tokenizer, encoder in zip(tokenizers[:2], encoders[:2], strict=True):
        ids, _ = _ids(tokenizer, captions, tokenizer.model_max_length, _device(encoder))
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled.append(out[0])
    t5_tokenizer, t5 = tokenizers[2], encoders[2]
    t5_ids, _ = _ids(
        t5_tokenizer, captions, text_length("StableDiffusion3Pipeline", t5_tokenizer), _device(t5)
    )
    t5_states = t5(t5_ids)[0]
    clip_states = torch.cat(hidden, dim=-1)
    clip_states = torch.nn.functional.pad(clip_states, (0, t5_states.shape[-1] - clip_states.shape[-1]))
    return torch.cat([clip_states, t5_states], dim=-2), torch.cat(pooled, dim=-1)


@torch.no_grad()
def encode_pixart(tokenizers: Sequence, encoders: Sequence[torch.nn.Module], captions: Sequence[str]):
    """(context (B, L, D), attention mask (B, L)) of T5, the captions taken as given (PixArt's
    ``clean_caption=False``)."""
    (tokenizer,), (t5,) = tokenizers, encoders
    ids, mask = _ids(tokenizer, captions, text_length("PixArtSigmaPipeline", tokenizer), _device(t5))
    return t5(ids, attention_mask=mask)[0], mask


ENCODERS = {
    "FluxPipeline": encode_flux,
    "StableDiffusion3Pipeline": encode_sd3,
    "PixArtSigmaPipeline": encode_pixart,
}
TEXT_PARTS = {  # (tokenizer, text encoder) per tower, in the order the encoders take them
    "FluxPipeline": (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
    "StableDiffusion3Pipeline": (
        ("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3"),
    ),
    "PixArtSigmaPipeline": (("tokenizer", "text_encoder"),),
}  # fmt: skip
