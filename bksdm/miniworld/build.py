"""Building a mini world's teacher and classifier from a seed: ``python -m bksdm.miniworld [world=scenes]``.

Writes ``<out>/teacher/`` (a StableDiffusionPipeline folder, loadable as any teacher), ``<out>/classifier.
safetensors`` with ``classifier.json``, and ``<out>/report.json`` (training figures, the classifier's and
the shipped teacher's accuracy, the mid-block check). The folder appears whole or not at all.

The build is restartable: each finished stage (VAE, classifier, U-Net) is kept in ``work_dir`` with the
random state it ended in, and the VAE and the U-Net write a checkpoint there every
``checkpoint_every_n_steps`` steps, so rerunning the same command after a kill picks up where it stopped
and builds the same bits an uninterrupted run does; a larger ``teacher.steps`` trains a finished teacher
on. ``work_dir`` belongs to one set of settings and refuses others.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from bksdm.callbacks.progress_bar import StepProgressBar
from bksdm.data.transforms import uint8_to_unit
from bksdm.distill.speed import check_choice
from bksdm.eval.sampling import write_sampling
from bksdm.miniworld import models
from bksdm.miniworld.assets import load_classifier
from bksdm.miniworld.scoring import attribute_accuracy, generate
from bksdm.miniworld.training import (
    PREDICTION_TYPES,
    ClassifierTraining,
    Pool,
    ShuffledEpochBatches,
    StepBatches,
    StepCheckpoint,
    TeacherTraining,
    VAETraining,
    checkpoint_step,
    encode_pool,
    random_state,
    round_trip,
    set_random_state,
)
from bksdm.miniworld.worlds import WorldKind, world_kind
from bksdm.teachers.builtin import SD_SCHEDULER_CONFIG, write_vocab_files
from bksdm.teachers.loading import dtype_argument
from bksdm.training.atomic import atomic_directory, write_file_atomically
from bksdm.training.checkpoint_io import save_atomically
from bksdm.training.csv_logger import AppendingCSVLogger

DTYPES = {"float32": torch.float32, "float16": torch.float16}
# Lightning's names: bf16 autocast made the scenes U-Net's CPU step 1.3x faster (avx512_bf16, no AMX)
TEACHER_PRECISIONS = ("32-true", "bf16-mixed")
STAGES = ("vae", "classifier", "teacher")  # the classifier first: it can score the teacher on the way
# the settings each stage depends on besides those of the stages before it (whose random state it goes on
# from); the rest (where things go, the device, the report, the stored precision, how often the teacher is
# checkpointed, and teacher.steps, which may grow) can change between a run and its resumption
STAGE_SETTINGS = {
    "vae": ("seed", "world", "pool", "vae"),
    "classifier": ("classifier",),
    "teacher": ("teacher",),
}
SETTINGS = tuple(key for keys in STAGE_SETTINGS.values() for key in keys)
# what the report calls the change part_changes measures for each (part, removal): a teacher whose deep
# stages are idle gives the block-removed students nothing to lose (docs/miniworld.md)
PART_CHANGES = {
    "mid_block_zeroed_change": ("mid_block", "zeroed"),
    "innermost_stage_zeroed_change": ("up_blocks.0", "zeroed"),
    # as BK-SDM-Small removes it: the up path is given the innermost down stage's output
    "mid_block_bypassed_change": ("mid_block", "bypassed"),
}
# a removed part's output: zeros, or its input (only for the mid block, whose output has its input's shape)
REMOVALS = {
    "zeroed": lambda module, args, output: torch.zeros_like(output),
    "bypassed": lambda module, args, output: args[0],
}

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> Path:
    """Trains the three parts of the seed's mini world (resuming from ``cfg.work_dir``) and writes them to
    ``cfg.out``."""
    check_choice("save_dtype", cfg.save_dtype, DTYPES)
    check_choice("teacher.prediction_type", cfg.teacher.prediction_type, PREDICTION_TYPES)
    check_choice("teacher.precision", cfg.teacher.precision, TEACHER_PRECISIONS)
    kind = world_kind(cfg.world.name)
    work = WorkFolder(Path(cfg.work_dir), cfg)
    L.seed_everything(cfg.seed, workers=True)
    report: dict = {"seed": cfg.seed, "world": kind.name, "seconds": {}}
    clock = time.perf_counter()
    captions = kind.captions()
    pool = Pool(kind.items(cfg.pool.train, cfg.seed), captions)
    held_out = held_out_pools(cfg, kind)
    report["seconds"]["render"] = time.perf_counter() - clock

    vae, mean, std = train_vae(cfg, kind, pool, held_out["held_out_items"], work, report)
    scaling_factor = vae.config.scaling_factor

    tokenizer, text_encoder, text_embeds = caption_embeddings(kind, cfg.seed)
    classifier = train_classifier(cfg, kind, pool, held_out, vae, work, report)
    unet = train_teacher(cfg, kind, pool, mean, std, text_embeds, scaling_factor, work, report)

    latents = encode_pool(vae, held_out["held_out_items"].images[: cfg.report.mid_block_items])[0]
    context = text_embeds[held_out["held_out_items"].caption_index[: len(latents)]]
    report.update(part_changes(unet, latents * scaling_factor, context, cfg.seed))

    out = Path(cfg.out)
    with atomic_directory(out) as staging:
        # drawn by default as its caption accuracy below is measured (sampling.json)
        sampling = {
            "guidance_scale": cfg.report.guidance_scale,
            "num_inference_steps": cfg.report.num_inference_steps,
        }
        save_pipeline(
            vae, text_encoder, tokenizer, unet, staging / "teacher", DTYPES[cfg.save_dtype], sampling,
            cfg.teacher.prediction_type,
        )  # fmt: skip
        save_file(
            {k: v.to(DTYPES[cfg.save_dtype]) for k, v in classifier.state_dict().items()},
            staging / "classifier.safetensors",
        )
        (staging / "classifier.json").write_text(json.dumps(classifier.config) + "\n")
        # the teacher as shipped (stored precision, reloaded): does it draw its captions?
        shipped = StableDiffusionPipeline.from_pretrained(
            staging / "teacher", **dtype_argument(torch.float32)
        )
        stored_classifier = load_classifier(staging)
        for name, texts in report_captions(kind, cfg.report, held_out).items():
            report[name] = teacher_accuracy(shipped, stored_classifier, texts, cfg.report, kind)
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return out


def caption_embeddings(kind: WorldKind, seed: int) -> tuple:
    """The world's tokenizer, its frozen text encoder (drawn from ``seed``) and the encoder's output
    (C + 1, T, D) for every caption of the world and, last, the empty one."""
    tokenizer = models.tokenizer(kind.text_tokens)
    text_encoder = models.text_encoder(seed, tokenizer)
    ids = tokenizer([*kind.captions(), ""], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        return tokenizer, text_encoder, text_encoder(ids)[0]


def held_out_pools(cfg: DictConfig, kind: WorldKind) -> dict[str, Pool]:
    """The items training never sees, by report name: the train split's after the pool
    (``held_out_items``), and each held-out split's (``<split>_split``), ``pool.held_out`` of each."""
    captions = kind.captions()
    pools = {"held_out_items": Pool(kind.items(cfg.pool.held_out, cfg.seed, offset=cfg.pool.train), captions)}
    for split in kind.held_out_splits:
        pools[f"{split}_split"] = Pool(kind.items(cfg.pool.held_out, cfg.seed, split=split), captions)
    return pools


