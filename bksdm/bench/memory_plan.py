"""What one training step holds in device memory, counted on the meta device (no weights, no compute), to
say before renting a GPU whether a teacher and student fit on it (``python -m bksdm.bench
bench.count_only=true``):

    frozen       the teacher's denoiser in the frozen dtype (2 B per parameter in bf16 or fp16); a step that
                 encodes its own inputs also holds the VAE encoder and the text encoders (FLUX's T5-XXL: 9.5 GB
                 in bf16), which pre-encoded inputs (the benchmark's default) leave out
    student      fp32 master weights, gradients and AdamW's two moments (16 B per parameter) and the EMA
                 copy (4 B), divided over the devices under FSDP, which shards all of them
    autocast     the compute-dtype copies of the student's weights that mixed precision caches for one
                 forward (2 B per parameter under bf16/fp16 mixed)
    activations  what the student's forward saves for its backward at the micro-batch size, in the
                 compute dtype: every saved tensor counted by a saved-tensors hook on a meta forward. With
                 gradient checkpointing only what lies outside the checkpointed blocks, each block's input,
                 and one block's saved tensors (recomputed during backward) are held.

Each saved tensor is counted at its size even where two share storage, so activations are an upper bound; the
allocator's fragmentation, the teacher's transient activations (inference mode frees them block by block)
and CUDA's own context (about 0.5 GB) are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

MASTER_STATE_BYTES = 16  # fp32 weights, gradients, AdamW's exp_avg and exp_avg_sq
EMA_BYTES = 4
GIB = 2**30


def checkpointed_units(model: torch.nn.Module) -> list[str]:
    """The module paths diffusers' gradient checkpointing recomputes: the blocks of a transformer's stacks,
    the ResNets and attention stacks (and samplers) of a U-Net's blocks."""
    from bksdm.arch.depth import STACKS
    from bksdm.arch.report import unit_names

    stacks = STACKS.get(type(model).__name__)
    if stacks is None:
        return [n for n in unit_names(model) if n.split(".")[0] in ("down_blocks", "mid_block", "up_blocks")]
    return [f"{stack}.{i}" for stack in stacks for i in range(len(model.get_submodule(stack)))]


def saved_activation_bytes(model: torch.nn.Module, call, checkpointing: bool) -> int:
    """Bytes the forward ``call(model)`` saves for backward (``model`` on the meta device, in the compute
    dtype); with ``checkpointing``, what gradient checkpointing of ``checkpointed_units`` would hold."""
    current: list[str] = []  # the checkpointed unit running now (innermost last)
    per_unit: dict[str, int] = {}
    inputs: dict[str, int] = {}
    outside = 0
    weights = {
        id(p) for p in model.parameters()
    }  # saved weights (or views of them) take no memory of their own

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal outside
        if id(tensor) in weights or (tensor._base is not None and id(tensor._base) in weights):
            return tensor
        size = tensor.numel() * tensor.element_size()
        if current:
            per_unit[current[0]] = per_unit.get(current[0], 0) + size
        else:
            outside += size
        return tensor

    def enter(name: str):
        def hook(_module, args, kwargs):
            if not current:
                tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
                inputs[name] = sum(t.numel() * t.element_size() for t in tensors)
            current.append(name)

        return hook

    def leave(_module, _args, _output):
        current.pop()

    handles = []
    for name in checkpointed_units(model):
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(enter(name), with_kwargs=True))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            call(model)
    finally:
        for handle in handles:
            handle.remove()
    if not checkpointing:
        return outside + sum(per_unit.values())
    return outside + sum(inputs.values()) + max(per_unit.values(), default=0)


def denoiser_activation_bytes(
    config: Mapping, latent_size: int, batch_size: int, dtype: torch.dtype, checkpointing: bool
) -> int:
    """``saved_activation_bytes`` of one student forward (a U-Net or a FLUX, SD3 or PixArt transformer of
    ``config``) at a square latent, its pipeline's text length."""
    from bksdm.arch.depth import is_transformer

    if is_transformer(config):
        from bksdm.arch.depth import family
        from bksdm.arch.depth_report import TEXT_TOKENS
        from bksdm.teachers.denoiser_call import meta_transformer_call

        tokens = TEXT_TOKENS[family(config)]
        model, call = meta_transformer_call(config, latent_size, batch_size, tokens, dtype=dtype)
    else:
        from bksdm.arch.report import TEXT_TOKENS, sdxl_added_conditioning
        from bksdm.arch.student import empty_unet, plain_config
        from bksdm.bench.flops import _context_width

        config = plain_config(config)
        model = empty_unet(config)
        with torch.device("meta"):
            sample = torch.empty(
                batch_size, config.get("in_channels", 4), latent_size, latent_size, dtype=dtype
            )
            context = torch.empty(batch_size, TEXT_TOKENS, _context_width(config), dtype=dtype)
            added = sdxl_added_conditioning(config, batch_size)
            timesteps = torch.zeros(batch_size, dtype=torch.long)

        def call(model):
            model(sample, timesteps, context, added_cond_kwargs=added)

    return saved_activation_bytes(torch.nn.Module.to(model, dtype), call, checkpointing)


def memory_plan(
    frozen_weight_bytes: int,
    student_params: int,
    activation_bytes: int,
    mixed_precision: bool,
    ema: bool,
    shards: int = 1,
) -> dict[str, float]:
    """GiB per device by part (``frozen``: the frozen teacher's weights, ``student``, ``autocast``,
    ``activations``) and their ``total``; ``shards``: the devices FSDP shards the student's states over (1:
    none)."""
    student = student_params * (MASTER_STATE_BYTES + EMA_BYTES * ema) / shards
    parts = {
        "frozen": frozen_weight_bytes,
        "student": student,
        "autocast": 2 * student_params / shards if mixed_precision else 0,
        "activations": activation_bytes,
    }
    parts = {name: value / GIB for name, value in parts.items()}
    parts["total"] = sum(parts.values())
    return parts
