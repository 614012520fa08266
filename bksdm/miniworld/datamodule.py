"""``data=miniworld``: a mini world as a training data source."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset

from bksdm.data.datamodule import CaptionDataModule
from bksdm.miniworld.worlds import world_kind


class MiniWorldDataModule(CaptionDataModule):
    """``data=miniworld``: a mini world's captioned pictures, drawn from their index: ``world`` "single"
    (``bksdm.miniworld.world``, one shape) or "scenes" (``bksdm.miniworld.scenes``, one object or two in a
    relation). ``world_seed`` picks the world's items (``offset``: from which one; another offset gives a
    disjoint, held-out set; ``split``: the relational world's "held_out" split holds only the colour-shape
    bindings its "train" split never pairs), ``seed`` the order and per-sample noise of training."""

    mirror_safe = False  # the captions name left and right

    def __init__(
        self,
        num_samples: int = 100_000,
        resolution: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        world_seed: int = 0,
        offset: int = 0,
        world: str = "single",
        split: str = "train",
    ):
        super().__init__(batch_size, num_workers, seed)
        self.num_samples, self.resolution = num_samples, resolution
        self.world_seed, self.offset = world_seed, offset
        self.kind, self.split = world_kind(world), split
        self.build_dataset()  # a split the world has not is named now, before any model loads

    def build_dataset(self) -> Dataset:
        return self.kind.items(self.num_samples, self.world_seed, self.offset, self.split, self.resolution)

    def shard_items(self) -> Iterator[tuple[str, bytes, str, str]]:
        return self.build_dataset().shard_items()

    @property
    def num_items(self) -> int:
        return self.num_samples
