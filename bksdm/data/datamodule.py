"""LightningDataModules around the datasets: batching, workers, shuffling."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from bksdm.data.folder import CaptionedImageFolder
from bksdm.data.sampler import ResumableLoader, ResumableSampler
from bksdm.data.shards import ShardStream, decode_latent_sample, decode_sample, expand_shards, first_record
from bksdm.data.skips import SkipTally, collate_skipping
from bksdm.data.synthetic import SyntheticCaptions
from bksdm.data.transforms import ImageTransform


class CaptionDataModule(L.LightningDataModule):
    """Serves one captioned-image dataset for training; subclasses say how the dataset is built.

    ``source`` names the data in messages (``data.root=...``); ``max_consecutive_bad``: that many
    unusable samples in a row stop the run (see ``bksdm.data.skips``).
    """

    source = "the data source"

    def __init__(self, batch_size: int, num_workers: int = 0, seed: int = 0, max_consecutive_bad: int = 256):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size!r} must be >= 1")
        if max_consecutive_bad < 1:
            raise ValueError(f"data.max_consecutive_bad={max_consecutive_bad!r} must be >= 1")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.max_consecutive_bad = max_consecutive_bad
        self.dataset: Dataset | None = None
        self._skips: SkipTally | None = None

    @property
    def skips(self) -> SkipTally:
        """Bad samples seen in training, counted from the collated batches (see ``bksdm.data.skips``)."""
        if self._skips is None:  # made on first use: ``source`` is set by the subclass's constructor
            self._skips = SkipTally(self.source, self.max_consecutive_bad)
        return self._skips

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Counts the batch's skipped samples and hands the per-sample seeds over as a list: both stay on
        the host, so the step never syncs the device to read them."""
        if isinstance(batch, dict) and "skipped" in batch:
            self.skips.add(batch.pop("skipped"), good=len(batch.get("caption", ())))
        if isinstance(batch, dict) and "sample_seed" in batch:
            batch["sample_seed"] = batch["sample_seed"].tolist()
        return batch

    # whether a mirrored image still matches its caption (random_flip, mirrored latents)
    mirror_safe = True

    def build_dataset(self) -> Dataset:
        raise NotImplementedError

    def shard_items(self) -> Iterator[tuple[str, bytes, str, str] | dict]:
        """(key, encoded image bytes, caption, extension) per item, or a skip marker: what
        ``python -m bksdm.prepare`` writes to shards (``num_items`` of them). Sources that are shards
        already have none."""
        raise ValueError(
            f"data._target_='{type(self).__module__}.{type(self).__qualname__}' cannot be written to shards: "
            "prepare reads image folders (data=laion_folder) and the mini world (data=miniworld)"
        )

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = self.build_dataset()

    def train_dataloader(self) -> DataLoader:
        """This rank's share of a fresh shuffled order every epoch, resumable mid-epoch (see
        ``bksdm.data.sampler``); a Trainer needs ``use_distributed_sampler=False`` to keep it."""
        self.setup()
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = ResumableSampler(len(self.dataset), self.seed, rank=rank, world_size=world_size)
        loader = self.loader(
            ResumableLoader,
            sampler=sampler,
            drop_last=len(sampler) >= self.batch_size,
            # its own generator: making the iterator must not draw from the global RNG that a resumed run
            # restores (the noise of the next step comes from it)
            generator=torch.Generator().manual_seed(self.seed),
        )
        return self.trainer_position(loader)

    def trainer_position(self, loader: ResumableLoader) -> ResumableLoader:
        trainer = self.trainer
        if trainer is not None:  # read at checkpoint time
            loader.position = lambda: (
                trainer.current_epoch,
                trainer.fit_loop.epoch_loop.batch_progress.current.processed,
                trainer.global_step,
            )
        return loader

    def loader(self, loader_class: type[DataLoader] = DataLoader, **options) -> DataLoader:
        """A DataLoader over the dataset that drops and counts skip markers (see ``bksdm.data.skips``)."""
        return loader_class(
            self.dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_skipping,
            **options,
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
    """``data=laion_folder``: images plus ``metadata.csv`` (file_name,text) or per-image ``.txt`` captions.
    Images whose shorter side is below ``min_size`` pixels are skipped."""

    def __init__(
        self,
        root: str,
        resolution: int = 512,
        batch_size: int = 64,
        num_workers: int = 4,
        center_crop: bool = True,
        random_flip: bool = True,
        min_size: int = 0,
        seed: int = 0,
        max_consecutive_bad: int = 256,
    ):
        super().__init__(batch_size, num_workers, seed, max_consecutive_bad)
        self.source = f"data.root={root}"
        self.root, self.resolution, self.min_size = root, resolution, min_size
        self.center_crop, self.random_flip = center_crop, random_flip
        self.dataset = self.build_dataset()  # a wrong path stops the run before the teacher is loaded

    def build_dataset(self) -> Dataset:
        return CaptionedImageFolder(
            self.root, self.resolution, self.center_crop, self.random_flip, self.min_size
        )

    def shard_items(self) -> Iterator[tuple[str, bytes, str, str] | dict]:
        from bksdm.data.encode import folder_items

        return folder_items(self.dataset.items, self.min_size)

    @property
    def num_items(self) -> int:
        return len(self.dataset.items)


class ShardDataModule(CaptionDataModule):
    """``data=webdataset``: img2dataset shards (image + .txt [+ .json]) from paths, ``pipe:`` or http URLs.

    Training draws resampled shards per (rank, worker) stream; ``epoch_samples`` fixes an epoch's length
    over all ranks. ``resampled=False`` splits the shard list by rank and worker instead (exact passes).
    """

    def __init__(
        self,
        urls: str | list[str],
        resolution: int = 512,
        batch_size: int = 64,
        num_workers: int = 4,
        epoch_samples: int | None = None,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        center_crop: bool = True,
        random_flip: bool = True,
        min_size: int = 0,
        seed: int = 0,
        max_consecutive_bad: int = 256,
    ):
        super().__init__(batch_size, num_workers, seed, max_consecutive_bad)
        self.urls = expand_shards(urls if isinstance(urls, str) else list(urls))  # missing shards stop here
        count = f"{len(self.urls)} shard" + "s" * (len(self.urls) != 1)
        self.source = f"data.urls={urls if isinstance(urls, str) else list(urls)} ({count})"
        rank_zero_info(f"data     {count} from data.urls: {self.urls[0]} ... {self.urls[-1]}")
        self.epoch_samples, self.resampled, self.shuffle_buffer = epoch_samples, resampled, shuffle_buffer
        self.transform = ImageTransform(resolution, center_crop=center_crop, random_flip=random_flip)
        self.min_size = min_size

    def decoder(self):
        """raw webdataset sample -> training sample or skip marker."""
        return functools.partial(decode_sample, transform=self.transform, min_size=self.min_size)

    def build_dataset(self) -> Dataset:
        trainer = getattr(self, "trainer", None)
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return ShardStream(
            epoch_samples=self.epoch_samples,
            urls=self.urls,
            decode=self.decoder(),
            resampled=self.resampled,
            rank=rank,
            world_size=world_size,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self.trainer_position(self.loader(ResumableLoader))  # the stream shuffles itself


class LatentDataModule(ShardDataModule):
    """``data=latents``: shards pre-encoded by ``python -m bksdm.prepare mode=latents``.

    Training needs no VAE (and no text encoder when the shards hold text embeddings): ``pre_encoded`` tells
    the module what it may leave unloaded. The shards' record must match the teacher being trained
    (source, revision, resolution, and the VAE's source when it is not the teacher's), else the run stops
    before loading it.
    """

    def __init__(
        self,
        urls: str | list[str],
        teacher: str,
        revision: str | None = None,
        resolution: int = 512,
        batch_size: int = 64,
        num_workers: int = 4,
        epoch_samples: int | None = None,
        resampled: bool = True,
        shuffle_buffer: int = 1000,
        random_flip: bool = True,
        seed: int = 0,
        max_consecutive_bad: int = 256,
        vae_source: str | None = None,
    ):
        super().__init__(
            urls, resolution, batch_size, num_workers, epoch_samples, resampled, shuffle_buffer,
            random_flip=random_flip, seed=seed, max_consecutive_bad=max_consecutive_bad,
        )  # fmt: skip
        self.record = first_record(self.urls)
        expected = {"teacher": teacher, "revision": revision, "resolution": resolution}
        if vae_source is not None or self.record.get("vae") is not None:
            expected["vae"] = vae_source
        found = {key: self.record.get(key) for key in expected}
        if found != expected:
            raise ValueError(
                f"the pre-encoded shards at data.urls were made with {found}, but this run trains with "
                f"{expected}: re-encode them with `python -m bksdm.prepare mode=latents` for this teacher"
            )
        if random_flip and not self.record.get("mirrored", True):
            raise ValueError(
                "data.random_flip=true, but the shards at data.urls hold no mirror-image encodings (written "
                "with mirrored=false): set data.random_flip=false or re-encode them with mirrored=true"
            )
        self.random_flip = random_flip
        self.pre_encoded = {"latents"} | ({"text_embeds"} if self.record.get("text_embeddings") else set())

    def decoder(self):
        masked = self.record.get("text_masked") and self.record.get("text_tokens")
        return functools.partial(
            decode_latent_sample, random_flip=self.random_flip, masked_text_tokens=masked or None
        )
