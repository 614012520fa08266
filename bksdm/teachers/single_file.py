"""A U-Net in the original Stable Diffusion checkpoint layout (``model.diffusion_model.*``), as one file.

The tools that load single checkpoint files (ComfyUI, AUTOMATIC1111, stable-diffusion.cpp, diffusers'
``from_single_file``) read the layout of the CompVis/Stability code: ``input_blocks``, ``middle_block`` and
``output_blocks`` numbered in one sequence per direction, each down level taking ``layers_per_block``
slots plus one for its downsampler, each up level ``layers_per_block + 1``. A block-removed student is
written with that numbering made compact (a student with one layer per block has ``input_blocks.1`` and
``input_blocks.2.0.op`` where SD-v1 has ``input_blocks.1``, ``.2`` and ``.3.0.op``), which is what those
tools' detection of BK-SDM and SDXL students reads. diffusers ships only the other direction
(``convert_ldm_unet_checkpoint``, which the tests load the file back with); this is its inverse for the
U-Nets bksdm builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

PREFIX = "model.diffusion_model."
# diffusers name -> original name, outside the blocks (diffusers' DIFFUSERS_TO_LDM_MAPPING["unet"])
_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's added text and time conditioning
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# a ResNet's parts, diffusers -> original
_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def original_key(key: str, config: Mapping) -> str:
    """The original-layout name (without ``model.diffusion_model.``) of a diffusers U-Net state-dict key,
    for a U-Net of ``config`` (its ``layers_per_block`` and block types decide the numbering)."""
    layers = config["layers_per_block"]
    parts = key.split(".")
    for diffusers, original in _TOP_LEVEL.items():
        if key.startswith(diffusers + "."):
            return original + key[len(diffusers) :]
    if parts[0] == "down_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        slot = 1 + block * (layers + 1)
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.weight -> input_blocks.N.0.op.weight
            return f"input_blocks.{slot + layers}.0.op.{'.'.join(rest[1:])}"
        return f"input_blocks.{slot + index}.{_layer(kind, rest)}"
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        position = 1 if kind == "attentions" else 2 * index  # resnet, attention, resnet: no slots
        return f"middle_block.{position}.{_layer(kind, rest).split('.', 1)[1]}"
    if parts[0] == "up_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        slot = block * (layers + 1)
        if kind == "upsamplers":  # after the last layer's resnet, and its attention where it has one
            has_attention = config["up_block_types"][block].startswith("CrossAttn")
            return f"output_blocks.{slot + layers}.{2 if has_attention else 1}.{'.'.join(rest)}"
        return f"output_blocks.{slot + index}.{_layer(kind, rest)}"
    raise ValueError(f"U-Net key {key!r} has no place in the original checkpoint layout")


def _layer(kind: str, rest: list[str]) -> str:
    """A resnet (slot position 0, parts renamed) or an attention (position 1, names unchanged)."""
    if kind == "resnets":
        return f"0.{_RESNET_PARTS.get(rest[0], rest[0])}.{'.'.join(rest[1:])}".rstrip(".")
    if kind == "attentions":
        return "1." + ".".join(rest)
    raise ValueError(f"U-Net block part {kind!r} has no place in the original checkpoint layout")


def original_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``unet``'s tensors under their original-layout names, ``model.diffusion_model.`` first."""
    config = dict(unet.config)
    return {PREFIX + original_key(key, config): tensor for key, tensor in unet.state_dict().items()}


def save_single_file(unet: torch.nn.Module, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``unet`` in the original layout as a safetensors file (``dtype``: cast first, e.g. fp16 as
    the released checkpoints are), under a temporary name and renamed when complete."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        key: tensor.detach().to(dtype=dtype or tensor.dtype, device="cpu").contiguous()
        for key, tensor in original_state_dict(unet).items()
    }
    staging = path.with_name(f".{path.name}.partial")
    save_file(state, str(staging), metadata={"format": "pt", "layout": "ldm", "written_by": "bksdm"})
    staging.replace(path)
    return path
