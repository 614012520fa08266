"""From a composed training config to checked, built objects, shared by ``train`` and ``bench``: the
checks that must stop a run before anything heavy loads, then the module, the logger and the batch split."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bksdm.arch import student_config
from bksdm.arch.depth import depth_student_config, is_transformer
from bksdm.arch.report import VAE_SCALE, check_latent_size
from bksdm.cli.value_types import check_value_types
from bksdm.distill.taps import check_tap_pairs, resolve_tap_pairs
from bksdm.teachers.frozen import resolve_frozen_dtype
from bksdm.teachers.loading import ComponentError, teacher_denoiser_config, vae_config, vae_scale
from bksdm.training.resume import wandb_run_id

DATA_LOCATIONS = {
    "root": "an image folder with metadata.csv (file_name,text) or .txt captions: data.root=/path/to/folder",
    "urls": "webdataset shards: data.urls='/path/to/{00000..00099}.tar' (or pipe: / http URLs)",
}


def check_config(cfg: DictConfig) -> None:
    """Config errors that must stop the run before anything heavy is loaded."""
    check_value_types(cfg)
    check_data_location(cfg)
    check_precision(cfg)
    check_model_config(cfg, cfg.data.get("resolution"))
    instantiate(cfg.loss)  # its weights are checked when it is built (all three at 0 is an error)


# what each accelerator trains in, among the precisions the README names
CPU_PRECISIONS = ("bf16-mixed", "32", "32-true")


def check_precision(cfg: DictConfig) -> None:
    """fp16 mixed precision is a GPU feature: on a CPU Lightning would quietly swap it for bf16."""
    accelerator = cfg.trainer.get("accelerator", "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    precision = str(cfg.trainer.get("precision"))
    if on_cpu and precision in ("16-mixed", "16"):
        raise ValueError(
            f"trainer.precision={precision} needs a GPU (fp16 autocast with loss scaling), and this run "
            f"trains on the CPU: accepted there are {', '.join(CPU_PRECISIONS)} (bf16-mixed is the default)"
        )
    strategy = cfg.trainer.get("strategy")
    fsdp = OmegaConf.is_dict(strategy) and str(strategy.get("_target_", "")).endswith("FSDPStrategy")
    if on_cpu and fsdp and precision.endswith("-mixed"):
        raise ValueError(
            f"trainer=fsdp with trainer.precision={precision} on the CPU: Lightning's FSDP mixed precision "
            "autocasts CUDA only, so on a CPU the bf16 weights would meet fp32 inputs; accepted on the CPU: "
            "trainer.precision=32 (a GPU takes bf16-mixed)"
        )


def check_data_location(cfg: DictConfig) -> None:
    for key, what in DATA_LOCATIONS.items():
        # `in` on a DictConfig is False for a ??? value, so look at the keys
        if key in cfg.data.keys() and OmegaConf.is_missing(cfg.data, key):  # noqa: SIM118
            raise ValueError(
                f"data.{key} is not set: this data source reads {what}. Run `python -m bksdm.train "
                f"data.{key}=...`, or pick another source, e.g. `experiment=demo` or `data=synthetic`."
            )


def check_model_config(
    cfg: DictConfig, resolution: int | None, resolution_key: str = "data.resolution"
) -> None:
    """The student fits the teacher, images of ``resolution`` pixels fit the U-Net, and the step's
    switches are valid."""
    teacher = teacher_config(cfg)
    if is_transformer(teacher):
        check_transformer_config(cfg, teacher, resolution, resolution_key)
    else:
        check_unet_config(cfg, teacher, resolution, resolution_key)
    check_fused_clipping(cfg)
    instantiate(cfg.speed)  # its switches are checked when it is built
    if cfg.get("loss") and cfg.loss.get("w_feat"):
        check_taps(cfg, teacher)


def check_unet_config(cfg: DictConfig, teacher: dict, resolution: int | None, resolution_key: str) -> None:
    """The student's removal fits the teacher U-Net, which takes no added conditioning but SDXL's, and
    images of ``resolution`` pixels pass its every downsampler."""
    try:
        student_config(teacher, OmegaConf.to_container(cfg.arch.removal))
    except ValueError as error:
        raise ValueError(f"arch={cfg.arch.name} does not fit teacher={cfg.teacher.name}: {error}") from error
    if teacher.get("addition_embed_type") not in (None, "text_time"):
        raise ValueError(
            f"teacher={cfg.teacher.name}'s U-Net takes added conditioning of type "
            f"{teacher['addition_embed_type']!r}, which bksdm's distillation step does not feed: accepted are "
            "none (SD-v1/v2) and 'text_time' (SDXL's pooled text embedding and size and crop ids)"
        )
    if resolution is not None:
        scale = teacher_vae_scale(cfg)
        try:
            if resolution % scale:
                raise ValueError(f"the VAE downsamples by {scale}")
            check_latent_size(teacher, resolution // scale)
        except ValueError as error:
            raise ValueError(
                f"{resolution_key}={resolution} cannot go through teacher={cfg.teacher.name}'s U-Net: {error}; "
                f"accepted are multiples of {scale * 2 ** (len(teacher['block_out_channels']) - 1)} pixels "
                f"(the teacher was trained at {cfg.teacher.resolution})"
            ) from error


def check_transformer_config(
    cfg: DictConfig, teacher: dict, resolution: int | None, resolution_key: str
) -> None:
    """A transformer teacher's student keeps blocks the teacher has, and images of ``resolution`` pixels
    make whole patches (VAE 8x, then 2x2 patches: multiples of 16 px) within SD3's position table."""
    try:
        depth_student_config(teacher, OmegaConf.to_container(cfg.arch.removal))
    except ValueError as error:
        raise ValueError(
            f"arch={cfg.arch.name} does not fit teacher={cfg.teacher.name}: {error} (a transformer student's "
            "removal lists the teacher blocks each stack keeps: docs/transformers.md)"
        ) from error
    if resolution is not None:
        side = 2 * VAE_SCALE
        largest = teacher.get("pos_embed_max_size", 0) * teacher.get("patch_size", 2) * VAE_SCALE or None
        if resolution % side or (largest and resolution > largest):
            raise ValueError(
                f"{resolution_key}={resolution} cannot go through teacher={cfg.teacher.name}'s transformer: "
                f"accepted are multiples of {side} pixels"
                + (f" up to {largest}" if largest else "")
                + f" (the teacher was trained at {cfg.teacher.resolution})"
            )


