"""Reproducible, resumable text-to-image generation with any diffusers Stable Diffusion pipeline.

The paper's protocol draws every image's initial latent from one generator seeded 1234, consumed in
order, at batch 1, on the GPU. Here each image's latent is drawn separately, in prompt order, from that
one generator, as the pipeline itself would draw it (diffusers' ``randn_tensor`` in the pipeline's
dtype), and handed to the pipeline, so batching changes nothing in the noise and a resumed run replays
the draws of the finished images (cheap) instead of regenerating them. PNDM and DDIM draw nothing after
the initial latent. ``generator_device`` says where the generator lives: ``cuda`` gives the paper's
latents (a CUDA generator's numbers differ from a CPU one's for the same seed), ``cpu`` the same images
on every machine.

A resumed run may only keep images that the same settings made, so ``generate`` and ``evaluate`` write a
manifest (``manifest.json``: model, prompts, seed, steps, guidance, sampler, resolution, dtype) beside
their images before the first one, and refuse a folder whose images another model or setting made
(``open_images_folder``), before any model is loaded.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bksdm.cli.errors import ConfigError
from bksdm.training.atomic import write_file_atomically

MANIFEST_FILE = "manifest.json"
_IMAGE = re.compile(r"\d{6}\.png")
_PARTIAL_IMAGE = re.compile(r"\.\d{6}\.png\.partial")


def image_path(out: Path, index: int) -> Path:
    return out / f"{index:06d}.png"


def images_manifest(
    model: str,
    prompts: Sequence[str],
    *,
    seed: int | None,
    num_inference_steps: int,
    guidance_scale: float,
    scheduler: str | None,
    resolution: int | None,
    dtype: str,
    generator_device: str,
) -> dict:
    """What decides a run's images, as its images folder's ``manifest.json`` records it. A local
    ``model`` folder is recorded by its absolute path (``student`` and ``./student`` are one model);
    ``resolution`` None is the U-Net's native size; ``dtype`` and ``generator_device`` are the resolved
    ones, not ``auto``."""
    local = Path(model).expanduser()
    return {
        "model": str(local.resolve()) if local.is_dir() else model,
        "seed": None if seed is None else int(seed),
        "generator_device": generator_device,
        "num_inference_steps": int(num_inference_steps),
        "guidance_scale": float(guidance_scale),
        "scheduler": scheduler,
        "resolution": None if resolution is None else int(resolution),
        "dtype": dtype,
        "prompts": [str(prompt) for prompt in prompts],
    }


class ImagesFolderError(ConfigError):
    """An images folder holds images that other settings made, or that no manifest describes."""


@dataclass
class ImagesFolder:
    """An images folder checked against a run's manifest by ``open_images_folder``. ``claim()``, called
    once the model has loaded, makes it the run's: removes the files it must not keep, then writes the
    manifest."""

    path: Path
    manifest: dict
    remove: list[Path]

    def claim(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # old images go before the new manifest is written: a kill in between must not leave images
        # under a manifest that did not make them
        for file in self.remove:
            file.unlink(missing_ok=True)
        write_file_atomically(self.path / MANIFEST_FILE, json.dumps(self.manifest, indent=1) + "\n")


_HOW_TO_PROCEED = (
    "Pick another out= for these settings, or pass overwrite=true to remove those images and start over."
)


def open_images_folder(folder: str | Path, manifest: dict, overwrite: bool = False) -> ImagesFolder:
    """Check that the images already in ``folder`` were made with ``manifest``'s settings, so that a run
    may keep them; touches nothing (``claim()`` does). Raises ``ImagesFolderError`` otherwise, naming the
    settings that differ, and for images without a manifest (from a bksdm before manifests).

    The prompts may differ in number if one list extends the other (the same prompts in the same order):
    image ``i`` depends only on the seed, the settings and prompt ``i``, so the shared images are kept, and
    the manifest keeps the longer list, since the folder still holds those images. ``overwrite``: any
    folder is taken, and its images are removed when it is claimed.
    """
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    images = [folder / name for name in names if _IMAGE.fullmatch(name)]
    partial = [folder / name for name in names if _PARTIAL_IMAGE.fullmatch(name)]
    if overwrite:
        return ImagesFolder(folder, manifest, images + partial)
    if not images:
        return ImagesFolder(folder, manifest, partial)
    stored = _read_manifest(folder / MANIFEST_FILE)
    if stored is None:
        raise ImagesFolderError(
            f"{str(folder)!r} holds {len(images)} image(s) but no readable {MANIFEST_FILE} (an older bksdm "
            f"wrote them, or something else did), so which model and settings made them is unknown. "
            + _HOW_TO_PROCEED
        )
    differences = _differences(stored, manifest)
    if differences:
        raise ImagesFolderError(
            f"{str(folder)!r} holds {len(images)} image(s) made with other settings than this run's "
            f"(its {MANIFEST_FILE}, stored -> now): " + "; ".join(differences) + ". " + _HOW_TO_PROCEED
        )
    longer = max(stored["prompts"], manifest["prompts"], key=len)
    return ImagesFolder(folder, {**manifest, "prompts": longer}, partial)


def _read_manifest(path: Path) -> dict | None:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or not isinstance(stored.get("prompts"), list):
        return None
    stored.setdefault("generator_device", "cpu")  # a bksdm before the setting drew every latent on the CPU
    return stored


def _differences(stored: dict, manifest: dict) -> list[str]:
    missing = "(none)"
    differences = [
        f"{key} {stored.get(key, missing)!r} -> {manifest.get(key, missing)!r}"
        for key in [*manifest, *(k for k in stored if k not in manifest)]
        if key != "prompts" and stored.get(key, missing) != manifest.get(key, missing)
    ]
    old, new = stored["prompts"], manifest["prompts"]
    # the shorter list may end early: one list extending the other is no difference
    first = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), None)
    if first is not None:
        counts = f"{len(old)} -> {len(new)} prompts; " if len(old) != len(new) else ""
        differences.append(
            f"prompts ({counts}image {first:06d} was made for {_shortened(old[first])!r}, this run's prompt "
            f"{first} is {_shortened(new[first])!r})"
        )
    return differences


def _shortened(text: str, length: int = 60) -> str:
    return text if len(text) <= length else text[: length - 3] + "..."


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
    generator_device: str = "cpu",
) -> list[Path]:
    """Images ``out/000000.png``, ... for ``prompts`` (only ``indices`` of them, e.g. one DDP rank's
    share); images already there are kept, so a folder that other settings may have filled is checked
    first (``open_images_folder``). Returns the paths of the asked-for images.

    Every prompt's latent is drawn from the one generator in prompt order, whichever process makes the
    image and whether or not it exists already, so the images do not depend on batching, splitting or
    resuming. ``generator_device``: ``cpu`` or ``cuda`` (the pipeline's GPU; ``resolve_generator_device``).
    Each PNG is written under a temporary name and renamed, so a crash never leaves a half-written image
    that a resumed run would take for finished.
    """
    from diffusers.utils.torch_utils import randn_tensor

    from bksdm.teachers.denoiser_call import pack_flux_latents
    from bksdm.teachers.pipeline import pipeline_denoiser

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = sorted(set(range(len(prompts)) if indices is None else indices))
    denoiser = pipeline_denoiser(pipeline)
    native = getattr(pipeline, "default_sample_size", None) or denoiser.config.sample_size
    resolution = resolution or native * pipeline.vae_scale_factor
    side = resolution // pipeline.vae_scale_factor
    flux = type(pipeline).__name__ == "FluxPipeline"  # takes its latents packed in 2x2 patches of 4C
    channels = denoiser.config.in_channels // 4 if flux else denoiser.config.in_channels
    latent_shape = (1, channels, side, side)
    draw_on = denoiser.device if generator_device == "cuda" else torch.device("cpu")
    generator = torch.Generator(draw_on).manual_seed(seed)
    todo = {i for i in wanted if not image_path(out, i).is_file()}
    pipeline.set_progress_bar_config(disable=True)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"generating into {out}", unit="image")
    pending: list[tuple[int, torch.Tensor]] = []
    for index in range(max(todo, default=-1) + 1):
        # drawn for every index, in order; as the pipeline draws it when handed the generator at batch 1
        latent = randn_tensor(latent_shape, generator=generator, device=draw_on, dtype=denoiser.dtype)
        latent = pack_flux_latents(latent) if flux else latent
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
    from bksdm.teachers.pipeline import call_settings, pipeline_denoiser

    denoiser = pipeline_denoiser(pipeline)
    images = pipeline(
        [prompts[i] for i, _ in pending],
        height=resolution,
        width=resolution,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        latents=torch.cat([latent for _, latent in pending]).to(denoiser.device, denoiser.dtype),
        output_type="np",
        **call_settings(pipeline),
    ).images
    for (index, _), image in zip(pending, images, strict=True):
        write_image(image_path(out, index), (np.clip(image, 0, 1) * 255).round().astype(np.uint8))


def write_image(target: Path, pixels: np.ndarray) -> None:
    """A PNG of uint8 ``pixels`` (H, W, 3), under a temporary name and renamed: a crash never leaves a
    half-written image that a resumed run would take for finished."""
    staging = target.with_name(f".{target.name}.partial")
    Image.fromarray(pixels).save(staging, format="PNG")
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
# Stable Diffusion's sampler settings, for those a stored scheduler config leaves out when another class
# is built from it. PNDM does not take clip_sample, so a PNDM config may lack it (SD-v1.4's has it, the
# mini world's and the toy teacher's did not), and DDIM's default (True) then clips each predicted
# latent to [-1, 1], where SD's latents do not stay: its images come out as noise.
SD_SAMPLER_SETTINGS = {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


GENERATOR_DEVICES = ("auto", "cpu", "cuda")


def resolve_generator_device(setting: str, device: str) -> str:
    """Where the seeded initial latents are drawn for a model on ``device`` (resolved, e.g. ``cuda:0``):
    ``auto`` is ``cuda`` on a GPU (where the paper drew them) and ``cpu`` elsewhere; ``cpu`` gives the
    same images on every machine; ``cuda`` needs the model on a GPU."""
    if setting not in GENERATOR_DEVICES:
        raise ValueError(
            f"generator_device={setting!r}: accepted are auto (cuda on a GPU, else cpu), cpu (the same images "
            "on every machine) and cuda (the paper's latents; the model on a GPU)"
        )
    on_gpu = torch.device(device).type == "cuda"
    if setting == "auto":
        return "cuda" if on_gpu else "cpu"
    if setting == "cuda" and not on_gpu:
        raise ValueError(
            f"generator_device=cuda draws the latents on the model's GPU, but the model runs on {device!r}: "
            "set device=cuda, or generator_device=cpu"
        )
    return setting


def check_scheduler(scheduler: str | None) -> None:
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(
            f"scheduler={scheduler!r}: accepted are {list(SCHEDULERS)} or null (the pipeline's own)"
        )


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """``auto`` made concrete: CUDA when there is one; float16 on GPU and float32 on CPU."""
    from bksdm.teachers.frozen import DTYPES

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: accepted are 'auto' or {list(DTYPES)}")
    return device, dtype


def switch_scheduler(scheduler, choice: str):
    """The sampler ``choice`` (a key of ``SCHEDULERS``) built from ``scheduler``'s noise schedule; a
    stored scheduler of that class is kept with its settings."""
    import diffusers

    check_scheduler(choice)
    name, settings = SCHEDULERS[choice]
    if type(scheduler).__name__ == name:
        return scheduler
    target = getattr(diffusers, name)
    stored = dict(scheduler.config)
    defaulted = set(stored.get("_use_default_values", []))  # not in the stored file: the class's default
    takes = inspect.signature(target.__init__).parameters
    missing = {
        key: value
        for key, value in SD_SAMPLER_SETTINGS.items()
        if key in takes and (key not in stored or key in defaulted)
    }
    return target.from_config(stored, **{**missing, **settings})


def check_model(source: str) -> None:
    """``model=`` names a local folder that exists, a hub id (``org/name``) or ``builtin:<name>``: a path
    of more parts, or an absolute one, that is not a folder is a mistyped run folder, said before loading.
    """
    if source.startswith("builtin:") or Path(source).expanduser().is_dir():
        return
    if Path(source).is_absolute() or source.startswith(".") or source.count("/") > 1:
        raise FileNotFoundError(
            f"model={source!r} is not a folder: give a pipeline folder (e.g. a run's student/), a hub id "
            "(org/name) or builtin:toy / builtin:miniworld"
        )


def check_resolution(source: str, resolution: int | None) -> None:
    """``resolution`` (pixels, or None: the U-Net's native size) fits the VAE's factor (SD's 8x, where
    ``source``'s VAE config is not at hand) and every downsampler of ``source``'s U-Net, read from their
    config files where those are at hand before loading."""
    if resolution is None:
        return
    from bksdm.arch.report import VAE_SCALE, check_latent_size
    from bksdm.teachers.loading import teacher_denoiser_config, vae_config, vae_scale

    try:
        scale = vae_scale(vae_config(source))
    except Exception:  # no config at hand before loading (a hub id not cached yet): the load says
        scale = VAE_SCALE
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int)
        or resolution < scale
        or resolution % scale
    ):
        raise ValueError(
            f"resolution={resolution!r}: accepted are pixel sizes that are multiples of {scale} (the VAE "
            f"downsamples {scale}x), or null: the U-Net's native size"
        )

    try:
        config = teacher_denoiser_config(source)
    except Exception:  # no config at hand before loading (a hub id not cached yet): the load says
        return
    from bksdm.arch.depth import is_transformer

    if is_transformer(config):  # VAE 8x, then 2x2 patches
        if resolution % (2 * VAE_SCALE):
            raise ValueError(
                f"resolution={resolution} does not fit {source}'s transformer: accepted are multiples of "
                f"{2 * VAE_SCALE} pixels (8x VAE, 2x2 patches)"
            )
        return
    try:
        check_latent_size(config, resolution // scale)
    except ValueError as error:
        raise ValueError(f"resolution={resolution} does not fit {source}'s U-Net: {error}") from error


@dataclass
class GenerationPlan:
    """What ``generate`` and ``evaluate`` settle before loading a model."""

    folder: ImagesFolder  # checked against the run's manifest; claim() it once the model has loaded
    device: str
    dtype: str
    generator_device: str  # cpu or cuda
    sampling: dict  # guidance_scale, num_inference_steps
    origin: str  # where the sampling values came from, for the log


def plan_generation(settings, prompts: Sequence[str], out: str | Path) -> GenerationPlan:
    """Every check of a generation run that needs no model: ``model``, ``device``, ``dtype``,
    ``scheduler``, the sampling defaults (``guidance_scale``, ``num_inference_steps``: null takes the
    model's own) and the images folder ``out`` against this run's manifest (``seed``, ``resolution``,
    ``overwrite``). ``settings``: the entry point's config."""
    from bksdm.eval.sampling import resolve_sampling

    check_model(settings.model)
    check_resolution(settings.model, settings.resolution)
    device, dtype = resolve_device_dtype(settings.device, settings.dtype)
    generator_device = resolve_generator_device(settings.generator_device, device)
    check_scheduler(settings.scheduler)
    sampling, origin = resolve_sampling(settings.model, settings.guidance_scale, settings.num_inference_steps)
    manifest = images_manifest(
        settings.model, prompts, seed=settings.seed, scheduler=settings.scheduler,
        resolution=settings.resolution, dtype=dtype, generator_device=generator_device, **sampling,
    )  # fmt: skip
    folder = open_images_folder(out, manifest, overwrite=settings.overwrite)
    return GenerationPlan(folder, device, dtype, generator_device, sampling, origin)


def load_pipeline(source: str, dtype: str = "auto", device: str = "auto", scheduler: str | None = "pndm"):
    """A StableDiffusionPipeline (or the class a folder's model_index.json names: StableDiffusionXLPipeline,
    FluxPipeline, StableDiffusion3Pipeline, PixArtSigmaPipeline) from a folder, hub id or ``builtin:toy``, without the safety checker (the paper's protocol), in fp16 on GPU and fp32
    on CPU unless told otherwise. ``scheduler`` picks the sampler (one of ``SCHEDULERS``, built from the
    pipeline's own noise schedule, with SD's settings for what the stored config leaves out) or ``None``
    to keep the pipeline's stored one."""
    import diffusers

    from bksdm.teachers.frozen import DTYPES
    from bksdm.teachers.loading import dtype_argument, pipeline_class, resolve_source

    device, dtype = resolve_device_dtype(device, dtype)
    check_scheduler(scheduler)
    try:
        path = resolve_source(source)
        loader = pipeline_class(path)
        sd_only = {"safety_checker": None, "requires_safety_checker": False}
        sd_only = sd_only if loader is diffusers.StableDiffusionPipeline else {}
        pipeline = loader.from_pretrained(path, **dtype_argument(DTYPES[dtype]), **sd_only)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"model={source!r} could not be loaded as a Stable Diffusion pipeline: {error}\n"
            "Accepted: a diffusers pipeline folder (e.g. a run's student/), a hub id, or builtin:toy."
        ) from error
    if scheduler is not None:
        if type(pipeline.scheduler).__name__.startswith("FlowMatch"):
            raise ValueError(
                f"scheduler={scheduler} samples diffusion (DDPM-family) models, and model={source!r} is a "
                f"flow-matching {type(pipeline).__name__}: set scheduler=null (its own "
                f"{type(pipeline.scheduler).__name__})"
            )
        pipeline.scheduler = switch_scheduler(pipeline.scheduler, scheduler)
    return pipeline.to(device)
