"""Depth removal for transformer teachers (FLUX, SD3, PixArt), as data: which blocks of each stack a student
keeps.

A diffusion transformer is stacks of identical blocks (FLUX: 19 double-stream ``transformer_blocks`` and 38
``single_transformer_blocks``; SD3 and PixArt: one ``transformer_blocks`` stack), so a depth-pruned student
is a plain diffusers model of the teacher's class with fewer blocks per stack, renumbered, every tensor
copied from the teacher block it keeps. It loads wherever diffusers does (pruned blocks are gone, not
replaced by identity modules).

A spec names, per stack, the teacher blocks to keep: a list of indices (Flux-Mini: double blocks
``[0, 1, 2, 10, 18]``), ``{keep: k, rule: evenly | first}``, or ``{remove: [[first, last], ...]}``
(contiguous ranges, inclusive, as HierarchicalPrune removes late blocks). SD3's last block is built
differently from the others (no context output projection or feed-forward), so an SD3 student keeps the
teacher's last block last; its ``dual_attention_layers`` are renumbered with the blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

# the stacks of each family and the config field that holds each one's depth
STACKS = {
    "FluxTransformer2DModel": {
        "transformer_blocks": "num_layers",
        "single_transformer_blocks": "num_single_layers",
    },
    "SD3Transformer2DModel": {"transformer_blocks": "num_layers"},
    "PixArtTransformer2DModel": {"transformer_blocks": "num_layers"},
}
DEPTH_RULES = ("evenly", "first")


# a field only each family's config has: for configs of models in memory, which carry no ``_class_name``
_SIGNATURE_FIELDS = {
    "num_single_layers": "FluxTransformer2DModel",
    "dual_attention_layers": "SD3Transformer2DModel",
    "caption_channels": "PixArtTransformer2DModel",
}


def is_transformer(config: Mapping) -> bool:
    """Whether a denoiser config is one of a transformer family's (FLUX, SD3, PixArt), not a U-Net's."""
    return config.get("_class_name") in STACKS or any(field in config for field in _SIGNATURE_FIELDS)


def family(config: Mapping) -> str:
    """The diffusers class of a transformer config (its ``_class_name``, or told by the fields only that
    class has), checked to be one depth removal knows."""
    name = config.get("_class_name") or next((c for f, c in _SIGNATURE_FIELDS.items() if f in config), None)
    if name not in STACKS:
        raise ValueError(f"a transformer teacher of class {name!r}: accepted are {sorted(STACKS)}")
    return name


def empty_transformer(config: Mapping) -> torch.nn.Module:
    """A transformer of ``config``'s family on the meta device (no weights): for counts and shape checks."""
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, family(config)).from_config(
            {k: v for k, v in dict(config).items() if k != "_class_name"}
        )


def kept_blocks(teacher_config: Mapping, stacks: Mapping[str, object]) -> dict[str, list[int]]:
    """Stack -> the teacher block indices the student keeps, in order, for every stack of the teacher
    (a stack the spec does not name keeps all its blocks).

    Raises:
        ValueError: an unknown stack, a rule or count out of range, indices out of range, repeated or out
            of order, or an SD3 student without the teacher's last block last, naming the stack.
    """
    name = family(teacher_config)
    depth_fields = STACKS[name]
    unknown = sorted(set(stacks) - set(depth_fields))
    if unknown:
        raise ValueError(f"{name} has no stack {unknown}: accepted are {sorted(depth_fields)}")
    kept = {}
    for stack, field in depth_fields.items():
        depth = teacher_config[field]
        kept[stack] = _resolve_stack(
            stack, stacks.get(stack), depth, last_fixed=name == "SD3Transformer2DModel"
        )
    return kept


