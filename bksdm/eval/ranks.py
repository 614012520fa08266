"""An evaluation split over the ranks of a ``torch.distributed`` world (``evaluate devices=N``), in plain
torch: who this rank is, its share of the work, and rows gathered back in one-process order. Without a
world every function acts as the single rank 0 of 1. Values travel over the CPU (gloo) group of
``bksdm.training.host_sync``, where the evaluation keeps its results."""

from __future__ import annotations

import torch
import torch.distributed as dist

from bksdm.training.host_sync import distributed, host_group


def rank_and_size() -> tuple[int, int]:
    """(this rank, number of ranks); (0, 1) without a distributed world."""
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


def is_rank_zero() -> bool:
    return rank_and_size()[0] == 0


def barrier() -> None:
    if distributed():
        dist.barrier(group=host_group())


def contiguous_share(count: int) -> range:
    """This rank's slice of ``count`` items in a row (rank 0 the first ones): gathered in rank order,
    the slices are the items in order."""
    rank, size = rank_and_size()
    return range(rank * count // size, (rank + 1) * count // size)


def strided_share(count: int) -> range:
    """Every ``size``-th of ``count`` items from this rank's number: shares of equal cost when the items
    are done in order and a run stopped part way (a resumed run's missing images spread over every rank)."""
    rank, size = rank_and_size()
    return range(rank, count, size)


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (N_r, ...) on the CPU, concatenated in rank order on every rank; ranks may
    hold different numbers of rows (the same trailing shape and dtype)."""
    rows = rows.cpu()
    if not distributed():
        return rows
    group = host_group()
    counts = [torch.zeros((), dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor(len(rows)), group=group)
    longest = int(max(counts))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype)
    padded[: len(rows)] = rows
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded, group=group)
    return torch.cat([part[: int(count)] for part, count in zip(gathered, counts, strict=True)])
