"""Removal specs: what a BK-SDM student drops from its teacher, as data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

KEPT_LAYER_RULES = ("first", "evenly")


@dataclass(frozen=True)
class RemovalSpec:
    """Which whole blocks, and which transformer layers, a student keeps from a teacher of the SD U-Net
    topology (SD-v1/v2, SDXL).

    Attributes:
        layers_per_block: (ResNet, attention) pairs each down block keeps, counted from the first.
            Up blocks keep one more: the first ``layers_per_block`` pairs and the teacher's last pair,
            the only choice whose skip-connection widths match.
        keep_mid_block: False removes the mid block (``mid_block_type: null``).
        drop_innermost_stages: how many of the lowest-resolution stages to remove, down and up block
            alike; the student's last down block then has no downsampler.
        mid_block_attention: False keeps only the mid block's first ResNet (``UNetMidBlock2D``, as
            SSD-1B and Segmind-Vega); the kept mid block's transformer depth is otherwise the student's
            last down level's (diffusers ties them).
        transformer_layers_per_block: the student's transformer depth per down level (one entry per
            kept stage, as diffusers' field of that name; entries of stages without attention are not
            used); None: the teacher's.
        reverse_transformer_layers_per_block: the depth of each up block's transformer stacks, one list
            per up block (in up order, ``layers_per_block + 1`` entries each, as diffusers' field); None:
            each up level mirrors its down level's depth.
        kept_layers: which of a teacher stack's transformer layers a shallower student stack keeps:
            ``first`` (layers 0..k-1) or ``evenly`` (k layers spread evenly from the first to the last).
        kept_layers_listed: for named student stacks (``down_blocks.2.attentions.0``, ``mid_block.attentions.0``),
            the teacher layer indices they keep, in order, instead of the rule (e.g. [0, 1, 2, 6]).
    """

    layers_per_block: int = 1
    keep_mid_block: bool = True
    drop_innermost_stages: int = 0
    mid_block_attention: bool = True
    transformer_layers_per_block: tuple[int, ...] | None = None
    reverse_transformer_layers_per_block: tuple[tuple[int, ...], ...] | None = None
    kept_layers: str = "first"
    kept_layers_listed: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self):
        # lists and mappings from a config become tuples: a spec stays hashable and comparable
        def ints(value):
            return tuple(value) if isinstance(value, (list, tuple)) else value

        depths = self.transformer_layers_per_block
        object.__setattr__(self, "transformer_layers_per_block", None if depths is None else ints(depths))
        reverse = self.reverse_transformer_layers_per_block
        if reverse is not None and isinstance(reverse, (list, tuple)):
            reverse = tuple(ints(block) for block in reverse)
        object.__setattr__(self, "reverse_transformer_layers_per_block", reverse)
        listed = self.kept_layers_listed
        if isinstance(listed, Mapping):
            listed = tuple((str(unit), ints(layers)) for unit, layers in listed.items())
        object.__setattr__(self, "kept_layers_listed", tuple(listed or ()))


PAPER_REMOVALS: dict[str, RemovalSpec] = {
    "base": RemovalSpec(layers_per_block=1, keep_mid_block=True, drop_innermost_stages=0),
    "small": RemovalSpec(layers_per_block=1, keep_mid_block=False, drop_innermost_stages=0),
    "tiny": RemovalSpec(layers_per_block=1, keep_mid_block=False, drop_innermost_stages=1),
}

_SPEC_FIELDS = tuple(f.name for f in fields(RemovalSpec))


def resolve_removal(removal: str | Mapping | RemovalSpec) -> RemovalSpec:
    """Turn a paper student name (base, small, tiny), a mapping of RemovalSpec fields or a RemovalSpec into a RemovalSpec."""
    if isinstance(removal, RemovalSpec):
        spec = removal
    elif isinstance(removal, str):
        if removal not in PAPER_REMOVALS:
            raise ValueError(
                f"unknown removal {removal!r}: accepted are {sorted(PAPER_REMOVALS)} "
                f"or a removal spec mapping with keys {list(_SPEC_FIELDS)}"
            )
        spec = PAPER_REMOVALS[removal]
    elif isinstance(removal, Mapping):
        unknown = sorted(set(removal) - set(_SPEC_FIELDS))
        if unknown:
            raise ValueError(f"unknown removal spec keys {unknown}: accepted keys are {list(_SPEC_FIELDS)}")
        spec = RemovalSpec(**dict(removal))
    else:
        raise TypeError(
            f"removal must be one of {sorted(PAPER_REMOVALS)}, a mapping or a RemovalSpec, "
            f"got {type(removal).__name__}: {removal!r}"
        )
    _check_types(spec)
    return spec


def _check_types(spec: RemovalSpec) -> None:
    for name in ("layers_per_block", "drop_innermost_stages"):
        value = getattr(spec, name)
        if not _is_int(value):
            raise ValueError(f"removal spec {name} must be an integer, got {value!r}")
    for name in ("keep_mid_block", "mid_block_attention"):
        if not isinstance(getattr(spec, name), bool):
            raise ValueError(f"removal spec {name} must be true or false, got {getattr(spec, name)!r}")
    depths = spec.transformer_layers_per_block
    if depths is not None and not (isinstance(depths, tuple) and all(_is_int(d) and d >= 1 for d in depths)):
        raise ValueError(
            f"removal spec transformer_layers_per_block must be a list of depths >= 1 (one per stage) or null, "
            f"got {depths!r}"
        )
    reverse = spec.reverse_transformer_layers_per_block
    if reverse is not None and not (
        isinstance(reverse, tuple)
        and all(isinstance(b, tuple) and all(_is_int(d) and d >= 1 for d in b) for b in reverse)
    ):
        raise ValueError(
            "removal spec reverse_transformer_layers_per_block must be a list of lists of depths >= 1 (one "
            f"list per up block) or null, got {reverse!r}"
        )
    if spec.kept_layers not in KEPT_LAYER_RULES:
        raise ValueError(
            f"removal spec kept_layers={spec.kept_layers!r}: accepted are {list(KEPT_LAYER_RULES)}"
        )
    for unit, layers in spec.kept_layers_listed:
        if not (isinstance(layers, tuple) and layers and all(_is_int(i) and i >= 0 for i in layers)):
            raise ValueError(
                f"removal spec kept_layers_listed[{unit!r}] must be a list of teacher layer indices, got {layers!r}"
            )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def kept_layer_indices(rule: str, teacher_depth: int, depth: int) -> list[int]:
    """The teacher layers (indices into a stack of ``teacher_depth``) a stack of ``depth`` keeps by ``rule``."""
    if depth == 1 or rule == "first":
        return list(range(depth))
    return [round(i * (teacher_depth - 1) / (depth - 1)) for i in range(depth)]


def spec_as_config(spec: RemovalSpec) -> dict:
    """The spec as the plain data of a config file (lists, and a mapping for ``kept_layers_listed``)."""

    def plain(value):
        return [plain(v) for v in value] if isinstance(value, tuple) else value

    config = {f.name: plain(getattr(spec, f.name)) for f in fields(RemovalSpec)}
    config["kept_layers_listed"] = {unit: list(layers) for unit, layers in spec.kept_layers_listed}
    return config


def removal_name(spec: RemovalSpec) -> str:
    """The paper's name for a spec (``base``, ``small``, ``tiny``) or ``custom(...)`` with the fields that
    differ from the defaults."""
    for name, paper_spec in PAPER_REMOVALS.items():
        if paper_spec == spec:
            return name
    default = spec_as_config(RemovalSpec())
    changed = {k: v for k, v in spec_as_config(spec).items() if k in _PAPER_FIELDS or v != default[k]}
    return "custom(" + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")"


_PAPER_FIELDS = ("layers_per_block", "keep_mid_block", "drop_innermost_stages")  # always named