def train_vae(
    cfg: DictConfig, kind: WorldKind, pool: Pool, held_out: Pool, work: WorkFolder, report: dict
) -> tuple[AutoencoderKL, torch.Tensor, torch.Tensor]:
    """The trained VAE (its ``scaling_factor`` set) and the posterior mean and std of every pool image."""
    folder = work.path / "vae"
    if (record := work.finished("vae")) is not None:
        report.update(record)
        vae = AutoencoderKL.from_pretrained(folder / "model").eval().requires_grad_(False)
        if (folder / "latents.pt").is_file():
            return vae, *torch.load(folder / "latents.pt")
        # a cache (1.6 GB for the scenes pool) that the finished stages carried to another machine leave
        # behind (docs/miniworld.md); encoding draws nothing random, so the bits are the VAE's
        log.info("vae: encoding the pool again into %s", folder / "latents.pt")
        latents = encode_pool(vae, pool.images)
        save_atomically(latents, folder / "latents.pt")
        return vae, *latents
    vae = models.vae(cfg.seed, kind.resolution, cfg.vae.block_out_channels)
    stage = VAETraining(vae, pool.images, cfg.vae.lr, cfg.vae.kl_weight, cfg.vae.crop, cfg.vae.lr_schedule)
    checkpoint = folder / "last.ckpt"
    batches = ShuffledEpochBatches(len(pool), cfg.vae.batch_size, cfg.seed, checkpoint_step(checkpoint))
    # a generator of its own: the loader would draw its workers' seed from the global one, which crops use
    loader = DataLoader(batches, batch_size=None, generator=torch.Generator())
    seconds = fit(stage, loader, cfg.vae.steps, "vae", cfg, checkpoint)
    vae.eval().requires_grad_(False)
    trips = round_trip(vae, held_out.images)
    mse = float(((uint8_to_unit(trips) - uint8_to_unit(held_out.images)) ** 2).mean())
    mean, std = encode_pool(vae, pool.images)
    # SD's convention: latents scaled to unit variance
    scaling_factor = float(1.0 / (mean + std * torch.randn_like(mean)).std())
    vae.register_to_config(scaling_factor=scaling_factor)
    record = {
        "vae_held_out_psnr_db": float(10 * torch.log10(torch.tensor(4.0 / mse))),
        "scaling_factor": scaling_factor,
    }
    vae.save_pretrained(folder / "model")
    save_atomically((mean, std), folder / "latents.pt")  # a rerun trusts a latents file it finds
    work.finish("vae", record)
    report["seconds"]["vae"] = seconds
    report.update(record)
    return vae, mean, std


