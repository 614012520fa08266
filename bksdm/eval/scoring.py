"""Scoring generated images: the paper's 256 px resize, features in batches, cached real statistics."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bksdm.eval.metric_states import CMMD, FID, CLIPScore, InceptionScore, paired_cosines
from bksdm.eval.metrics import FeatureStats
from bksdm.eval.ranks import contiguous_share, gather_rows, is_rank_zero, rank_and_size
from bksdm.training.host_sync import distributed, host_group, ranks_agree

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_scored(paths: Sequence[str | Path], size: int = 256) -> torch.Tensor:
    """uint8 images (N, 3, size, size): RGB, resized with PIL's antialiased bicubic filter, no crop."""
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def batches(items: Sequence, batch_size: int, progress: str | None = None):
    """``items`` in slices of ``batch_size``; ``progress``: a bar of that name, counting items, with its
    total, rate and time left (None: no bar, e.g. inside training, whose own bar is shown)."""
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=progress, unit="image")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]
        if bar is not None:
            bar.update(min(batch_size, len(items) - start))
    if bar is not None:
        bar.close()


class ImageScores:
    """FID against ``real``, IS and CLIP score of generated images, fed batch by batch: one extractor pass
    feeds FID and IS, and ``compute`` sums (or gathers) the states of every rank (torchmetrics, over a CPU
    process group, where the states live), so each rank feeds only its own images, with their indices in
    the prompt set. ``is_splits=None``: no IS (PeriodicEval's few hundred images)."""

    def __init__(
        self, extractor, clip_model, real: FeatureStats, is_splits: int | None = 10,
        real_embeddings: torch.Tensor | None = None, dinov2=None, real_dinov2: FeatureStats | None = None,
    ):  # fmt: skip
        self.extractor, self.clip_model = extractor, clip_model
        group = {"process_group": host_group()} if distributed() else {}
        self.fid = FID(extractor, num_features=real.mean.shape[0], **group)
        self.fid.load_real(real)
        self.inception_score = InceptionScore(is_splits, **group) if is_splits else None
        self.clip = CLIPScore(**group)
        self.cmmd = None  # with the real images' CLIP embeddings: CMMD on the CLIP scorer's embeddings
        if real_embeddings is not None:
            self.cmmd = CMMD(**group)
            self.cmmd.load_real(real_embeddings)
        self.dinov2, self.fd_dinov2 = dinov2, None  # with a DINOv2 network: FD-DINOv2 against real_dinov2
        if dinov2 is not None:
            self.fd_dinov2 = FID(dinov2, num_features=real_dinov2.mean.shape[0], **group)
            self.fd_dinov2.load_real(real_dinov2)

    def update(self, images: torch.Tensor, captions: Sequence[str], indices: Sequence[int]) -> torch.Tensor:
        """uint8 images (B, 3, S, S) at the scoring size, their captions and prompt indices; returns each
        image's CLIP score (B,), e.g. for a table of samples."""
        features, logits = self.extractor(images)
        self.fid.update(features=features, real=False)
        if self.inception_score is not None:
            self.inception_score.update(logits, torch.as_tensor(list(indices)))
        image_embeddings = self.clip_model.embed_images(images)
        text_embeddings = self.clip_model.embed_texts(list(captions))
        self.clip.update(image_embeddings, text_embeddings)
        if self.cmmd is not None:
            self.cmmd.update(image_embeddings)
        if self.fd_dinov2 is not None:
            self.fd_dinov2.update(features=self.dinov2(images)[0], real=False)
        return paired_cosines(image_embeddings, text_embeddings).cpu()

    def compute(self) -> dict[str, float]:
        scores = {"fid": float(self.fid.compute()), "clip": float(self.clip.compute())}
        if self.inception_score is not None:
            is_mean, is_std = self.inception_score.compute()
            scores.update({"is": float(is_mean), "is_std": float(is_std)})
        if self.cmmd is not None:
            scores["cmmd"] = float(self.cmmd.compute())
        if self.fd_dinov2 is not None:
            scores["fd_dinov2"] = float(self.fd_dinov2.compute())
        return scores

    def reset(self) -> None:
        """For the next evaluation: the generated side goes, the real statistics stay."""
        for metric in filter(None, (self.fid, self.inception_score, self.clip, self.cmmd, self.fd_dinov2)):
            metric.reset()


