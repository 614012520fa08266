"""``data=miniworld``: the mini world as a training data source."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset

from bksdm.data.datamodule import CaptionDataModule
from bksdm.miniworld.world import MiniWorld


class MiniWorldDataModule(CaptionDataModule):
    """``data=miniworld``: the mini world's captioned shapes (``bksdm.miniworld.world``), drawn from their
    index. ``world_seed`` picks the world's items (``offset``: from which one; another offset gives a
    disjoint, held-out set), ``seed`` the order and per-sample noise of training."""

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
    ):
        super().__init__(batch_size, num_workers, seed)
        self.num_samples, self.resolution = num_samples, resolution
        self.world_seed, self.offset = world_seed, offset

    def build_dataset(self) -> Dataset:
        return MiniWorld(self.num_samples, self.resolution, self.world_seed, self.offset)

    def shard_items(self) -> Iterator[tuple[str, bytes, str, str]]:
        return self.build_dataset().shard_items()

    @property
    def num_items(self) -> int:
        return self.num_samples