def train_teacher(
    cfg: DictConfig,
    kind: WorldKind,
    pool: Pool,
    mean: torch.Tensor,
    std: torch.Tensor,
    text_embeds: torch.Tensor,
    scaling_factor: float,
    work: WorkFolder,
    report: dict,
) -> UNet2DConditionModel:
    """The U-Net trained for ``teacher.steps``: from the work folder's finished one, on from its last
    checkpoint, or from scratch."""
    folder = work.path / "teacher"
    record = work.finished("teacher", steps=cfg.teacher.steps)
    if record is not None:
        report.update(record)
        return UNet2DConditionModel.from_pretrained(folder / "model").eval().requires_grad_(False)
    unet = teacher_unet(cfg, kind)
    stage = TeacherTraining(
        unet, mean, std, pool.caption_index, text_embeds, scaling_factor, cfg.seed, cfg.teacher.lr,
        cfg.teacher.weight_decay, cfg.teacher.warmup_steps, cfg.teacher.caption_dropout,
        cfg.teacher.prediction_type, cfg.teacher.skip_dropout,
    )  # fmt: skip
    checkpoint = folder / "last.ckpt"
    batches = StepBatches(len(pool), cfg.teacher.batch_size, cfg.seed, checkpoint_step(checkpoint))
    report["seconds"]["teacher"] = fit(
        stage,
        DataLoader(batches, batch_size=None),
        cfg.teacher.steps,
        "teacher",
        cfg,
        checkpoint,
        gradient_clip_val=1.0,
        precision=cfg.teacher.precision,
    )
    unet.eval().requires_grad_(False)
    unet.save_pretrained(folder / "model")
    record = {"teacher_parameters": sum(p.numel() for p in unet.parameters())}
    work.finish("teacher", record, steps=cfg.teacher.steps)
    report.update(record)
    return unet


def teacher_unet(cfg: DictConfig, kind: WorldKind) -> UNet2DConditionModel:
    """The teacher's U-Net as the build starts it, from the seed."""
    return models.unet(
        cfg.seed,
        models.latent_side(kind.resolution, cfg.vae.block_out_channels),
        cfg.teacher.block_out_channels,
        cfg.teacher.attention_heads,
        cfg.teacher.top_stage_attention,
    )


