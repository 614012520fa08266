"""Block-removed students: their diffusers config, the teacher -> student weight map, and the build.

Terms: a *stage* is one resolution level (down block i and its mirror, up block n-1-i); a *unit* is one
removable module inside a block (``down_blocks.0.resnets.1``, ``up_blocks.2.attentions.0``,
``down_blocks.1.downsamplers.0``) or a top-level module (``conv_in``, ``mid_block``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from bksdm.arch.spec import RemovalSpec, kept_layer_indices, resolve_removal

_DOWN_TO_UP = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}
_MID_BLOCKS = ("UNetMidBlock2DCrossAttn",)
# Config fields that may hold one value per stage (indexed like down_blocks); they are cut with the stages.
_PER_STAGE_FIELDS = (
    "block_out_channels",
    "down_block_types",
    "only_cross_attention",
    "attention_head_dim",
    "num_attention_heads",
    "cross_attention_dim",
    "transformer_layers_per_block",
)


def plain_config(config: Mapping) -> dict:
    """A diffusers config (FrozenDict or dict) as a plain dict without private ``_`` keys."""
    return {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")
    }


def check_teacher_topology(config: Mapping) -> None:
    """Raise ValueError unless ``config`` is a U-Net of the SD topology that block removal understands."""
    down = list(config.get("down_block_types", []))
    up = list(config.get("up_block_types", []))
    channels = list(config.get("block_out_channels", []))
    problems = []
    bad_down = [t for t in down if t not in _DOWN_TO_UP]
    if bad_down:
        problems.append(f"down_block_types {bad_down} (accepted: {sorted(_DOWN_TO_UP)})")
    elif up != [_DOWN_TO_UP[t] for t in reversed(down)]:
        problems.append(f"up_block_types {up} do not mirror down_block_types {down}")
    if len(channels) != len(down) or not down:
        problems.append(f"block_out_channels {channels} needs one width per down block ({len(down)})")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") not in _MID_BLOCKS:
        problems.append(f"mid_block_type {config.get('mid_block_type')!r} (accepted: {list(_MID_BLOCKS)})")
    if teacher_layers_per_block(config) is None:
        problems.append(
            f"layers_per_block {config.get('layers_per_block')!r} (accepted: one integer >= 1 for all blocks)"
        )
    if config.get("reverse_transformer_layers_per_block") is not None:
        problems.append("reverse_transformer_layers_per_block is set (accepted: null)")
    depths = config.get("transformer_layers_per_block", 1)
    if not all(isinstance(d, int) and d >= 1 for d in (depths if isinstance(depths, list) else [depths])):
        problems.append(
            f"transformer_layers_per_block {depths!r} (accepted: one depth, or one per down block)"
        )
    if problems:
        raise ValueError(
            "teacher U-Net is not of the Stable Diffusion topology that BK-SDM block removal supports: "
            + "; ".join(problems)
        )


def teacher_layers_per_block(config: Mapping) -> int | None:
    layers = config.get("layers_per_block", 2)
    if isinstance(layers, (list, tuple)):
        layers = layers[0] if len(set(layers)) == 1 else None
    return layers if isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1 else None


def student_config(teacher_config: Mapping, removal: str | Mapping | RemovalSpec) -> dict:
    """The diffusers UNet2DConditionModel config of a BK-SDM student.

    Args:
        teacher_config: the teacher U-Net's config (``unet.config`` or its config.json as a dict).
        removal: ``"base"``, ``"small"``, ``"tiny"`` or a removal spec (mapping or RemovalSpec).

    Returns:
        A plain dict that ``UNet2DConditionModel.from_config`` accepts. No channel is pruned; only
        ``layers_per_block``, ``mid_block_type`` and the per-stage lists change.
    """
    spec = resolve_removal(removal)
    teacher = plain_config(teacher_config)
    check_teacher_topology(teacher)
    teacher_layers = teacher_layers_per_block(teacher)
    num_stages = len(teacher["block_out_channels"])
    if not 1 <= spec.layers_per_block <= teacher_layers:
        raise ValueError(
            f"layers_per_block={spec.layers_per_block} does not fit a teacher with {teacher_layers} "
            f"layers per block: accepted are 1..{teacher_layers}"
        )
    if not 0 <= spec.drop_innermost_stages < num_stages:
        raise ValueError(
            f"drop_innermost_stages={spec.drop_innermost_stages} does not fit a teacher with {num_stages} "
            f"stages: accepted are 0..{num_stages - 1}"
        )
    kept = num_stages - spec.drop_innermost_stages
    student = dict(teacher)
    for field in _PER_STAGE_FIELDS:
        if isinstance(student.get(field), list):
            student[field] = list(student[field][:kept])
    student["up_block_types"] = [_DOWN_TO_UP[t] for t in reversed(student["down_block_types"])]
    student["layers_per_block"] = spec.layers_per_block
    if not spec.keep_mid_block:
        student["mid_block_type"] = None
    elif not spec.mid_block_attention:
        student["mid_block_type"] = "UNetMidBlock2D"  # its first ResNet only
    else:
        student["mid_block_type"] = teacher.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if spec.transformer_layers_per_block is not None:
        depths = list(spec.transformer_layers_per_block)
        if len(depths) != kept:
            raise ValueError(
                f"transformer_layers_per_block={depths} needs one depth per student stage ({kept})"
            )
        student["transformer_layers_per_block"] = depths
    if spec.reverse_transformer_layers_per_block is not None:
        reverse = [list(block) for block in spec.reverse_transformer_layers_per_block]
        if len(reverse) != kept or any(len(block) != spec.layers_per_block + 1 for block in reverse):
            raise ValueError(
                f"reverse_transformer_layers_per_block={reverse} needs one list per up block ({kept}) of "
                f"{spec.layers_per_block + 1} depths each (layers_per_block + 1)"
            )
        student["reverse_transformer_layers_per_block"] = reverse
    return student


def stack_depths(config: Mapping) -> dict[str, int]:
    """Transformer depth of every attention stack of a U-Net config (``down_blocks.1.attentions.0``,
    ``mid_block.attentions.0``, ``up_blocks.0.attentions.2``), as diffusers builds it."""
    stages = len(config["block_out_channels"])

    def per_stage(value) -> list:
        return list(value) if isinstance(value, list) else [value] * stages

    down = per_stage(config.get("transformer_layers_per_block", 1))
    reverse = config.get("reverse_transformer_layers_per_block")
    up = [list(block) for block in reverse] if reverse is not None else list(reversed(down))
    layers = teacher_layers_per_block(config)
    depths = {}
    for i, block_type in enumerate(config["down_block_types"]):
        if block_type.startswith("CrossAttn"):
            for j in range(layers):
                depths[f"down_blocks.{i}.attentions.{j}"] = down[i]
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
        depths["mid_block.attentions.0"] = down[-1]
    for i, block_type in enumerate(config["up_block_types"]):
        if block_type.startswith("CrossAttn"):
            for j in range(layers + 1):
                depths[f"up_blocks.{i}.attentions.{j}"] = up[i][j] if isinstance(up[i], list) else up[i]
    return depths


def unit_map(teacher_config: Mapping, removal: str | Mapping | RemovalSpec) -> dict[str, str]:
    """Student unit -> teacher unit it is initialised from, for every block unit of the student.

    Top-level modules outside the blocks (``conv_in``, ``time_embedding``, ``conv_out``, ...) are not
    listed: they keep their names.
    """
    spec = resolve_removal(removal)
    config = student_config(teacher_config, spec)
    teacher_layers = teacher_layers_per_block(plain_config(teacher_config))
    kept = len(config["block_out_channels"])
    mapping: dict[str, str] = {}
    for i, block_type in enumerate(config["down_block_types"]):
        for j in range(spec.layers_per_block):
            mapping[f"down_blocks.{i}.resnets.{j}"] = f"down_blocks.{i}.resnets.{j}"
            if block_type.startswith("CrossAttn"):
                mapping[f"down_blocks.{i}.attentions.{j}"] = f"down_blocks.{i}.attentions.{j}"
        if i < kept - 1:
            mapping[f"down_blocks.{i}.downsamplers.0"] = f"down_blocks.{i}.downsamplers.0"
    if config["mid_block_type"] == "UNetMidBlock2D":  # the teacher's mid block cut to its first ResNet
        mapping["mid_block.resnets.0"] = "mid_block.resnets.0"
    elif config["mid_block_type"] is not None:
        mapping["mid_block"] = "mid_block"
    for i, block_type in enumerate(config["up_block_types"]):
        t = i + spec.drop_innermost_stages
        # Up pairs 0..l-1 take the stage's own width as skip input, the last pair takes the next stage's
        # width: so the student keeps the teacher's first l pairs and its last one.
        teacher_pairs = [*range(spec.layers_per_block), teacher_layers]
        for j, tj in enumerate(teacher_pairs):
            mapping[f"up_blocks.{i}.resnets.{j}"] = f"up_blocks.{t}.resnets.{tj}"
            if block_type.startswith("CrossAttn"):
                mapping[f"up_blocks.{i}.attentions.{j}"] = f"up_blocks.{t}.attentions.{tj}"
        if i < kept - 1:
            mapping[f"up_blocks.{i}.upsamplers.0"] = f"up_blocks.{t}.upsamplers.0"
    mapping.update(_transformer_layer_map(teacher_config, config, mapping, spec))
    return mapping


def _transformer_layer_map(
    teacher_config: Mapping, config: Mapping, units: Mapping[str, str], spec: RemovalSpec
) -> dict[str, str]:
    """Student transformer layer -> teacher layer, for every student stack shallower than the teacher
    stack it comes from, by ``spec.kept_layers`` or its ``kept_layers_listed`` entry."""
    teacher_depths, student_depths = stack_depths(plain_config(teacher_config)), stack_depths(config)
    listed = dict(spec.kept_layers_listed)
    unknown = sorted(set(listed) - set(student_depths))
    if unknown:
        raise ValueError(
            f"kept_layers_listed names {unknown}, which are not transformer stacks of this student: accepted "
            f"are {sorted(student_depths)}"
        )
    mapping = {}
    for unit, depth in student_depths.items():
        source = "mid_block.attentions.0" if unit.startswith("mid_block") else units[unit]
        teacher_depth = teacher_depths[source]
        if depth > teacher_depth:
            raise ValueError(
                f"student stack {unit!r} has {depth} transformer layers but its teacher stack {source!r} has "
                f"{teacher_depth}: a student keeps layers, it cannot add them"
            )
        kept = list(listed.get(unit) or kept_layer_indices(spec.kept_layers, teacher_depth, depth))
        if len(kept) != depth or kept != sorted(set(kept)) or kept[-1] >= teacher_depth:
            raise ValueError(
                f"kept_layers_listed[{unit!r}]={kept}: accepted are {depth} increasing indices of the teacher "
                f"stack's {teacher_depth} layers (0..{teacher_depth - 1})"
            )
        if kept != list(range(teacher_depth)):
            for k, teacher_layer in enumerate(kept):
                mapping[f"{unit}.transformer_blocks.{k}"] = f"{source}.transformer_blocks.{teacher_layer}"
    return mapping


def map_key(student_key: str, units: Mapping[str, str]) -> str:
    """The teacher state-dict key a student key is copied from (units matched by their prefix)."""
    parts = student_key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in units:
            return ".".join([units[prefix], *parts[cut:]])
    return student_key


def weight_map(
    student_shapes: Mapping[str, torch.Size],
    teacher_shapes: Mapping[str, torch.Size],
    units: Mapping[str, str],
) -> dict[str, str]:
    """Student key -> teacher key for every student tensor, checked for presence and shape.

    Raises:
        KeyError: a student key whose mapped teacher key the teacher does not have.
        ValueError: a mapped pair whose shapes differ.
    """
    mapping = {}
    for key, shape in student_shapes.items():
        source = map_key(key, units)
        if source not in teacher_shapes:
            raise KeyError(
                f"student tensor {key!r} maps to teacher tensor {source!r}, which the teacher does not have: "
                "refusing to leave it randomly initialised"
            )
        if tuple(teacher_shapes[source]) != tuple(shape):
            raise ValueError(
                f"student tensor {key!r} has shape {tuple(shape)} but its teacher tensor {source!r} has "
                f"shape {tuple(teacher_shapes[source])}: this removal spec does not fit this teacher"
            )
        mapping[key] = source
    return mapping


def empty_unet(config: Mapping) -> UNet2DConditionModel:
    """A U-Net with the given config on the meta device: shapes and structure, no memory."""
    with init_empty_weights(include_buffers=True):
        return UNet2DConditionModel.from_config(dict(config))


def _shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {key: tensor.shape for key, tensor in module.state_dict().items()}


def student_weight_map(teacher_config: Mapping, removal: str | Mapping | RemovalSpec) -> dict[str, str]:
    """Student key -> teacher key, computed from configs alone (no weights are allocated)."""
    teacher = empty_unet(plain_config(teacher_config))
    student = empty_unet(student_config(teacher_config, removal))
    return weight_map(_shapes(student), _shapes(teacher), unit_map(teacher_config, removal))


def build_student(
    teacher_unet: UNet2DConditionModel,
    removal: str | Mapping | RemovalSpec,
    dtype: torch.dtype | None = None,
) -> UNet2DConditionModel:
    """A BK-SDM student initialised from its teacher by the reference weight map.

    Every student tensor is a copy of its mapped teacher tensor, on the teacher's device and in
    ``dtype`` (default: the teacher's; e.g. a bf16 teacher with an fp32 student to train); nothing is
    left at random initialisation. The student is returned in train mode.
    """
    config = student_config(teacher_unet.config, removal)
    student = empty_unet(config)
    teacher_state = teacher_unet.state_dict()
    mapping = weight_map(_shapes(student), _shapes(teacher_unet), unit_map(teacher_unet.config, removal))
    state = {
        key: teacher_state[source].detach().to(dtype=dtype, copy=True) for key, source in mapping.items()
    }
    student.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in [*student.named_parameters(), *student.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"student tensors without a teacher source: {leftover}")
    return student.train()
