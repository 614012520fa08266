"""LightningDataModules around the datasets: batching, workers, shuffling."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from bksdm.data.folder import CaptionedImageFolder, metadata_path
from bksdm.data.synthetic import SyntheticCaptions


class CaptionDataModule(L.LightningDataModule):
    """Serves one captioned-image dataset for training; subclasses say how the dataset is built."""

    def __init__(self, batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size!r} must be >= 1")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.dataset: Dataset | None = None

    def build_dataset(self) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = self.build_dataset()

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self.dataset) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed),
        )


class SyntheticDataModule(CaptionDataModule):
    """``data=synthetic``: coloured shapes with captions, generated in code (offline demo and tests)."""

    def __init__(
        self,
        num_samples: int = 512,
        resolution: int = 128,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        self.num_samples, self.resolution = num_samples, resolution

    def build_dataset(self) -> Dataset:
        return SyntheticCaptions(self.num_samples, self.resolution, self.seed)


class FolderDataModule(CaptionDataModule):
    """``data=laion_folder``: the reference layout, images plus ``metadata.csv`` (file_name,text)."""

    def __init__(
        self,
        root: str,
        resolution: int = 512,
        batch_size: int = 64,
        num_workers: int = 4,
        center_crop: bool = True,
        random_flip: bool = True,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        metadata_path(root)  # a wrong path stops the run before the teacher is loaded
        self.root, self.resolution = root, resolution
        self.center_crop, self.random_flip = center_crop, random_flip

    def build_dataset(self) -> Dataset:
        return CaptionedImageFolder(self.root, self.resolution, self.center_crop, self.random_flip)