def train_classifier(
    cfg: DictConfig,
    kind: WorldKind,
    pool: Pool,
    held_out: dict[str, Pool],
    vae: AutoencoderKL,
    work: WorkFolder,
    report: dict,
) -> models.AttributeClassifier:
    """The classifier, trained on the pool, items of each held-out split (it is an instrument: it must read
    the pairs the teacher never saw) and VAE round trips, and its held-out accuracy in ``report``."""
    folder = work.path / "classifier"
    if (record := work.finished("classifier")) is not None:
        report.update(record)
        return load_classifier(folder)
    classifier = models.AttributeClassifier(heads=kind.slots, resolution=kind.resolution)
    # the held-out splits' training items come after their evaluation items
    extra = [
        Pool(
            kind.items(cfg.classifier.held_out_split_items, cfg.seed, cfg.pool.held_out, split),
            kind.captions(),
        )
        for split in kind.held_out_splits
    ]
    # generated images are VAE decodes: the classifier learns to read those as well as real ones, of the
    # pool's first items and of every held-out split item (whose round trips it would misread otherwise)
    tripped = [pool.images[: cfg.classifier.round_trips], *(p.images for p in extra)]
    tripped_labels = [pool.labels[: cfg.classifier.round_trips], *(p.labels for p in extra)]
    images = torch.cat([pool.images, *(p.images for p in extra), *(round_trip(vae, i) for i in tripped)])
    labels = torch.cat([pool.labels, *(p.labels for p in extra), *tripped_labels])
    dataset = TensorDataset(images, labels)
    loader = DataLoader(
        dataset, batch_size=cfg.classifier.batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    stage = ClassifierTraining(classifier, cfg.classifier.lr)
    seconds = fit(stage, loader, cfg.classifier.steps, "classifier", cfg)
    classifier.eval().requires_grad_(False)
    scores = {}
    for name, items in held_out.items():
        pictures = {"real": items.images, "vae_round_trip": round_trip(vae, items.images)}
        scores[name] = {
            source: attribute_accuracy(
                classifier, uint8_to_unit(images), items.captions, labels_of=kind.labels_of
            )
            for source, images in pictures.items()
        }
    # the 64 px world's report has always named its one held-out set "classifier_held_out"
    record = {
        "classifier_held_out": scores.pop("held_out_items"),
        **{f"classifier_{k}": v for k, v in scores.items()},
    }
    save_file(classifier.state_dict(), folder / "classifier.safetensors")
    (folder / "classifier.json").write_text(json.dumps(classifier.config) + "\n")
    work.finish("classifier", record)
    report["seconds"]["classifier"] = seconds
    report.update(record)
    return classifier


def fit(
    module: L.LightningModule,
    loader: DataLoader,
    steps: int,
    name: str,
    cfg: DictConfig,
    checkpoint: Path | None = None,
    **options,
) -> float:
    """Trains ``module`` for ``steps`` optimizer steps, writing ``checkpoint`` every
    ``cfg.checkpoint_every_n_steps`` (where given) and resuming from it if it exists; its metrics go to
    ``<log_dir>/<name>/metrics.csv`` (a resumed stage appends to it). Returns the seconds it took."""
    logger = AppendingCSVLogger(cfg.log_dir, name=name, version="")
    callbacks = [StepProgressBar(refresh_rate=cfg.log_every_n_steps, description=name)]
    resume = None
    if checkpoint is not None:
        callbacks.append(StepCheckpoint(checkpoint, cfg.checkpoint_every_n_steps))
        if checkpoint.is_file():
            resume = checkpoint
            drop_rows_from(Path(logger.log_dir) / "metrics.csv", checkpoint_step(checkpoint))
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every_n_steps,
        accelerator=cfg.accelerator,
        devices=1,
        deterministic=True,
        callbacks=callbacks,
        **options,
    )
    start = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=resume)
    return time.perf_counter() - start


def drop_rows_from(metrics: Path, step: int) -> None:
    """A resumed stage trains the steps from its checkpoint's on again: their rows leave ``metrics``."""
    if not metrics.is_file():
        return
    with metrics.open(newline="") as lines:
        reader = csv.DictReader(lines)
        rows = [row for row in reader if int(row["step"]) < step]
    with metrics.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(rows)


