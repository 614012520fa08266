"""Scoring generated images: the paper's 256 px resize, features in batches, cached real statistics."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bksdm.eval.metrics import FeatureStats, clip_score, frechet_distance, inception_score

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


def image_features(
    paths: Sequence[str | Path], extractor, size: int = 256, batch_size: int = 50, progress: str | None = None
):
    """(pool features (N, D), logits (N, C)) of images, ``batch_size`` at a time."""
    features, logits = [], []
    for batch in batches(paths, batch_size, progress):
        batch_features, batch_logits = extractor(load_scored(batch, size))
        features.append(batch_features.double().cpu())
        logits.append(batch_logits.double().cpu())
    return torch.cat(features), torch.cat(logits)


def real_image_files(folder: str | Path) -> list[Path]:
    """The images of the real-image folder, checked: it exists and holds at least 2."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"real-image folder {str(folder)!r} does not exist (e.g. COCO's val2014/)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"real-image folder {str(folder)!r} holds {len(files)} images: FID needs at least 2")
    return files


def real_statistics(
    folder: str | Path,
    extractor,
    size: int = 256,
    cache_dir: str | Path | None = None,
    batch_size: int = 50,
    progress: bool = False,
) -> FeatureStats:
    """Feature statistics of every image in ``folder`` (e.g. all 40,504 COCO val2014 images), computed
    once and cached under ``cache_dir`` by folder, file count, extractor and size."""
    folder = Path(folder)
    files = real_image_files(folder)
    key = hashlib.sha1(f"{folder.resolve()}|{len(files)}|{extractor.name}|{size}".encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"real-{extractor.name}-{size}-{key}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        return FeatureStats.load(cache)
    bar = f"real-image statistics of {folder}" if progress else None
    stats = FeatureStats.of(image_features(files, extractor, size, batch_size, bar)[0])
    if cache is not None:
        stats.save(cache, folder=str(folder.resolve()), extractor=extractor.name)
    return stats


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
) -> dict:
    """FID against ``real``, IS (mean and std over splits) and CLIP score of generated images."""
    features, logits = image_features(paths, extractor, size, batch_size, "features" if progress else None)
    is_mean, is_std = inception_score(logits, is_splits)
    bar = "CLIP embeddings" if progress else None
    image_embeddings = torch.cat(
        [clip_model.embed_images(load_scored(batch, size)) for batch in batches(paths, batch_size, bar)]
    )
    text_embeddings = torch.cat(
        [
            clip_model.embed_texts(list(captions[i : i + batch_size]))
            for i in range(0, len(captions), batch_size)
        ]
    )
    return {
        "fid": frechet_distance(FeatureStats.of(features), real),
        "is": is_mean,
        "is_std": is_std,
        "clip": clip_score(image_embeddings, text_embeddings),
    }
