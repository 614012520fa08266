"""Ranks agreeing on a host-side flag (skip this batch? stop now?) without the host waiting for the GPU.

Lightning's ``reduce_boolean_decision`` all-reduces a tensor on the training device and reads it back,
which under NCCL makes the host wait for every kernel queued so far, at every step. The flags decided
here live on the host, so they travel over a CPU (gloo) process group instead; under a gloo world (CPU
training) that is the world itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

_HOST_GROUPS: dict[int, object] = {}  # per world group: a re-initialised world gets its own


def distributed() -> bool:
    """A distributed world of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def host_group():
    """A CPU (gloo) process group of the whole world, for host-side values (flags, metric states kept on the
    CPU): the world itself under gloo, one made once beside it under NCCL (collectively: every rank must
    reach the first call)."""
    world = dist.group.WORLD
    if id(world) not in _HOST_GROUPS:
        # new_group is collective: every rank reaches this at the same call, the first agreement
        _HOST_GROUPS[id(world)] = world if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _HOST_GROUPS[id(world)]


def ranks_agree(flag: bool, every: bool = True) -> bool:
    """True if ``flag`` holds on every rank (``every=False``: on any rank). Without a distributed world,
    the flag itself."""
    return ranks_agree_each([flag], every)[0]


def ranks_agree_each(flags: Sequence[bool], every: bool = True) -> list[bool]:
    """``ranks_agree`` of several flags in one collective."""
    if not distributed():
        return [bool(flag) for flag in flags]
    value = torch.tensor([int(flag) for flag in flags], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN if every else dist.ReduceOp.MAX, group=host_group())
    return [bool(v) for v in value.tolist()]
