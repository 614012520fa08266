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


PAPER_VARIANTS: dict[str, RemovalSpec] = {
    "base": RemovalSpec(layers_per_block=1, keep_mid_block=True, drop_innermost_stages=0),
    "small": RemovalSpec(layers_per_block=1, keep_mid_block=False, drop_innermost_stages=0),
    "tiny": RemovalSpec(layers_per_block=1, keep_mid_block=False, drop_innermost_stages=1),
}

_SPEC_FIELDS = tuple(f.name for f in fields(RemovalSpec))


def resolve_variant(variant: str | Mapping | RemovalSpec) -> RemovalSpec:
    """Turn a paper variant name, a mapping of RemovalSpec fields or a RemovalSpec into a RemovalSpec."""
    if isinstance(variant, RemovalSpec):
        spec = variant
    elif isinstance(variant, str):
        if variant not in PAPER_VARIANTS:
            raise ValueError(
                f"unknown student variant {variant!r}: accepted are {sorted(PAPER_VARIANTS)} "
                f"or a removal spec mapping with keys {list(_SPEC_FIELDS)}"
            )
        spec = PAPER_VARIANTS[variant]
    elif isinstance(variant, Mapping):
        unknown = sorted(set(variant) - set(_SPEC_FIELDS))
        if unknown:
            raise ValueError(f"unknown removal spec keys {unknown}: accepted keys are {list(_SPEC_FIELDS)}")
        spec = RemovalSpec(**dict(variant))
    else:
        raise TypeError(
            f"student variant must be one of {sorted(PAPER_VARIANTS)}, a mapping or a RemovalSpec, "
            f"got {type(variant).__name__}: {variant!r}"
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


def variant_name(spec: RemovalSpec) -> str:
    """The paper's name for a spec (``base``, ``small``, ``tiny``) or ``custom(...)``."""
    for name, paper_spec in PAPER_VARIANTS.items():
        if paper_spec == spec:
            return name
    return "custom(" + ", ".join(f"{k}={v}" for k, v in asdict(spec).items()) + ")"
