"""Loader throughput per source and worker count on this machine, next to the training step's consumption.

    python experiments/data_throughput/measure.py [--images 512] [--resolution 512]

Builds a folder of random 640x512 JPEGs with captions, the same as webdataset shards, and pre-encoded
latent shards (toy teacher VAE, 8x downsampling, so 64x64 latents as SD's at 512 px), then times each
loader at 0, 1 and 2 workers. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bksdm.data.datamodule import FolderDataModule, LatentDataModule, ShardDataModule
from bksdm.data.encode import encoder_record, folder_items, write_image_shards, write_latent_shards
from bksdm.data.throughput import loader_images_per_second
from bksdm.teachers.loading import load_components


def make_folder(root: Path, count: int) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        for i in range(count):
            # smooth random images compress like photos (pure noise would make huge JPEGs)
            small = rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)
            Image.fromarray(small).resize((640, 512), Image.Resampling.BICUBIC).save(
                root / f"{i}.jpg", quality=90
            )
            writer.writerow([f"{i}.jpg", f"a photo number {i} of something"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bksdm-throughput-"))
    make_folder(work / "folder", args.images)
    report = write_image_shards(folder_items(work / "folder"), work / "shards", shard_size=128)
    print(f"prepare mode=images: {report.describe()}")
    vae = load_components("builtin:toy", ["vae"]).vae
    record = encoder_record("builtin:toy", None, args.resolution, vae.config.scaling_factor, False)
    report = write_latent_shards(folder_items(work / "folder"), work / "latents", vae, record, shard_size=128)
    print(f"prepare mode=latents (toy VAE, CPU): {report.describe()}")
    shards = sorted(str(p) for p in (work / "shards").glob("*.tar"))
    latents = sorted(str(p) for p in (work / "latents").glob("*.tar"))
    sources = {
        "laion_folder (JPEG decode + resize + crop)": lambda w: FolderDataModule(
            str(work / "folder"), args.resolution, args.batch_size, w
        ),
        "webdataset (same, from shards)": lambda w: ShardDataModule(
            shards, args.resolution, args.batch_size, w, epoch_samples=10**9, shuffle_buffer=100
        ),
        "latents (pre-encoded 4x64x64 fp16)": lambda w: LatentDataModule(
            latents,
            "builtin:toy",
            None,
            args.resolution,
            args.batch_size,
            w,
            epoch_samples=10**9,
            shuffle_buffer=100,
        ),
    }
    print("\n| source | workers | images/s | images/s per worker |\n|---|---|---|---|")
    for name, make in sources.items():
        for workers in (0, 1, 2):
            rate = loader_images_per_second(make(workers), batches=12)
            per_worker = rate / max(workers, 1)
            print(f"| {name} | {workers} | {rate:.0f} | {per_worker:.0f} |", flush=True)
    print(f"\nmeasured {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, torch {torch.__version__}")


if __name__ == "__main__":
    main()
