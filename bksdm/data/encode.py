"""Writing shards: image folders to img2dataset-style shards, and pre-encoded latent shards.

A latent shard sample holds the teacher VAE's latent *distribution* (mean and std, so training still
samples, as on the fly) of the center-cropped image and of its mirror image (so random flipping keeps its
meaning: a flipped sample is the encoding of the flipped image, not a flipped latent), the caption, and
optionally the text encoder's output. Its ``json`` member records what made it (teacher source and
revision, resolution, crop, scaling factor); training checks that against its teacher.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from bksdm.data.folder import read_sample
from bksdm.data.skips import SKIP_KINDS, describe_skips, is_skip
from bksdm.data.transforms import ImageTransform, open_image

LATENT_FORMAT = 1


@dataclass
class WriteReport:
    """What a shard writer did: samples written, skipped by kind, shards, seconds."""

    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return (self.written + sum(self.skipped.values())) / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        counts = [self.skipped.get(kind, 0) for kind in SKIP_KINDS]
        return (
            f"{self.written} samples in {len(self.shards)} shard{'s' * (len(self.shards) != 1)}, {describe_skips(counts)}, "
            f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
        )


def _writer(out: Path, shard_size: int) -> wds.ShardWriter:
    out.mkdir(parents=True, exist_ok=True)
    return wds.ShardWriter(str(out / "%05d.tar"), maxcount=shard_size, verbose=0)


def folder_items(
    listing: Sequence[tuple[Path, str]], min_size: int = 0
) -> Iterator[tuple[str, bytes, str, str] | dict]:
    """(key, encoded image bytes, caption, extension) per usable image of a folder's listing (from
    ``list_captioned_images``), else a skip marker; images are read lazily."""

    def items() -> Iterator[tuple[str, bytes, str, str] | dict]:
        for index, (path, caption) in enumerate(listing):
            sample = read_sample(path, caption, min_size)
            if isinstance(sample, dict):
                yield sample
            else:
                data, _, caption = sample
                yield f"{index:09d}", data, caption, path.suffix.lower().lstrip(".").replace("jpeg", "jpg")

    return items()


def write_image_shards(
    items: Iterable[tuple[str, bytes, str, str] | dict], out: str | Path, shard_size: int = 1000
) -> WriteReport:
    """Write (key, image bytes, caption, extension) items, e.g. ``folder_items``, into shards (image bytes
    unchanged, ``.txt`` caption, ``.json``)."""
    report, start = WriteReport(), time.perf_counter()
    with _writer(Path(out), shard_size) as sink:
        for item in items:
            if is_skip(item):
                report.skipped[item["skipped"]] += 1
                continue
            key, data, caption, ext = item
            sink.write({"__key__": key, ext: data, "txt": caption, "json": json.dumps({"key": key})})
            report.written += 1
    report.seconds = time.perf_counter() - start
    report.shards = sorted(str(p) for p in Path(out).glob("*.tar"))
    return report


def _npy(array: torch.Tensor, dtype: np.dtype) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.detach().cpu().float().numpy().astype(dtype))
    return buffer.getvalue()


def encoder_record(
    source: str,
    revision: str | None,
    resolution: int,
    scaling_factor: float,
    text_embeddings: bool,
    mirrored: bool = True,
) -> dict:
    """What made a latent shard; training compares it with its own teacher (and ``mirrored``, whether the
    mirror images were encoded too, with its ``random_flip``)."""
    return {
        "format": LATENT_FORMAT,
        "teacher": source,
        "revision": revision,
        "resolution": resolution,
        "crop": "center",
        "scaling_factor": scaling_factor,
        "text_embeddings": text_embeddings,
        "mirrored": mirrored,
    }


@torch.no_grad()
def write_latent_shards(
    items: Iterable[tuple[str, bytes, str, str] | dict],
    out: str | Path,
    vae,
    record: dict,
    tokenizer=None,
    text_encoder=None,
    batch_size: int = 16,
    shard_size: int = 1000,
    latent_dtype: str = "float16",
) -> WriteReport:
    """Encode (key, image bytes, caption, extension) items with the teacher's VAE (and text encoder) into shards.

    Each sample: ``mean.npy``/``std.npy`` (4, h, w) of the center crop, ``mean_flip.npy``/``std_flip.npy``
    of its mirror (when ``record["mirrored"]``), ``txt``, optionally ``emb.npy`` (77, D), and ``json`` =
    ``record``.
    """
    transform = ImageTransform(record["resolution"], center_crop=True, random_flip=False)
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    report, start = WriteReport(), time.perf_counter()
    store = np.float16 if latent_dtype == "float16" else np.float32

    def flush(batch: list, sink: wds.ShardWriter) -> None:
        pixels = torch.stack([pixels for _, pixels, _ in batch]).to(device, dtype)
        mirrored = record.get("mirrored", True)
        both = vae.encode(torch.cat([pixels, pixels.flip(-1)]) if mirrored else pixels).latent_dist
        n = len(batch)
        embeddings = None
        if text_encoder is not None:
            ids = tokenizer(
                [caption for _, _, caption in batch],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            embeddings = text_encoder(ids)[0]
        for i, (key, _, caption) in enumerate(batch):
            sample = {
                "__key__": key,
                "mean.npy": _npy(both.mean[i], store),
                "std.npy": _npy(both.std[i], store),
                "txt": caption,
                "json": json.dumps(record),
            }
            if mirrored:
                sample["mean_flip.npy"] = _npy(both.mean[n + i], store)
                sample["std_flip.npy"] = _npy(both.std[n + i], store)
            if embeddings is not None:
                sample["emb.npy"] = _npy(embeddings[i], store)
            sink.write(sample)
        report.written += n
        batch.clear()

    with _writer(Path(out), shard_size) as sink:
        pending: list = []
        for item in items:
            if is_skip(item):
                report.skipped[item["skipped"]] += 1
                continue
            key, data, caption, _ = item
            pending.append((key, transform(open_image(data)), caption))
            if len(pending) == batch_size:
                flush(pending, sink)
        if pending:
            flush(pending, sink)
    report.seconds = time.perf_counter() - start
    report.shards = sorted(str(p) for p in Path(out).glob("*.tar"))
    return report
