"""Webdataset shards in img2dataset's format: ``<key>.jpg|png|webp`` + ``<key>.txt`` (+ ``<key>.json``).

Shards are given as a brace pattern, a folder, a glob or a list of local paths, ``pipe:`` commands
(``pipe:aws s3 cp s3://bucket/00001.tar -``) or http(s) URLs (``expand_shards``). Training reads *resampled* shards: each (rank, worker) draws
shards at random with replacement from its own seeded stream, so no shard list has to divide evenly and
no node splitter is needed (webdataset's default one raises under DDP). ``resampled=False`` splits the
shard list instead, by rank and then by worker, for exact passes (evaluation, pre-encoding). An epoch is
``epoch_samples`` samples over all ranks and workers.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import random
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import get_worker_info
from webdataset.gopen import Pipe
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from bksdm.data.skips import skip
from bksdm.data.transforms import ImageTransform, open_image

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
REMOTE = ("pipe:", "http://", "https://", "s3://", "gs://", "gcs://", "ais://")
GLOB_CHARACTERS = ("*", "?", "[")


def expand_shards(urls: str | Sequence[str], key: str = "data.urls") -> list[str]:
    """The shard list that ``urls`` names, as users write it:

    - a brace pattern, ``/data/laion/{00000..00212}.tar`` (webdataset's and img2dataset's naming);
    - a folder: every ``.tar`` in it, sorted;
    - a glob, ``/data/laion/*.tar``;
    - ``pipe:`` commands and http(s)/s3 URLs, taken as they are (they cannot be checked here);
    - a list of any of these (or ``::`` between them, webdataset's separator).

    Local shards must exist: every missing one is named, with ``key``, before anything is loaded.
    """
    if not urls:
        raise ValueError(
            f"{key} is empty: give a brace pattern such as shards/{{00000..00099}}.tar, a folder or a list"
        )
    patterns = [urls] if isinstance(urls, str) else [str(u) for u in urls]
    shards, missing = [], []
    for pattern in patterns:
        for url in wds.shardlists.expand_urls(pattern):
            path = Path(url)
            if url.startswith(REMOTE):
                shards.append(url)
            elif path.is_dir():
                found = sorted(str(p) for p in path.glob("*.tar"))
                if not found:
                    raise FileNotFoundError(f"{key}: the folder {url!r} holds no .tar shard")
                shards += found
            elif any(c in url for c in GLOB_CHARACTERS) and not path.exists():
                found = sorted(glob.glob(url))
                if not found:
                    raise FileNotFoundError(f"{key}: the pattern {url!r} matches no file")
                shards += found
            elif path.is_file():
                shards.append(url)
            else:
                missing.append(url)
    if missing:
        raise FileNotFoundError(
            f"{key}={urls!r}: {len(missing)} of {len(missing) + len(shards)} shards do not exist: "
            + ", ".join(missing)
        )
    return shards


def worker_index() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def split_by_rank(rank: int, world_size: int) -> Callable[[Iterator], Iterator]:
    """A node splitter from an explicit rank (not webdataset's, which raises or guesses under DDP)."""

    def split(urls: Iterator) -> Iterator:
        for index, url in enumerate(urls):
            if index % world_size == rank:
                yield url

    return split


def one_shard_samples(
    source: dict, handler: Callable[[Exception], bool] = reraise_exception
) -> Iterator[dict]:
    """The samples of one shard (``source["url"]``: a path or a ``pipe:`` command), grouped by key.

    What ``wds.tarfile_samples`` does, except that the shard's file is closed when its samples end or the
    reader stops early (an epoch's end, ``first_record``): webdataset never closes it, and each shard
    stayed open until the garbage collector found it."""
    opened = list(url_opener([source], handler=handler))  # [] when it cannot be opened
    try:
        yield from group_by_keys(tar_file_expander(iter(opened), handler=handler), handler=handler)
    finally:
        for shard in opened:
            close_shard(shard["stream"])


def close_shard(stream) -> None:
    """Closes a shard's file, or the read end of a ``pipe:`` shard's pipe without waiting for its command
    (webdataset's ``close`` waits): a command still writing ends at its next write (SIGPIPE), as when any
    reader of a pipe stops early, and a stuck one is left for the data watchdog to end with the run's other
    child processes."""
    if not isinstance(stream, Pipe):
        stream.close()
        return
    stream.stream.close()
    with contextlib.suppress(subprocess.TimeoutExpired):  # reaps an ending command; a stuck one stays
        stream.proc.wait(timeout=1)


class ShardReader:
    """A pipeline stage: shard sources -> their samples, with a skip marker for every broken member
    and one ``unreadable_shard`` marker for a shard that gave no sample at all (missing, not a tar, a
    ``pipe:`` command that failed). Markers follow their shard at once, so a source whose every shard
    fails still yields markers for the skip tally to count, instead of yielding nothing forever."""

    def __init__(self):
        self.errors = 0

    def handler(self, error: Exception) -> bool:
        self.errors += 1
        return True  # go on with the next member or shard

    def __call__(self, sources: Iterable[dict]) -> Iterator[dict]:
        for source in sources:
            self.errors, samples = 0, 0
            for sample in one_shard_samples(source, handler=self.handler):
                samples += 1
                yield from self._broken_members()
                yield sample
            if samples:
                yield from self._broken_members()
            else:  # an empty or unreadable shard counts once, however many errors it raised
                self.errors = 0
                yield skip("unreadable_shard")

    def _broken_members(self) -> Iterator[dict]:
        while self.errors:
            self.errors -= 1
            yield skip("broken_member")


def decode_sample(sample: dict, transform: ImageTransform, min_size: int = 0) -> dict:
    """A raw webdataset sample (key -> bytes) -> training sample, or a skip marker."""
    if "skipped" in sample:
        return sample
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if image_key is None:
        return skip("missing_image")
    if "txt" not in sample:
        return skip("missing_caption")
    caption = sample["txt"].decode("utf-8", errors="replace").strip()
    if not caption:
        return skip("empty_caption")
    image = open_image(sample[image_key])
    if isinstance(image, dict):
        return image
    if min(image.size) < min_size:
        return skip("too_small")
    return {
        **transform.sample(image),
        "caption": caption,
        "key": sample["__key__"],
        "url": _url(sample),
    }


def _url(sample: dict) -> str:
    """img2dataset's source URL from the .json member, "" when absent or unreadable (every sample has the
    key, so that batches collate)."""
    try:
        return str(json.loads(sample["json"]).get("url", ""))
    except (KeyError, ValueError, AttributeError):
        return ""


def shard_samples(
    urls: str | Sequence[str],
    decode: Callable[[dict], dict],
    resampled: bool = True,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    samples_per_worker: int | None = None,
) -> wds.DataPipeline:
    """The sample stream of one rank: shards -> tar members -> decoded samples (or skip markers).

    Args:
        urls: the shard list (``expand_shards``); local paths, ``pipe:`` commands or http(s) URLs.
        decode: raw sample (key -> bytes, ``__key__``) -> sample dict or skip marker.
        resampled: draw shards with replacement per (rank, worker) stream; False: split the list.
        shuffle_buffer: samples shuffled in a buffer of this size (0: no shuffling).
        samples_per_worker: length of one epoch of this pipeline (None: one pass, or endless if resampled).
    """
    urls = expand_shards(urls)
    if resampled:

        def worker_seed() -> int:
            worker, _ = worker_index()
            return seed * 1_000_003 + rank * 1009 + worker

        shards = wds.ResampledShards(urls, seed=seed, worker_seed=worker_seed, deterministic=True)
        stages = [shards]
    else:
        stages = [wds.SimpleShardList(urls), split_by_rank(rank, world_size), wds.split_by_worker]
    stages.append(ShardReader())
    if shuffle_buffer:
        stages.append(
            wds.shuffle(shuffle_buffer, initial=min(100, shuffle_buffer), rng=random.Random(seed + rank))
        )
    stages.append(wds.map(decode))
    pipeline = wds.DataPipeline(*stages)
    return pipeline.with_epoch(samples_per_worker) if samples_per_worker else pipeline


class ShardStream(torch.utils.data.IterableDataset):
    """The training samples of one rank, built inside each loader worker (webdataset pipelines hold
    generators) with that worker's share of an ``epoch_samples``-long epoch over all ranks."""

    def __init__(self, epoch_samples: int | None = None, **pipeline_args):
        self.epoch_samples, self.pipeline_args = epoch_samples, pipeline_args
        self.resumed_at = 0  # global step of the resume; 0 for a fresh start
        self.passes = 0  # epochs this copy has streamed (a persistent worker keeps its copy)

    def resume_at(self, global_step: int) -> None:
        """Called before iterating in a resumed run: draw a stream the interrupted run did not."""
        self.resumed_at = global_step

    def __iter__(self) -> Iterator[dict]:
        _, workers = worker_index()
        world_size = self.pipeline_args.get("world_size", 1)
        per_worker = (
            None if self.epoch_samples is None else max(1, self.epoch_samples // (world_size * workers))
        )
        # every epoch and every resume its own order: the seed mixes in both
        seed = hash((self.pipeline_args.get("seed", 0), self.resumed_at, self.passes)) & 0x7FFFFFFF
        self.passes += 1
        yield from shard_samples(samples_per_worker=per_worker, **{**self.pipeline_args, "seed": seed})


def _array(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data))).float()


def decode_latent_sample(
    sample: dict,
    random_flip: bool = True,
    rng: random.Random | None = None,
    masked_text_tokens: int | None = None,
) -> dict:
    """A pre-encoded shard sample -> ``latent_mean``/``latent_std`` (C, h, w) (of the mirror image with
    probability 0.5 when ``random_flip``), ``caption`` and, when stored, ``original_size`` and
    ``crop_top_left`` (2,) (of the crop the latents are of), ``text_embeds`` (T, D) and
    ``pooled_text_embeds`` (P,) (SDXL, FLUX, SD3). ``masked_text_tokens``: the stored context is a masked
    one's unmasked tokens (PixArt's T5, ``encode.unmasked_tokens``), zero-padded back to this length, with
    its mask ``text_mask`` (T,) (1 where a token was stored)."""
    if "skipped" in sample:
        return sample
    if "mean.npy" not in sample or "std.npy" not in sample:
        return skip("broken_member")
    caption = sample.get("txt", b"").decode("utf-8", errors="replace").strip()
    if not caption:
        return skip("empty_caption")
    flip = random_flip and "mean_flip.npy" in sample and (rng or random).random() < 0.5
    suffix = "_flip" if flip else ""
    out = {
        "latent_mean": _array(sample[f"mean{suffix}.npy"]),
        "latent_std": _array(sample[f"std{suffix}.npy"]),
        "caption": caption,
    }
    if "size.json" in sample:
        sizes = json.loads(sample["size.json"])
        out["original_size"] = torch.tensor(sizes["original_size"])
        out["crop_top_left"] = torch.tensor(sizes[f"crop_top_left{suffix}"])
    if "emb.npy" in sample:
        out["text_embeds"] = _array(sample["emb.npy"])
    if "emb.npy" in sample and masked_text_tokens is not None:
        kept = out["text_embeds"].shape[0]
        if kept > masked_text_tokens:
            return skip("broken_member")
        out["text_embeds"] = torch.nn.functional.pad(out["text_embeds"], (0, 0, 0, masked_text_tokens - kept))
        out["text_mask"] = (torch.arange(masked_text_tokens) < kept).long()
    if "pooled.npy" in sample:
        out["pooled_text_embeds"] = _array(sample["pooled.npy"])
    return out


def first_record(urls: str | Sequence[str]) -> dict:
    """The ``json`` record of the first sample of the first shard (what made a pre-encoded data set)."""
    first = expand_shards(urls)[0]
    with contextlib.closing(one_shard_samples({"url": first})) as samples:
        for sample in samples:
            if "json" in sample:
                return json.loads(sample["json"])
    raise ValueError(f"shard {first} holds no json record: it was not written by `python -m bksdm.prepare`")