class WorkFolder:
    """A build's finished stages, each with the random state it ended in (``<stage>/finished.pt``), and
    their files. It keeps the settings its stages were begun with (``settings.json``, the ``SETTINGS``
    keys): a changed setting is taken only where no stage that depends on it has begun (so a carried
    folder's U-Net may start with another ``teacher.precision``), and refused otherwise, naming what
    changed and the stages that hold work."""

    def __init__(self, path: Path, cfg: DictConfig):
        self.path = path
        chosen = {key: cfg[key] for key in SETTINGS}  # resolving all of cfg would need Hydra's run
        settings = _flat(OmegaConf.to_container(OmegaConf.create(chosen), resolve=True), SETTINGS)
        settings.pop("teacher.steps")
        file = path / "settings.json"
        saved = json.loads(file.read_text()) if file.is_file() else None
        if saved != settings:
            if saved is not None:
                changed = sorted(
                    key for key in set(saved) | set(settings) if saved.get(key) != settings.get(key)
                )
                self._check_unbegun(changed, saved, settings)
                log.info("work_dir=%r: settings taken by stages not begun: %s", str(path), ", ".join(changed))
            path.mkdir(parents=True, exist_ok=True)
            write_file_atomically(file, json.dumps(settings, indent=2) + "\n")
        for stage in STAGES:
            (path / stage).mkdir(exist_ok=True)

    def _check_unbegun(self, changed: list[str], saved: dict, settings: dict) -> None:
        """Raises unless every stage that depends on a ``changed`` key is empty."""
        first = min(
            STAGES.index(stage)
            for key in changed
            for stage, keys in STAGE_SETTINGS.items()
            if key.split(".")[0] in keys
        )
        begun = [
            str(self.path / stage)
            for stage in STAGES[first:]
            if (self.path / stage).is_dir() and any((self.path / stage).iterdir())
        ]
        if not begun:
            return
        newer = [key for key in changed if key not in saved]
        hint = (
            f"; settings newer than the folder ({', '.join(newer)}): if it was built as their defaults, add "
            f"them to {str(self.path / 'settings.json')!r} with those values to resume it"
            if newer
            else ""
        )
        raise ValueError(
            f"work_dir={str(self.path)!r} holds a build started with other settings "
            f"({'; '.join(f'{key}: {saved.get(key)!r} -> {settings.get(key)!r}' for key in changed)}), and "
            f"stages that depend on them hold work ({', '.join(begun)}): rerun with its settings to resume "
            f"it, empty those folders to train them again with these, or give another work_dir{hint}"
        )

    def finished(self, stage: str, steps: int | None = None) -> dict | None:
        """The report entries of ``stage`` if it finished (for ``steps`` training steps, where given), with
        the random state restored to where it ended; None if it has to run. A stage that runs again
        unfinishes the later ones, whose random state followed from it."""
        file = self.path / stage / "finished.pt"
        if file.is_file():
            saved = torch.load(file, weights_only=False)
            if steps is None or saved["steps"] == steps:
                set_random_state(saved["random_state"])
                return saved["record"]
            if steps < saved["steps"]:
                raise ValueError(
                    f"{stage}.steps={steps}: the {stage} in work_dir={str(self.path)!r} has trained "
                    f"{saved['steps']} steps already; give {saved['steps']} or more, or another work_dir"
                )
        (self.path / stage / "finished.pt").unlink(missing_ok=True)
        for later in STAGES[STAGES.index(stage) + 1 :]:
            shutil.rmtree(self.path / later)
            (self.path / later).mkdir()
        return None

    def finish(self, stage: str, record: dict, steps: int | None = None) -> None:
        saved = {"record": record, "steps": steps, "random_state": random_state()}
        save_atomically(saved, self.path / stage / "finished.pt")


