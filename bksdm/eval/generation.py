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
    indices: Sequence[int] | None = None,
) -> list[Path]:
    """Images ``out/000000.png``, ... for ``prompts`` (only ``indices`` of them, e.g. one DDP rank's
    share); images already there are kept. Returns the paths of the asked-for images.

    Every prompt's latent is drawn from the one generator in prompt order, whichever process makes the
    image and whether or not it exists already, so the images do not depend on batching, splitting or
    resuming. Each PNG is written under a temporary name and renamed, so a crash never leaves a
    half-written image that a resumed run would take for finished.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = sorted(set(range(len(prompts)) if indices is None else indices))
    resolution = resolution or pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    side = resolution // pipeline.vae_scale_factor
    latent_shape = (1, pipeline.unet.config.in_channels, side, side)
    generator = torch.Generator("cpu").manual_seed(seed)
    todo = {i for i in wanted if not image_path(out, i).is_file()}
    pipeline.set_progress_bar_config(disable=True)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"generating into {out}", unit="image")
    pending: list[tuple[int, torch.Tensor]] = []
    for index in range(max(todo, default=-1) + 1):
        latent = torch.randn(latent_shape, generator=generator)  # drawn for every index, in order
        if index in todo:
            pending.append((index, latent))
        if pending and (len(pending) == batch_size or index == max(todo)):
            _generate_batch(pipeline, prompts, pending, out, resolution, num_inference_steps, guidance_scale)
            if bar is not None:
                bar.update(len(pending))
            pending = []
    if bar is not None:
        bar.close()
    return [image_path(out, i) for i in wanted]


def _generate_batch(pipeline, prompts, pending, out, resolution, num_inference_steps, guidance_scale) -> None:
    images = pipeline(
        [prompts[i] for i, _ in pending],
        height=resolution,
        width=resolution,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        latents=torch.cat([latent for _, latent in pending]).to(pipeline.unet.device, pipeline.unet.dtype),
        output_type="np",
    ).images
    for (index, _), image in zip(pending, images, strict=True):
        target = image_path(out, index)
        staging = target.with_name(f".{target.name}.partial")
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(staging, format="PNG")
        os.replace(staging, target)


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


# Sampler choices for generation; PNDM with SD's own settings is the paper's.
SCHEDULERS = {
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpm_solver": ("DPMSolverMultistepScheduler", {}),
}


def load_pipeline(source: str, dtype: str = "auto", device: str = "auto", scheduler: str | None = "pndm"):
    """A StableDiffusionPipeline from a folder, hub id or ``builtin:tiny``, without the safety checker
    (the paper's protocol), in fp16 on GPU and fp32 on CPU unless told otherwise. ``scheduler`` picks the
    sampler (one of ``SCHEDULERS``, built from the pipeline's own noise schedule) or ``None`` to keep the
    pipeline's stored one."""
    import diffusers

    from bksdm.components import resolve_source
    from bksdm.module import DTYPES

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: accepted are 'auto' or {list(DTYPES)}")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(
            f"scheduler={scheduler!r}: accepted are {list(SCHEDULERS)} or null (the pipeline's own)"
        )
    try:
        pipeline = diffusers.StableDiffusionPipeline.from_pretrained(
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
    if scheduler is not None:
        name, settings = SCHEDULERS[scheduler]
        if (
            type(pipeline.scheduler).__name__ != name
        ):  # a stored scheduler of the right kind keeps its settings
            pipeline.scheduler = getattr(diffusers, name).from_config(pipeline.scheduler.config, **settings)
    return pipeline.to(device)