def real_image_files(folder: str | Path) -> list[Path]:
    """The images of the real-image folder, checked: it exists and holds at least 2."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"real-image folder {str(folder)!r} does not exist (e.g. COCO's val2014/)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"real-image folder {str(folder)!r} holds {len(files)} images: FID needs at least 2")
    return files


def listing_fingerprint(folder: Path, files: Sequence[Path]) -> str:
    """What the cache of a folder's statistics is keyed by: every file's path, size and modification time
    (a file replaced, added or removed changes it; reading 40K images to hash them would not pay)."""
    listing = hashlib.sha1()
    for file in files:
        stat = file.stat()
        listing.update(f"{file.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return listing.hexdigest()


def real_cache_file(
    cache_dir: str | Path | None,
    kind: str,
    model: str,
    size: int,
    folder: Path,
    files: Sequence[Path],
    suffix: str,
) -> Path | None:
    """Where what ``model`` made of ``folder``'s images at ``size`` px is cached (None: no cache), keyed
    by the folder, its content (``listing_fingerprint``), the model and the size."""
    if not cache_dir:
        return None
    key = hashlib.sha1(f"{folder.resolve()}|{listing_fingerprint(folder, files)}|{model}|{size}".encode())
    return Path(cache_dir) / f"{kind}-{model}-{size}-{key.hexdigest()[:16]}{suffix}"


def real_statistics(
    folder: str | Path,
    extractor,
    size: int = 256,
    cache_dir: str | Path | None = None,
    batch_size: int = 50,
    progress: bool = False,
    split_over_ranks: bool = False,
) -> FeatureStats:
    """Feature statistics of every image in ``folder`` (e.g. all 40,504 COCO val2014 images), computed
    once and cached under ``cache_dir`` by folder, its content (``listing_fingerprint``), extractor and
    size. ``split_over_ranks``: called by every rank of a distributed world, each extracting the features
    of its share of the images (summed across ranks; rank 0 writes the cache)."""
    folder = Path(folder)
    files = real_image_files(folder)
    cache = real_cache_file(cache_dir, "real", extractor.name, size, folder, files, ".npz")
    if _cached(cache, split_over_ranks):
        return FeatureStats.load(cache)
    share = _share(files, split_over_ranks)
    bar = f"real-image statistics of {folder}" if progress and is_rank_zero() else None
    group = {"process_group": host_group()} if split_over_ranks and distributed() else {}
    metric = None  # sums of features and of their products (40,504 COCO images: not all in memory)
    for batch in batches(share, batch_size, bar):
        features = extractor(load_scored(batch, size))[0]
        metric = metric or FID(extractor, num_features=features.shape[1], **group)
        metric.update(features=features, real=True)
    with metric.sync_context(should_sync=bool(group)):
        stats = metric.statistics(real=True)
    if cache is not None and is_rank_zero():
        stats.save(cache, folder=str(folder.resolve()), extractor=extractor.name)
    return stats


def _cached(cache: Path | None, split_over_ranks: bool) -> bool:
    """The cache file is there (for a split computation: on every rank, which all then read it)."""
    present = cache is not None and cache.is_file()
    return ranks_agree(present) if split_over_ranks else present


def _share(files: list[Path], split_over_ranks: bool) -> list[Path]:
    """This rank's files, in a row: gathered in rank order, every rank's are the files in order."""
    if not split_over_ranks:
        return files
    if len(files) < rank_and_size()[1]:  # on every rank alike: none is left waiting for the others
        raise ValueError(f"{len(files)} real images cannot be split over {rank_and_size()[1]} ranks")
    share = contiguous_share(len(files))
    return files[share.start : share.stop]


def real_embeddings(
    folder: str | Path,
    clip_model,
    size: int = 256,
    cache_dir: str | Path | None = None,
    batch_size: int = 50,
    progress: bool = False,
    split_over_ranks: bool = False,
) -> torch.Tensor:
    """The CLIP image embeddings (N, E) of every image in ``folder``, for CMMD; cached under ``cache_dir``
    as ``real_statistics`` is (by folder, content, model and size), and split over ranks as it is."""
    folder = Path(folder)
    files = real_image_files(folder)
    cache = real_cache_file(cache_dir, "embeddings", clip_model.name, size, folder, files, ".npy")
    if _cached(cache, split_over_ranks):
        return torch.from_numpy(np.load(cache))
    bar = f"real-image CLIP embeddings of {folder}" if progress and is_rank_zero() else None
    embeddings = torch.cat(
        [
            clip_model.embed_images(load_scored(batch, size)).double().cpu()
            for batch in batches(_share(files, split_over_ranks), batch_size, bar)
        ]
    )
    if split_over_ranks:
        embeddings = gather_rows(embeddings)
    if cache is not None and is_rank_zero():
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = cache.with_name(f".{cache.name}.partial.npy")
        np.save(staging, embeddings.numpy())
        staging.replace(cache)
    return embeddings


def score_images(
    paths: Sequence[str | Path],
    captions: Sequence[str],
    extractor,
    clip_model,
    real: FeatureStats,
    size: int = 256,
    is_splits: int = 10,
    batch_size: int = 50,
    progress: bool = False,
    per_image: str | Path | None = None,
    real_clip_embeddings: torch.Tensor | None = None,
    dinov2=None,
    real_dinov2: FeatureStats | None = None,
    indices: Sequence[int] | None = None,
) -> dict:
    """FID against ``real``, IS (mean and std over splits) and CLIP score of generated images (the
    ``i``-th image drawn from ``captions[i]``). ``per_image``: a csv to write each image's CLIP score to
    (``index,image,caption,clip``), for finding the captions a model gets wrong. With
    ``real_clip_embeddings`` (``real_embeddings``), CMMD too; with a ``dinov2`` network and the real
    images' statistics under it, FD-DINOv2. ``indices``: the images this rank scores, every rank of a
    distributed world its own (the scores are of all of them; rank 0 writes ``per_image``); None: all."""
    scores = ImageScores(extractor, clip_model, real, is_splits, real_clip_embeddings, dinov2, real_dinov2)
    indices = list(range(len(paths)) if indices is None else indices)
    clip_scores = []
    bar = "scoring" if progress and is_rank_zero() else None
    for batch in batches(indices, batch_size, bar):
        images = load_scored([paths[i] for i in batch], size)
        clip_scores += scores.update(images, [captions[i] for i in batch], batch).tolist()
    if per_image is not None:
        rows = gather_rows(torch.tensor([indices, clip_scores], dtype=torch.float64).T)
        order = rows[:, 0].argsort()
        if is_rank_zero():
            write_per_image(per_image, paths, captions, rows[order, 1].tolist())
    return scores.compute()


def write_per_image(
    path: str | Path, paths: Sequence[str | Path], captions: Sequence[str], clip_scores
) -> None:
    import csv
    import io

    from bksdm.training.atomic import write_file_atomically

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["index", "image", "caption", "clip"])
    for index, (image, caption, clip) in enumerate(zip(paths, captions, clip_scores, strict=True)):
        writer.writerow([index, Path(image).name, caption, f"{clip:.6f}"])
    write_file_atomically(Path(path), text.getvalue())
