"""Reproducible, resumable text-to-image generation with any diffusers Stable Diffusion pipeline.

The paper's protocol draws every image's initial latent from one generator seeded 1234, consumed in
order, at batch 1. Here each image's latent is drawn separately, in prompt order, from that one
generator and handed to the pipeline, so batching changes nothing in the noise and a resumed run replays
the draws of the finished images (cheap) instead of regenerating them. PNDM and DDIM draw nothing after
the initial latent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_path(out: Path, index: int) -> Path:
    return out / f"{index:06d}.png"


def finished(out: Path, count: int) -> int:
    """How many images, from index 0 on without a gap, are already in ``out``."""
    done = 0
    while done < count and image_path(out, done).is_file():
        done += 1
    return done


def generate_images(
    pipeline,
    prompts: Sequence[str],
    out: str | Path,
    seed: int = 1234,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    batch_size: int = 1,
    resolution: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Images ``out/000000.png``, ... for ``prompts``, in order; images already there are kept.

    Each PNG is written under a temporary name and renamed, so a crash never leaves a half-written image
    that a resumed run would take for finished.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolution = resolution or pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    latent_shape = (
        1,
        pipeline.unet.config.in_channels,
        resolution // pipeline.vae_scale_factor,
        resolution // pipeline.vae_scale_factor,
    )
    generator = torch.Generator("cpu").manual_seed(seed)
    done = finished(out, len(prompts))
    for _ in range(done):  # replay the finished images' draws: the generator continues where it stopped
        torch.randn(latent_shape, generator=generator)
    pipeline.set_progress_bar_config(disable=True)
    indices = range(done, len(prompts))
    batches = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"generating into {out}", initial=0, unit="batch")
    device, dtype = pipeline.unet.device, pipeline.unet.dtype
    for batch in batches:
        latents = torch.cat([torch.randn(latent_shape, generator=generator) for _ in batch])
        images = pipeline(
            [prompts[i] for i in batch],
            height=resolution,
            width=resolution,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            latents=latents.to(device, dtype),
            output_type="np",
        ).images
        for index, image in zip(batch, images, strict=True):
            target = image_path(out, index)
            staging = target.with_name(f".{target.name}.partial")
            Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(staging, format="PNG")
            os.replace(staging, target)
    return [image_path(out, i) for i in range(len(prompts))]


def image_grid(paths: Sequence[str | Path], columns: int | None = None) -> Image.Image:
    """The images side by side, ``columns`` per row (default: a near-square grid)."""
    images = [Image.open(p).convert("RGB") for p in paths]
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def load_pipeline(source: str, dtype: str = "auto", device: str = "auto"):
    """A StableDiffusionPipeline from a folder, hub id or ``builtin:tiny``, without the safety checker
    (the paper's protocol), in fp16 on GPU and fp32 on CPU unless told otherwise."""
    from diffusers import StableDiffusionPipeline

    from bksdm.components import resolve_source
    from bksdm.module import DTYPES

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: accepted are 'auto' or {list(DTYPES)}")
    try:
        pipeline = StableDiffusionPipeline.from_pretrained(
            resolve_source(source),
            torch_dtype=DTYPES[dtype],
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"model={source!r} could not be loaded as a Stable Diffusion pipeline: {error}\n"
            "Accepted: a diffusers pipeline folder (e.g. a run's student/), a hub id, or builtin:tiny."
        ) from error
    return pipeline.to(device)
