"""Writing shards: image folders to img2dataset-style shards, and pre-encoded latent shards.

A latent shard sample holds the teacher VAE's latent *distribution* (mean and std, so training still
samples, as on the fly) of the center-cropped image and of its mirror image (so random flipping keeps its
meaning: a flipped sample is the encoding of the flipped image, not a flipped latent), the caption, where
the crop came from (SDXL is conditioned on it), and optionally the text encoder's output (for SDXL both
towers' context and the pooled embedding). Its ``json`` member records what made it (teacher source and
revision, resolution, crop, scaling factor); training checks that against its teacher.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from bksdm.data.folder import read_sample
from bksdm.data.skips import SKIP_KINDS, describe_skips, is_skip
from bksdm.data.transforms import ImageTransform, open_image
from bksdm.teachers.conditioning import Conditioning

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
    vae_source: str | None = None,
) -> dict:
    """What made a latent shard; training compares it with its own teacher (and ``mirrored``, whether the
    mirror images were encoded too, with its ``random_flip``; ``vae``, only when the VAE was not the
    teacher's, where it came from)."""
    record = {
        "format": LATENT_FORMAT,
        "teacher": source,
        "revision": revision,
        "resolution": resolution,
        "crop": "center",
        "scaling_factor": scaling_factor,
        "text_embeddings": text_embeddings,
        "mirrored": mirrored,
    }
    if vae_source is not None:
        record["vae"] = vae_source
    return record


def unmasked_tokens(text: Conditioning, i: int) -> torch.Tensor:
    """The context of caption ``i`` (T, D), or where it is masked (PixArt) its unmasked tokens (n, D): T5's
    tokenizer pads on the right, so those are the first n, and ``decode_latent_sample`` pads them back."""
    if text.mask is None:
        return text.context[i]
    kept = int(text.mask[i].sum())
    if not bool(text.mask[i, :kept].all()):
        raise ValueError(f"caption {i}'s text mask {text.mask[i].tolist()} is not a run of ones then zeros")
    return text.context[i, :kept]


@torch.no_grad()
def write_latent_shards(
    items: Iterable[tuple[str, bytes, str, str] | dict],
    out: str | Path,
    vae,
    record: dict,
    encode_text: Callable[[list[str]], Conditioning] | None = None,
    batch_size: int = 16,
    shard_size: int = 1000,
    latent_dtype: str = "float16",
) -> WriteReport:
    """Encode (key, image bytes, caption, extension) items with the teacher's VAE (and with
    ``encode_text``, the teacher's captions -> ``Conditioning``, e.g. ``conditioning.encode_text`` bound to
    its towers; None: no text embeddings) into shards.

    Each sample: ``mean.npy``/``std.npy`` (C, h, w) of the center crop, ``mean_flip.npy``/``std_flip.npy``
    of its mirror (when ``record["mirrored"]``), ``txt``, ``size.json`` (``original_size`` and
    ``crop_top_left``, and ``crop_top_left_flip`` of the mirror, as ``ImageTransform.sample`` gives them),
    optionally ``emb.npy`` (T, D) (a masked context: its unmasked tokens only, (n, D)) and ``pooled.npy``
    (P,), and ``json`` = ``record``, to which text embeddings add ``text_tokens`` (T) and ``text_masked``.
    """
    transform = ImageTransform(record["resolution"], center_crop=True, random_flip=False)
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    mirrored = record.get("mirrored", True)
    report, start = WriteReport(), time.perf_counter()
    store = np.float16 if latent_dtype == "float16" else np.float32
    record = dict(record)

    def flush(batch: list, sink: wds.ShardWriter) -> None:
        crops = [crop for _, image_crops, _ in batch for crop in image_crops[:1]]
        crops += [crop for _, image_crops, _ in batch for crop in image_crops[1:]]  # the mirrors after
        pixels = torch.stack([crop["pixel_values"] for crop in crops]).to(device, dtype)
        both = vae.encode(pixels).latent_dist
        n = len(batch)
        text = encode_text([caption for *_, caption in batch]) if encode_text is not None else None
        if text is not None:  # what a reader needs to rebuild the batch: written with the first sample
            record.update(text_tokens=text.context.shape[1], text_masked=text.mask is not None)
        for i, (key, (crop, *mirror), caption) in enumerate(batch):
            sizes = {
                "original_size": crop["original_size"].tolist(),
                "crop_top_left": crop["crop_top_left"].tolist(),
            }
            if mirror:
                sizes["crop_top_left_flip"] = mirror[0]["crop_top_left"].tolist()
            sample = {
                "__key__": key,
                "mean.npy": _npy(both.mean[i], store),
                "std.npy": _npy(both.std[i], store),
                "txt": caption,
                "size.json": json.dumps(sizes),
                "json": json.dumps(record),
            }
            if mirrored:
                sample["mean_flip.npy"] = _npy(both.mean[n + i], store)
                sample["std_flip.npy"] = _npy(both.std[n + i], store)
            if text is not None:
                sample["emb.npy"] = _npy(unmasked_tokens(text, i), store)
            if text is not None and text.pooled is not None:
                sample["pooled.npy"] = _npy(text.pooled[i], store)
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
            image = open_image(data)
            mirror = [transform.sample(image, flip=True)] if mirrored else []
            pending.append((key, [transform.sample(image, flip=False), *mirror], caption))
            if len(pending) == batch_size:
                flush(pending, sink)
        if pending:
            flush(pending, sink)
    report.seconds = time.perf_counter() - start
    report.shards = sorted(str(p) for p in Path(out).glob("*.tar"))
    return report
