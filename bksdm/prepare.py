"""python -m bksdm.prepare data.root=<folder> out=<shards> [mode=images|latents]: write training shards."""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig

from bksdm.components import load_components
from bksdm.data.encode import encoder_record, folder_items, write_image_shards, write_latent_shards
from bksdm.module import DTYPES

MODES = ("images", "latents")


def prepare(cfg: DictConfig):
    """Write the shards the config asks for; returns the WriteReport."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r} is not accepted: use one of {list(MODES)}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype={cfg.dtype!r}: accepted are {list(DTYPES)}")
    if cfg.mode == "images":
        return write_image_shards(cfg.data.root, cfg.out, cfg.shard_size, cfg.data.get("min_size", 0))
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    parts = ["vae", "tokenizer"] + (["text_encoder"] if cfg.text_embeddings else [])
    teacher = load_components(cfg.teacher.source, parts, DTYPES[cfg.dtype], cfg.teacher.revision)
    vae = teacher.vae.to(device)
    text_encoder = teacher.text_encoder.to(device) if teacher.text_encoder is not None else None
    record = encoder_record(
        cfg.teacher.source,
        cfg.teacher.revision,
        cfg.resolution,
        vae.config.scaling_factor,
        cfg.text_embeddings,
    )
    return write_latent_shards(
        folder_items(cfg.data.root, cfg.data.get("min_size", 0)),
        cfg.out,
        vae,
        record,
        tokenizer=teacher.tokenizer,
        text_encoder=text_encoder,
        batch_size=cfg.batch_size,
        shard_size=cfg.shard_size,
        latent_dtype=cfg.latent_dtype,
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    print(f"{cfg.mode}: {prepare(cfg).describe()} -> {cfg.out}")


if __name__ == "__main__":
    main()