def _flat(tree: dict, keys: tuple[str, ...], prefix: str = "") -> dict:
    flat = {}
    for key in keys:
        value = tree.get(key)
        if isinstance(value, dict):
            flat |= _flat(value, tuple(value), f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@torch.no_grad()
def part_changes(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    context: torch.Tensor,
    seed: int,
    parts: dict[str, tuple[str, str]] = PART_CHANGES,
    noise_bands: int = 4,
) -> dict[str, float | dict[str, float]]:
    """How much the U-Net's prediction moves when one part is removed, for each ``name: (part, removal)`` of
    ``parts``: the part is ``mid_block`` or an up stage (``up_blocks.0`` is the innermost one, whose input
    is the mid block's), and its output is ``"zeroed"`` or, for the mid block, ``"bypassed"`` (replaced by
    its input). The figure is the mean square of the change over the mean square of the prediction, on
    ``latents`` (B, 4, h, w; scaled) noised at uniformly drawn timesteps, with their captions' ``context``
    (B, T, D). Near 0: the part is ignored (the 64 px teacher's mid block works at 1x1).

    ``<name>_by_timestep`` gives the same ratio with every latent noised in each of ``noise_bands`` equal
    bands of timesteps (``"0-249"``, ...): a deep part can be idle at low noise, where denoising is local,
    and at work at high noise, where a sample's layout is decided."""
    accepted = {"zeroed": ["mid_block", *(f"up_blocks.{i}" for i in range(len(unet.up_blocks)))],
                "bypassed": ["mid_block"]}  # fmt: skip
    for part, removal in parts.values():
        if removal not in accepted:
            raise ValueError(f"removal={removal!r}: accepted are {list(accepted)}")
        if part not in accepted[removal]:
            raise ValueError(f"part={part!r} {removal}: accepted are {accepted[removal]}")
    generator = torch.Generator().manual_seed(seed)
    scheduler = DDPMScheduler.from_config(SD_SCHEDULER_CONFIG)
    steps = scheduler.config.num_train_timesteps
    if noise_bands < 1 or steps % noise_bands:
        raise ValueError(f"noise_bands={noise_bands}: accepted are divisors of the {steps} timesteps")
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, steps, (len(latents),), generator=generator)
    width = steps // noise_bands
    bands = {
        f"{low}-{low + width - 1}": torch.randint(low, low + width, (len(latents),), generator=generator)
        for low in range(0, steps, width)
    }
    changes: dict = {name: {} for name in parts}
    for band, drawn in {"uniform": timesteps, **bands}.items():
        noisy = scheduler.add_noise(latents, noise, drawn)
        prediction = unet(noisy, drawn, context).sample
        for name, (part, removal) in parts.items():
            hook = unet.get_submodule(part).register_forward_hook(REMOVALS[removal])
            try:
                removed = unet(noisy, drawn, context).sample
            finally:
                hook.remove()
            changes[name][band] = float((removed - prediction).pow(2).mean() / prediction.pow(2).mean())
    figures = {}
    for name, by_band in changes.items():
        figures[name] = by_band.pop("uniform")
        figures[f"{name}_by_timestep"] = by_band
    return figures


def save_pipeline(
    vae,
    text_encoder,
    tokenizer,
    unet,
    folder: Path,
    dtype: torch.dtype,
    sampling: dict | None = None,
    prediction_type: str = "epsilon",
) -> None:
    """The parts as a StableDiffusionPipeline folder with SD's scheduler, and ``sampling.json``: the
    guidance scale and step count it is drawn with by default (``sampling`` over SD's)."""
    pipeline = assemble_pipeline(vae, text_encoder, tokenizer, unet, prediction_type)
    for model in (vae, text_encoder, unet):
        torch.nn.Module.to(model, dtype)
    pipeline.save_pretrained(folder, safe_serialization=True)
    write_vocab_files(tokenizer, folder / "tokenizer")
    write_sampling(folder, sampling or {})
    for model in (vae, text_encoder, unet):
        torch.nn.Module.to(model, torch.float32)


def assemble_pipeline(
    vae, text_encoder, tokenizer, unet, prediction_type: str = "epsilon"
) -> StableDiffusionPipeline:
    """The parts as the StableDiffusionPipeline a build ships: SD's scheduler config with the U-Net's
    ``prediction_type``, PNDM sampling."""
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler.from_config({**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type})
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


def report_captions(kind: WorldKind, settings: DictConfig, held_out: dict[str, Pool]) -> dict[str, list[str]]:
    """The captions the built teacher draws for its report, by report entry: every caption of the world
    (``report.captions`` null), or those of the first ``report.captions`` items of each held-out set."""
    if settings.captions is None:
        return {"teacher_accuracy": kind.captions()}
    return {
        "teacher_accuracy" if name == "held_out_items" else f"teacher_accuracy_{name}": pool.captions[: settings.captions]
        for name, pool in held_out.items()
    }  # fmt: skip


def teacher_accuracy(
    pipeline,
    classifier: models.AttributeClassifier,
    captions: list[str],
    settings: DictConfig,
    kind: WorldKind,
) -> dict:
    """The classifier's per-slot accuracy on the teacher ``pipeline``'s images of ``captions``, drawn with
    ``settings`` (``report``: seeds, num_inference_steps, guidance_scale)."""
    pipeline.set_progress_bar_config(disable=True)
    seeds = list(range(settings.seeds))
    images = generate(pipeline, captions, seeds, settings.num_inference_steps, settings.guidance_scale)
    return attribute_accuracy(classifier, images, captions * len(seeds), labels_of=kind.labels_of)