def check_taps(cfg: DictConfig, teacher: dict) -> None:
    """The feature-KD tap pairs exist on both denoisers and agree in shape (on meta models: no weights)."""
    removal = OmegaConf.to_container(cfg.arch.removal)
    try:
        pairs = resolve_tap_pairs(tap_pairs_setting(cfg), teacher, removal)
        if is_transformer(teacher):
            latent = (cfg.data.get("resolution") or cfg.teacher.resolution) // VAE_SCALE
            check_tap_pairs(teacher, depth_student_config(teacher, removal), pairs, latent)
        else:
            check_tap_pairs(teacher, student_config(teacher, removal), pairs, teacher["sample_size"])
    except (KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) else str(error)
        hint = (
            "arch.taps=auto derives the pairs from the removal spec (the paper's rule; arch.taps=koala: "
            "self-attention features)"
            if not isinstance(cfg.arch.taps, str)
            else "set arch.taps to [teacher module, student module] pairs"
        )
        raise ValueError(
            f"arch={cfg.arch.name}'s feature taps do not fit its student: {message}; {hint}"
        ) from error


def check_fused_clipping(cfg: DictConfig) -> None:
    """fp16 AMP unscales the gradients inside a fused optimizer's step, after Lightning would clip them."""
    fused = cfg.get("optim") and cfg.optim.optimizer.get("fused")
    if (
        fused
        and str(cfg.trainer.get("precision")) in ("16-mixed", "16")
        and cfg.trainer.get("gradient_clip_val")
    ):
        raise ValueError(
            f"trainer.precision={cfg.trainer.precision} with trainer.gradient_clip_val="
            f"{cfg.trainer.gradient_clip_val} cannot use a fused optimizer (optim.optimizer.fused=true): the "
            "fp16 loss scale is undone inside its step, after clipping. Accepted: trainer.precision=bf16-mixed "
            "(the default), optim.optimizer.fused=false, or trainer.gradient_clip_val=null."
        )


def teacher_config(cfg: DictConfig) -> dict:
    """The teacher denoiser's config (U-Net or transformer): embedded in the teacher preset
    (``unet_config``, ``transformer_config``), else read from its source (the config file only, no
    weights)."""
    world_dir, source = cfg.teacher.get("world_dir"), Path(cfg.teacher.source)
    built = (
        world_dir is None or source != Path(world_dir) / "teacher" or (source / "model_index.json").is_file()
    )
    if not built:
        raise FileNotFoundError(
            f"teacher={cfg.teacher.name} is read from the mini world built in teacher.world_dir={world_dir!r}, "
            f"which holds no teacher/model_index.json: build it with `python -m bksdm.miniworld "
            f"world={cfg.teacher.world}` (it resumes where a killed build stopped), or set teacher.world_dir "
            "to a built folder"
        )
    embedded = cfg.teacher.get("transformer_config") or cfg.teacher.get("unet_config")
    return teacher_denoiser_config(
        cfg.teacher.source,
        OmegaConf.to_container(embedded, resolve=True) if embedded is not None else None,
        cfg.teacher.revision,
    )


