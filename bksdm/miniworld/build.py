"""Building the mini-world teacher and classifier from a seed: ``python -m bksdm.miniworld``.

Writes ``<out>/teacher/`` (a StableDiffusionPipeline folder, loadable as any teacher), ``<out>/classifier.
safetensors`` with ``classifier.json``, and ``<out>/report.json`` (training figures and the shipped
teacher's caption accuracy). The folder appears whole or not at all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from bksdm.callbacks.progress_bar import StepProgressBar
from bksdm.data.transforms import uint8_to_unit
from bksdm.eval.sampling import write_sampling
from bksdm.miniworld import models
from bksdm.miniworld.assets import load_classifier
from bksdm.miniworld.scoring import attribute_accuracy, generate
from bksdm.miniworld.training import (
    ClassifierTraining,
    Pool,
    TeacherTraining,
    VAETraining,
    encode_pool,
    round_trip,
)
from bksdm.miniworld.world import all_captions
from bksdm.teachers.builtin import SD_SCHEDULER_CONFIG, write_vocab_files
from bksdm.training.atomic import atomic_directory

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def build(cfg: DictConfig) -> Path:
    """Trains the three parts of the seed's mini world and writes them to ``cfg.out``."""
    if cfg.save_dtype not in DTYPES:
        raise ValueError(f"save_dtype={cfg.save_dtype!r}: accepted are {list(DTYPES)}")
    L.seed_everything(cfg.seed, workers=True)
    report: dict = {"seed": cfg.seed, "seconds": {}}
    clock = time.perf_counter()
    pool = Pool(cfg.pool.train, cfg.seed)
    held_out = Pool(cfg.pool.held_out, cfg.seed, offset=cfg.pool.train)  # items training never sees
    report["seconds"]["render"] = time.perf_counter() - clock

    vae = models.vae(cfg.seed)
    stage = VAETraining(vae, cfg.vae.lr, cfg.vae.kl_weight)
    report["seconds"]["vae"] = fit(
        stage, pool.loader(cfg.vae.batch_size, cfg.seed), cfg.vae.steps, "vae", cfg
    )
    vae.eval().requires_grad_(False)
    trips = round_trip(vae, held_out.images)
    mse = float(((uint8_to_unit(trips) - uint8_to_unit(held_out.images)) ** 2).mean())
    report["vae_held_out_psnr_db"] = float(10 * torch.log10(torch.tensor(4.0 / mse)))
    mean, std = encode_pool(vae, pool.images)
    # SD's convention: latents scaled to unit variance
    scaling_factor = float(1.0 / (mean + std * torch.randn_like(mean)).std())
    vae.register_to_config(scaling_factor=scaling_factor)
    report["scaling_factor"] = scaling_factor

    tokenizer = models.tokenizer()
    text_encoder = models.text_encoder(cfg.seed, tokenizer)
    texts = [text for text, _ in all_captions()] + [""]
    ids = tokenizer(texts, padding="max_length", max_length=models.TEXT_TOKENS, return_tensors="pt").input_ids
    with torch.no_grad():
        text_embeds = text_encoder(ids)[0]

    unet = models.unet(cfg.seed)
    stage = TeacherTraining(
        unet, text_embeds, scaling_factor, cfg.teacher.lr, cfg.teacher.weight_decay,
        cfg.teacher.warmup_steps, cfg.teacher.caption_dropout,
    )  # fmt: skip
    loader = pool.loader(cfg.teacher.batch_size, cfg.seed, mean, std)
    report["seconds"]["teacher"] = fit(
        stage, loader, cfg.teacher.steps, "teacher", cfg, gradient_clip_val=1.0
    )
    unet.eval().requires_grad_(False)

    classifier = models.AttributeClassifier()
    # generated images are VAE decodes: the classifier learns to read those as well as real ones
    round_trips = round_trip(vae, pool.images[: cfg.classifier.round_trips])
    images = torch.cat([pool.images, round_trips])
    labels = torch.cat([pool.labels, pool.labels[: len(round_trips)]])
    loader = DataLoader(
        TensorDataset(images, labels), batch_size=cfg.classifier.batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    stage = ClassifierTraining(classifier, cfg.classifier.lr)
    report["seconds"]["classifier"] = fit(stage, loader, cfg.classifier.steps, "classifier", cfg)
    classifier.eval().requires_grad_(False)
    report["classifier_held_out"] = {
        "real": attribute_accuracy(classifier, uint8_to_unit(held_out.images), held_out.captions),
        "vae_round_trip": attribute_accuracy(classifier, uint8_to_unit(trips), held_out.captions),
    }

    out = Path(cfg.out)
    with atomic_directory(out) as staging:
        # drawn by default as its caption accuracy below is measured (sampling.json)
        sampling = {
            "guidance_scale": cfg.report.guidance_scale,
            "num_inference_steps": cfg.report.num_inference_steps,
        }
        save_pipeline(
            vae, text_encoder, tokenizer, unet, staging / "teacher", DTYPES[cfg.save_dtype], sampling
        )
        save_file(
            {k: v.to(DTYPES[cfg.save_dtype]) for k, v in classifier.state_dict().items()},
            staging / "classifier.safetensors",
        )
        (staging / "classifier.json").write_text(
            json.dumps({"width": classifier.width, "feature_dim": classifier.feature_dim}) + "\n"
        )
        # the teacher as shipped (stored precision, reloaded): does it draw its captions?
        report["teacher_accuracy"] = teacher_accuracy(staging, cfg.report)
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return out


def fit(
    module: L.LightningModule, loader: DataLoader, steps: int, name: str, cfg: DictConfig, **options
) -> float:
    """Trains ``module`` for ``steps`` optimizer steps; its metrics go to ``<log_dir>/<name>/metrics.csv``.
    Returns the seconds it took."""
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        logger=CSVLogger(cfg.log_dir, name=name, version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every_n_steps,
        accelerator=cfg.accelerator,
        devices=1,
        deterministic=True,
        callbacks=[StepProgressBar(refresh_rate=cfg.log_every_n_steps, description=name)],
        **options,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - start


def save_pipeline(
    vae, text_encoder, tokenizer, unet, folder: Path, dtype: torch.dtype, sampling: dict | None = None
) -> None:
    """The parts as a StableDiffusionPipeline folder with SD's scheduler, and ``sampling.json``: the
    guidance scale and step count it is drawn with by default (``sampling`` over SD's)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    for model in (vae, text_encoder, unet):
        torch.nn.Module.to(model, dtype)
    pipeline.save_pretrained(folder, safe_serialization=True)
    write_vocab_files(tokenizer, folder / "tokenizer")
    write_sampling(folder, sampling or {})
    for model in (vae, text_encoder, unet):
        torch.nn.Module.to(model, torch.float32)


def teacher_accuracy(folder: Path, settings: DictConfig) -> dict:
    from diffusers import StableDiffusionPipeline

    from bksdm.teachers.loading import dtype_argument

    pipeline = StableDiffusionPipeline.from_pretrained(folder / "teacher", **dtype_argument(torch.float32))
    pipeline.set_progress_bar_config(disable=True)
    captions = [text for text, _ in all_captions()]
    seeds = list(range(settings.seeds))
    images = generate(pipeline, captions, seeds, settings.num_inference_steps, settings.guidance_scale)
    return attribute_accuracy(load_classifier(folder), images, captions * len(seeds))
