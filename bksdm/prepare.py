"""python -m bksdm.prepare data.root=<folder> out=<shards> [mode=images|latents]: write training shards
(from an image folder, ``data=laion_folder``, or from the mini world, ``data=miniworld``)."""

from __future__ import annotations

import functools
from pathlib import Path

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from bksdm.cli import app, config_checks
from bksdm.cli.help import EntryHelp

MODES = ("images", "latents")
# a shipped student of each teacher family the default arch (BK-SDM-Small, SD-v1/v2's) does not fit, so
# that the printed training command runs as printed
STUDENTS = {
    "StableDiffusionXLPipeline": "koala_700m",
    "FluxPipeline": "flux_mini",
    "StableDiffusion3Pipeline": "sd35_hprune",
    "PixArtSigmaPipeline": "pixart_half",
}


HELP = EntryHelp(
    command="python -m bksdm.prepare",
    summary="Write training shards once: mode=images copies an image folder (or the mini world) into\n"
    "webdataset shards; mode=latents stores the teacher VAE's latents, so training loads no VAE.",
    settings=("data.root", "out", "mode", "shard_size", "text_embeddings", "mirrored", "dtype"),
    examples=("python -m bksdm.prepare data.root=/data/laion_212k out=shards/laion mode=latents",
              "python -m bksdm.prepare data=miniworld teacher=miniworld out=shards/miniworld mode=latents mirrored=false"),
    more="Manual: docs/training.md (data)",
)  # fmt: skip


def prepare(cfg: DictConfig):
    """Write the shards the config asks for; returns the WriteReport. A bad setting or source raises
    ``ConfigError`` before anything is loaded or written."""
    # here, not at the top: composing alone (--cfg job) needs no torch
    import torch

    from bksdm.arch.depth import is_transformer
    from bksdm.data.encode import encoder_record, write_image_shards, write_latent_shards
    from bksdm.teachers.conditioning import encode_text, takes_added_conditioning, text_towers
    from bksdm.teachers.frozen import DTYPES
    from bksdm.teachers.loading import (
        load_components,
        pipeline_family,
        resolve_source,
        teacher_denoiser_config,
    )

    with config_checks():
        if cfg.mode not in MODES:
            raise ValueError(f"mode={cfg.mode!r} is not accepted: use one of {list(MODES)}")
        if cfg.dtype not in DTYPES:
            raise ValueError(f"dtype={cfg.dtype!r}: accepted are {list(DTYPES)}")
        denoiser = teacher_denoiser_config(cfg.teacher.source, revision=cfg.teacher.revision)
        if (
            cfg.mode == "latents"
            and cfg.text_embeddings
            and is_transformer(denoiser)
            and cfg.dtype == "float16"
        ):
            raise ValueError(
                f"dtype=float16 with text_embeddings=true and teacher={cfg.teacher.name}: T5's activations overflow "
                "fp16, which would store inf or NaN text states; accepted: dtype=bfloat16 (what training's frozen "
                "T5 computes in) or float32"
            )
        # the data source lists its items: a folder is listed now (no caption, no shard)
        source = instantiate(cfg.data)
        items = source.shard_items()
    from tqdm.auto import tqdm

    items = tqdm(items, total=source.num_items, desc=f"{cfg.mode} -> {cfg.out}", unit="image")
    if cfg.mode == "images":
        return write_image_shards(items, cfg.out, cfg.shard_size)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    sdxl = takes_added_conditioning(denoiser)
    family = pipeline_family(resolve_source(cfg.teacher.source), cfg.teacher.revision)
    towers = text_towers(family, sdxl) if cfg.text_embeddings else ()
    parts = ["vae", *(part for tower in towers for part in tower)]
    vae_source = cfg.teacher.get("vae_source")
    teacher = load_components(cfg.teacher.source, parts, DTYPES[cfg.dtype], cfg.teacher.revision, vae_source)
    vae = teacher.vae.to(device)
    for _, encoder in towers:
        getattr(teacher, encoder).to(device)
    if sdxl and cfg.dtype == "float16" and vae.config.get("force_upcast", True):
        vae.to(torch.float32)  # SDXL's VAE overflows in fp16, as FrozenTeacher.freeze decides for training
    record = encoder_record(
        cfg.teacher.source,
        cfg.teacher.revision,
        cfg.resolution,
        vae.config.scaling_factor,
        cfg.text_embeddings,
        cfg.mirrored,
        vae_source,
    )
    return write_latent_shards(
        items,
        cfg.out,
        vae,
        record,
        encode_text=functools.partial(encode_text, teacher, family, sdxl=sdxl) if towers else None,
        batch_size=cfg.batch_size,
        shard_size=cfg.shard_size,
        latent_dtype=cfg.latent_dtype,
    )


def training_command(cfg: DictConfig, shards: list) -> str:
    """The command that trains from the shards just written, with the brace pattern quoted so that it
    reaches Hydra whole (``python -m bksdm.<verb>`` quotes a brace range for Hydra itself)."""
    names = [Path(shard).name for shard in shards]
    folder = Path(cfg.out)
    if len(names) == 1:
        urls = str(folder / names[0])
    else:
        first, last = Path(names[0]).stem, Path(names[-1]).stem
        urls = f"{folder}/{{{first}..{last}}}.tar"
    data = "data=latents" if cfg.mode == "latents" else "data=webdataset"
    # mirrored=false latents hold no mirror encodings; the mini world's captions name left and right
    unflipped = (cfg.mode == "latents" and not cfg.mirrored) or not get_class(cfg.data._target_).mirror_safe
    flip = " data.random_flip=false" if unflipped else ""
    from bksdm.teachers.loading import pipeline_family, resolve_source

    student = STUDENTS.get(pipeline_family(resolve_source(cfg.teacher.source), cfg.teacher.revision))
    arch = f" arch={student}" if student else ""
    return f"python -m bksdm.train teacher={cfg.teacher.name}{arch} {data} data.urls='{urls}'{flip}"


@app("prepare", HELP)
def main(cfg: DictConfig) -> None:
    report = prepare(cfg)
    print(f"{cfg.mode}: {report.describe()} -> {cfg.out}")
    if report.shards:
        print(f"train from them: {training_command(cfg, report.shards)}")


if __name__ == "__main__":
    main()
