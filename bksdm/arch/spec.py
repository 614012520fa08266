"""Removal specs: what a BK-SDM student drops from its teacher, as data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class RemovalSpec:
    """Which whole blocks a student keeps from a teacher of the SD U-Net topology.

    Attributes:
        layers_per_block: (ResNet, attention) pairs each down block keeps, counted from the first.
            Up blocks keep one more: the first ``layers_per_block`` pairs and the teacher's last pair,
            the only choice whose skip-connection widths match.
        keep_mid_block: False removes the mid block (``mid_block_type: null``).
        drop_innermost_stages: how many of the lowest-resolution stages to remove, down and up block
            alike; the student's last down block then has no downsampler.
    """

    layers_per_block: int = 1
    keep_mid_block: bool = True
    drop_innermost_stages: int = 0


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
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"removal spec {name} must be an integer, got {value!r}")
    if not isinstance(spec.keep_mid_block, bool):
        raise ValueError(f"removal spec keep_mid_block must be true or false, got {spec.keep_mid_block!r}")


def removal_name(spec: RemovalSpec) -> str:
    """The paper's name for a spec (``base``, ``small``, ``tiny``) or ``custom(...)``."""
    for name, paper_spec in PAPER_REMOVALS.items():
        if paper_spec == spec:
            return name
    return "custom(" + ", ".join(f"{k}={v}" for k, v in asdict(spec).items()) + ")"
