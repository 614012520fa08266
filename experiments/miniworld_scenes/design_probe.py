"""Does a U-Net design keep its mid block at work? Trains the relational world's U-Net from scratch for a few
hundred steps, with the build's recipe, batches and draws and any ``teacher.*`` override, and at each probe
step appends a row to ``design_probe.jsonl`` beside this file: the held-out loss, and how much zeroing the
mid block or bypassing it (its output replaced by its input, as BK-SDM-Small removes it) moves the
prediction (the report's ``part_changes``).

    python experiments/miniworld_scenes/design_probe.py --steps 500 --at 250 500 teacher.skip_dropout=0.1

The overrides are ``python -m bksdm.miniworld world=scenes``'s (conf/miniworld.yaml). It needs the build's
finished VAE stage with its pool encodings (``vae/latents.pt``) in ``work_dir``, and leaves the work folder
as it was. It trains in float32, whatever ``teacher.precision`` says: about 5.5 s a step of batch 64 on one
thread of an AVX2-only AMD EPYC.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bksdm.bench.run import cpu_model
from bksdm.distill.losses import ddpm_task_target
from bksdm.miniworld import scenes
from bksdm.miniworld.build import caption_embeddings, part_changes, teacher_unet
from bksdm.miniworld.training import Pool, StepBatches, TeacherTraining, encode_pool
from bksdm.miniworld.worlds import world_kind
from bksdm.teachers.builtin import SD_SCHEDULER_CONFIG

HERE = Path(__file__).resolve().parent
CONF = HERE.parents[1] / "conf"
ITEMS, DRAWS = 64, 8  # held-out items, and noise draws of each for the loss


def main(argv: list[str] | None = None, log: Path = HERE / "design_probe.jsonl") -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--at", type=int, nargs="+", required=True, help="the steps probed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("miniworld", overrides=["world=scenes", *args.overrides])
    work = Path(cfg.work_dir)
    if not (work / "vae/latents.pt").is_file():
        raise SystemExit(f"{work / 'vae/latents.pt'} is missing: run the build's VAE stage first")
    kind = world_kind(cfg.world.name)
    captions = kind.captions()
    mean, std = torch.load(work / "vae/latents.pt")
    # the pool's captions, drawn without rendering its 50,000 pictures
    index = {text: i for i, text in enumerate(captions)}
    caption_index = torch.tensor([index[scenes.scene(i, cfg.seed).caption] for i in range(cfg.pool.train)])
    text_embeds = caption_embeddings(kind, cfg.seed)[2]
    vae = AutoencoderKL.from_pretrained(work / "vae/model").eval().requires_grad_(False)
    # the first of the build's held-out items (held_out_pools), without rendering the rest
    held = Pool(kind.items(min(ITEMS, cfg.pool.held_out), cfg.seed, offset=cfg.pool.train), captions)
    with torch.no_grad():
        latents = encode_pool(vae, held.images)[0] * vae.config.scaling_factor
    context = text_embeds[held.caption_index].to(args.device)
    latents = latents.to(args.device)

    torch.manual_seed(cfg.seed)
    unet = teacher_unet(cfg, kind).to(args.device)
    stage = TeacherTraining(
        unet, mean, std, caption_index, text_embeds, vae.config.scaling_factor, cfg.seed, cfg.teacher.lr,
        cfg.teacher.weight_decay, cfg.teacher.warmup_steps, cfg.teacher.caption_dropout,
        cfg.teacher.prediction_type, cfg.teacher.skip_dropout,
    ).to(args.device)  # fmt: skip
    stage.log = lambda *args, **kwargs: None  # no Trainer to log to
    optimizers = stage.configure_optimizers()
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    settings = {
        key: value
        for key, value in OmegaConf.to_container(cfg.teacher).items()
        if key not in ("steps", "precision")
    }
    rows, clock = [], time.perf_counter()
    for step, indices in StepBatches(cfg.pool.train, cfg.teacher.batch_size, cfg.seed):
        if step >= args.steps:
            break
        loss = stage.training_step((step, indices.to(args.device)), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step + 1 in args.at:
            unet.eval()
            with torch.no_grad():
                row = {"step": step + 1, "teacher": settings, **probe(unet, latents, context, cfg)}
            unet.train()
            row |= {"seconds_per_step": (time.perf_counter() - clock) / (step + 1), "cpu": cpu_model(),
                    "device": args.device, "threads": torch.get_num_threads()}  # fmt: skip
            print(json.dumps(row), flush=True)
            with log.open("a") as file:
                file.write(json.dumps(row) + "\n")
            rows.append(row)
    return rows


def probe(unet, latents: torch.Tensor, context: torch.Tensor, cfg) -> dict:
    """The held-out loss (``DRAWS`` noise draws of each item, every skip in place) and the report's
    ``part_changes`` (the mid block zeroed and bypassed, the innermost up stage zeroed)."""
    scheduler = DDPMScheduler.from_config(
        {**SD_SCHEDULER_CONFIG, "prediction_type": cfg.teacher.prediction_type}
    )
    generator = torch.Generator().manual_seed(5)
    loss = 0.0
    for _ in range(DRAWS):
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        timesteps = torch.randint(0, 1000, (len(latents),), generator=generator).to(latents.device)
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, context).sample
        loss += float((prediction - ddpm_task_target(scheduler, latents, noise, timesteps)).pow(2).mean())
    changes = part_changes(unet.cpu(), latents.cpu(), context.cpu(), cfg.seed)  # its draws are on the CPU
    unet.to(latents.device)
    return {"held_out_loss": loss / DRAWS, **changes}


if __name__ == "__main__":
    main()
