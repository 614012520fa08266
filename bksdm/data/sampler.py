"""ResumableSampler: a shuffled epoch order that a resumed run continues exactly, on any number of ranks.

Each epoch's order is a permutation drawn from (seed, epoch) alone, split over ranks like torch's
DistributedSampler (padded by repetition to an equal share). Every item comes with its own sample seed, an
integer from the same permutation generator, that seeds the item's random choices (the flip): nothing
depends on the global RNG or on worker processes, so a run resumed in the middle of an epoch, after
``resume_from(epoch, consumed)``, reads the same samples with the same flips as one that never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)`` pairs: this rank's share of the epoch's order, minus what was consumed.

    ``len()`` is the full share even right after a resume, so that Lightning's progress counters (restored
    from the checkpoint) and the shortened iteration end the epoch together.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if length < 1:
            raise ValueError(f"ResumableSampler needs a non-empty dataset, got length {length}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._resume_epoch, self._consumed = -1, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def resume_from(self, epoch: int, consumed: int) -> None:
        """Skip the first ``consumed`` items of this rank's share of ``epoch`` (only that epoch)."""
        self._resume_epoch, self._consumed = epoch, consumed

    def __len__(self) -> int:
        return math.ceil(self.length / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = (
            torch.randperm(self.length, generator=generator) if self.shuffle else torch.arange(self.length)
        )
        sample_seeds = torch.randint(0, 2**62, (self.length,), generator=generator)
        share = len(self) * self.world_size
        order = order.repeat(math.ceil(share / self.length))[:share]  # pad by repetition, as DDP does
        mine = order[self.rank :: self.world_size].tolist()
        skip = self._consumed if self.epoch == self._resume_epoch else 0
        for index in mine[skip:]:
            yield index, int(sample_seeds[index])


def item_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """``(index, sample_seed)`` from a sampler key: an index alone (plain samplers: no seed, the global RNGs
    decide) or ``(index, sample_seed)`` from ResumableSampler. A dataset seeds the item's own random choices
    with the seed and returns it as the sample's ``sample_seed``, which seeds its noise in training
    (``bksdm.distill.randomness``)."""
    if isinstance(key, tuple):
        return key
    return key, None


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning keeps in its checkpoints (Lightning's ``_Stateful`` loaders).

    Lightning saves ``state_dict()`` of every train loader that has one, at checkpoint time, and hands
    it to ``load_state_dict`` of the new loader on resume, before iterating. The position comes from
    ``position()``: (epoch, batches trained in it, global step) as Lightning's loop counts them, not the
    batches this loader has produced, which run ahead of training by the prefetched ones.

    Over a ResumableSampler the resumed epoch continues exactly. Over a stream that has
    ``resume_at(step)`` (resampled shards), the stream is reseeded so that it does not replay the
    order it started with.
    """

    position: Callable[[], tuple[int, int, int]] | None = None

    def state_dict(self) -> dict:
        if self.position is None:
            return {}
        epoch, batches, global_step = self.position()
        return {"epoch": epoch, "samples": batches * self.batch_size, "global_step": global_step}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if isinstance(self.sampler, ResumableSampler):
            self.sampler.resume_from(state["epoch"], state["samples"])
        elif hasattr(self.dataset, "resume_at"):
            self.dataset.resume_at(state["global_step"])