def _resolve_stack(stack: str, entry: object, depth: int, last_fixed: bool) -> list[int]:
    if entry is None:
        return list(range(depth))
    if isinstance(entry, Mapping) and set(entry) <= {"keep", "rule"} and "keep" in entry:
        count, rule = entry["keep"], entry.get("rule", "evenly")
        if rule not in DEPTH_RULES or not isinstance(count, int) or not 1 <= count <= depth:
            raise ValueError(
                f"{stack}: keep={count!r} rule={rule!r}: accepted are a count in [1, {depth}] and a rule of "
                f"{list(DEPTH_RULES)}"
            )
        if rule == "evenly":
            indices = [round(i * (depth - 1) / (count - 1)) for i in range(count)] if count > 1 else [0]
        else:
            indices = list(range(count))
        if last_fixed and indices[-1] != depth - 1:  # SD3: the first k-1 and the last
            indices = [*range(count - 1), depth - 1]
    elif isinstance(entry, Mapping) and set(entry) == {"remove"}:
        removed = set()
        for span in entry["remove"]:
            if not (isinstance(span, Sequence) and len(span) == 2 and 0 <= span[0] <= span[1] < depth):
                raise ValueError(
                    f"{stack}: remove span {span!r}: accepted are [first, last] within [0, {depth - 1}]"
                )
            removed.update(range(span[0], span[1] + 1))
        indices = [i for i in range(depth) if i not in removed]
    elif isinstance(entry, Sequence) and not isinstance(entry, str):
        indices = list(entry)
    else:
        raise ValueError(
            f"{stack}: {entry!r} is not accepted: write a list of teacher block indices, "
            "{keep: k, rule: evenly|first} or {remove: [[first, last], ...]}"
        )
    if not indices or any(not isinstance(i, int) or not 0 <= i < depth for i in indices):
        raise ValueError(
            f"{stack}: keeps {indices!r}: accepted are indices of its {depth} blocks, at least one"
        )
    if indices != sorted(set(indices)):
        raise ValueError(f"{stack}: keeps {indices!r}: indices must be increasing, each once")
    if last_fixed and indices[-1] != depth - 1:
        raise ValueError(
            f"{stack}: keeps {indices!r}: an SD3 student keeps the teacher's last block ({depth - 1}) last, "
            "since it is built without the context output its predecessors have"
        )
    return indices


def depth_student_config(teacher_config: Mapping, stacks: Mapping[str, object]) -> dict:
    """The student's diffusers config: the teacher's with each stack's depth, and SD3's
    ``dual_attention_layers`` renumbered to the kept blocks."""
    kept = kept_blocks(teacher_config, stacks)
    config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    for stack, field in STACKS[family(teacher_config)].items():
        config[field] = len(kept[stack])
    if config.get("dual_attention_layers"):
        config["dual_attention_layers"] = student_block_indices(
            kept["transformer_blocks"], config["dual_attention_layers"]
        )
    return config


def student_block_indices(kept: Sequence[int], teacher_indices: Sequence[int]) -> list[int]:
    """The student's numbers of those ``teacher_indices`` of a stack it keeps (``kept``: the teacher blocks
    it keeps, in order): how SD3's ``dual_attention_layers`` and a pipeline's skip-layer-guidance layers
    (``StableDiffusion3Pipeline(skip_guidance_layers=[7, 8, 9])``) renumber with the blocks; removed ones
    drop out."""
    wanted = set(teacher_indices)
    return [student for student, teacher in enumerate(kept) if teacher in wanted]


def depth_weight_map(
    teacher_config: Mapping, stacks: Mapping[str, object], student_keys: Sequence[str]
) -> dict:
    """Student state-dict key -> the teacher key it is copied from: a block key takes its kept teacher
    block's number, every other key its own name."""
    kept = kept_blocks(teacher_config, stacks)
    mapping = {}
    for key in student_keys:
        stack, _, rest = key.partition(".")
        if stack in kept and rest.split(".", 1)[0].isdigit():
            index, _, tail = rest.partition(".")
            mapping[key] = f"{stack}.{kept[stack][int(index)]}.{tail}"
        else:
            mapping[key] = key
    return mapping


def build_depth_student(teacher: torch.nn.Module, stacks: Mapping[str, object]) -> torch.nn.Module:
    """A depth-pruned student of ``teacher``'s class, every tensor copied from its mapped teacher tensor.

    Raises:
        KeyError / ValueError: a student tensor without a teacher tensor, or of another shape, named.
    """
    config = depth_student_config(teacher.config, stacks)
    student = type(teacher).from_config(config)
    teacher_state = teacher.state_dict()
    state = {}
    for key, teacher_key in depth_weight_map(teacher.config, stacks, list(student.state_dict())).items():
        if teacher_key not in teacher_state:
            raise KeyError(
                f"student tensor {key!r} maps to teacher tensor {teacher_key!r}, which does not exist"
            )
        shape = student.state_dict()[key].shape
        if teacher_state[teacher_key].shape != shape:
            raise ValueError(
                f"student tensor {key!r} {tuple(shape)} and teacher tensor {teacher_key!r} "
                f"{tuple(teacher_state[teacher_key].shape)} differ in shape"
            )
        state[key] = teacher_state[teacher_key]
    student.load_state_dict(state)
    return torch.nn.Module.to(student, teacher.dtype)  # not diffusers' override, which warns needlessly
