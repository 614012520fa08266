"""The relational world's teacher on its way: scores the U-Net checkpoint a running (or stopped) build last
wrote, as the build's report will score the finished teacher, and appends the figures to
``teacher_progress.jsonl`` beside this file.

    python experiments/miniworld_scenes/teacher_progress.py [work_dir=...] [report.captions=200] [...]

The overrides are ``python -m bksdm.miniworld world=scenes``'s (conf/miniworld.yaml), so the build's own
settings pick the work folder, the held-out items and how images are drawn. It needs the build's VAE and
classifier stages finished. Reads the checkpoint only: a build may keep running beside it.
"""

import json
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bksdm.bench.run import cpu_model
from bksdm.miniworld import models
from bksdm.miniworld.assets import load_classifier
from bksdm.miniworld.build import (
    assemble_pipeline,
    held_out_pools,
    part_changes,
    report_captions,
    teacher_accuracy,
    teacher_unet,
)
from bksdm.miniworld.training import encode_pool
from bksdm.miniworld.worlds import world_kind

HERE = Path(__file__).resolve().parent
CONF = HERE.parents[1] / "conf"


def main(overrides: list[str], log: Path = HERE / "teacher_progress.jsonl") -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("miniworld", overrides=["world=scenes", *overrides])
    work = Path(cfg.work_dir)
    for needed in ("vae/finished.pt", "classifier/finished.pt", "teacher/last.ckpt"):
        if not (work / needed).is_file():
            raise SystemExit(
                f"{work / needed} is missing: the build has not got that far (or another work_dir)"
            )
    clock = time.perf_counter()
    torch.manual_seed(cfg.seed)
    kind = world_kind(cfg.world.name)
    checkpoint = torch.load(work / "teacher/last.ckpt", map_location="cpu", weights_only=False)
    unet = teacher_unet(cfg, kind)
    unet.load_state_dict({k.removeprefix("unet."): v for k, v in checkpoint["state_dict"].items()})
    tokenizer = models.tokenizer(kind.text_tokens)
    vae = AutoencoderKL.from_pretrained(work / "vae/model")
    pipeline = assemble_pipeline(
        vae, models.text_encoder(cfg.seed, tokenizer), tokenizer, unet.eval(), cfg.teacher.prediction_type
    )
    classifier = load_classifier(work / "classifier")
    held_out = held_out_pools(cfg, kind)
    # the U-Net's design with each row: the log spans designs (the first row is of SD-v1's widths, epsilon;
    # rows without latent_side are of 16x16 latents)
    design = ("block_out_channels", "attention_heads", "top_stage_attention", "prediction_type", "precision")
    settings = OmegaConf.to_container(cfg.teacher)
    row = {"step": int(checkpoint["global_step"]), **{key: settings[key] for key in design}}
    row["latent_side"] = unet.config.sample_size
    with torch.no_grad():
        for name, texts in report_captions(kind, cfg.report, held_out).items():
            row[name] = teacher_accuracy(pipeline, classifier, texts, cfg.report, kind)
        items = held_out["held_out_items"]
        latents = encode_pool(pipeline.vae, items.images[: cfg.report.mid_block_items])[0]
        ids = tokenizer(items.captions[: len(latents)], padding="max_length", return_tensors="pt").input_ids
        context = pipeline.text_encoder(ids)[0]
        scaled = latents * pipeline.vae.config.scaling_factor
        row.update(part_changes(unet, scaled, context, cfg.seed))
    row["seconds"] = round(time.perf_counter() - clock, 1)
    row["cpu"] = cpu_model()
    with open(log, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    torch.set_num_threads(2)
    print(json.dumps(main(sys.argv[1:]), indent=1))