def teacher_vae_scale(cfg: DictConfig) -> int:
    """Pixels per latent cell of the teacher's VAE, read from its source's VAE config (the config file
    only); SD's 8 for a preset that embeds its denoiser's config: every such teacher has an 8x VAE, and
    a config-only report must not download."""
    if cfg.teacher.get("transformer_config") or cfg.teacher.get("unet_config"):
        return VAE_SCALE
    try:
        config = vae_config(cfg.teacher.source, cfg.teacher.revision, cfg.teacher.get("vae_source"))
    except (OSError, ValueError) as error:
        raise ComponentError(
            f"could not read the VAE config of teacher.source={cfg.teacher.source!r}: {error}"
        ) from error
    return vae_scale(config)


def tap_pairs_setting(cfg: DictConfig) -> str | list | dict:
    """``arch.taps`` as the module takes it: a rule's name (``auto``, ``koala``), plain pair lists, or a
    rule with weights."""
    taps = cfg.arch.taps
    return taps if isinstance(taps, str) else OmegaConf.to_container(taps)


def make_logger(cfg: DictConfig, output_dir: Path):
    if not cfg.get("logger"):
        return False
    from lightning.pytorch.utilities import rank_zero_only

    wandb = cfg.logger._target_ == "lightning.pytorch.loggers.WandbLogger"
    if wandb and rank_zero_only.rank == 0:  # other ranks log nothing
        # the run folder's own id unless one is given (logger.id or WANDB_RUN_ID): resuming continues it
        run_id = cfg.logger.get("id") or wandb_run_id(output_dir)
        logger = instantiate(cfg.logger, id=run_id, resume="allow", **wandb_identity(cfg))
        # Lightning (2.6) always passes anonymous=None to wandb.init, and wandb (0.2x+) warns on every run
        # that the setting has no effect; left out, wandb's default is the same
        if logger._wandb_init.get("anonymous") is None:
            logger._wandb_init.pop("anonymous", None)
        return logger
    return instantiate(cfg.logger)


# what W&B reads itself when a setting is not passed: those variables win over bksdm's defaults
WANDB_VARIABLES = {
    "name": "WANDB_NAME",
    "group": "WANDB_RUN_GROUP",
    "tags": "WANDB_TAGS",
    "job_type": "WANDB_JOB_TYPE",
}


def wandb_identity(cfg: DictConfig) -> dict:
    """Name, group, tags and job type of the W&B run (``bksdm.cli.run_names``) for those settings the
    config and W&B's environment variables leave open."""
    import os

    from bksdm.cli.run_names import run_identity

    return {
        key: value
        for key, value in run_identity().items()
        if value is not None and cfg.logger.get(key) is None and not os.environ.get(WANDB_VARIABLES[key])
    }


def per_device_batch(global_batch: int | None, per_device: int, world_size: int, accumulation: int) -> int:
    """``data.batch_size`` as is, or, with ``global_batch_size`` (images per optimizer step over all
    devices) set, that split over the devices and accumulation steps."""
    if global_batch is None:
        return per_device
    share = world_size * accumulation
    if global_batch < 1 or global_batch % share:
        raise ValueError(
            f"global_batch_size={global_batch} does not split over {world_size} device(s) x {accumulation} "
            f"accumulation step(s): accepted are positive multiples of {share} (or null: data.batch_size "
            "per device)"
        )
    return global_batch // share


def build_module(cfg: DictConfig, pre_encoded=(), device=None):
    """The DistillModule of ``cfg.distill``. ``pre_encoded``: what the data brings pre-encoded (``latents``,
    ``text_embeds``): the VAE (and the text encoder) then stay out of memory. ``device``: where it will
    train, which decides ``distill.frozen_dtype=auto`` (default: CUDA when available)."""
    frozen_dtype = cfg.distill.frozen_dtype
    if device is not None:
        frozen_dtype = resolve_frozen_dtype(frozen_dtype, device, is_transformer(teacher_config(cfg)))
    return instantiate(
        cfg.distill,
        frozen_dtype=frozen_dtype,
        load_vae="latents" not in pre_encoded,
        load_text_encoder="text_embeds" not in pre_encoded,
    )
