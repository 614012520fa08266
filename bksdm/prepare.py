"""python -m bksdm.prepare data.root=<folder> out=<shards> [mode=images|latents]: write training shards
(from an image folder, ``data=laion_folder``, or from the mini world, ``data=miniworld``)."""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig

from bksdm.components import load_components
from bksdm.data.encode import encoder_record, folder_items, write_image_shards, write_latent_shards
from bksdm.module import DTYPES

MODES = ("images", "latents")


def source_items(data: DictConfig):
    """The (key, image bytes, caption, extension) items of the data config: an image folder's images or
    the mini world's items (``num_samples`` of them from ``offset``, world ``world_seed``)."""
    if data._target_ == "bksdm.data.datamodule.MiniWorldDataModule":
        from bksdm.miniworld.world import MiniWorld

        return MiniWorld(data.num_samples, data.resolution, data.world_seed, data.offset).shard_items()
    if data._target_ == "bksdm.data.datamodule.FolderDataModule":
        return folder_items(data.root, data.get("min_size", 0))
    raise ValueError(
        f"data._target_={data._target_!r} cannot be written to shards: prepare reads image folders "
        "(data=laion_folder) and the mini world (data=miniworld)"
    )


def prepare(cfg: DictConfig):
    """Write the shards the config asks for; returns the WriteReport."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r} is not accepted: use one of {list(MODES)}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype={cfg.dtype!r}: accepted are {list(DTYPES)}")
    if cfg.mode == "images":
        return write_image_shards(source_items(cfg.data), cfg.out, cfg.shard_size)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    items = source_items(cfg.data)  # a bad source stops before the teacher is loaded
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
        cfg.mirrored,
    )
    return write_latent_shards(
        items,
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
