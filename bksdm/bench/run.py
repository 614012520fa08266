"""Runs the benchmark modes of a composed config and reports them (a table and one JSON line)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import platform
import tempfile
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bksdm.arch import student_config
from bksdm.bench.batches import FixedBatches
from bksdm.bench.flops import step_flops
from bksdm.bench.timer import HostSyncEveryStep, StepTimer
from bksdm.cli import config_checks
from bksdm.cli.train_setup import build_module, check_model_config, check_precision, teacher_config
from bksdm.cli.value_types import check_value_types
from bksdm.distill.speed import set_tf32
from bksdm.teachers.frozen import resolve_frozen_dtype
from bksdm.teachers.loading import check_available_offline

MODES = ("fast", "reference", "both")
COLUMNS = (
    ("mode", "{}"),
    ("inputs", "{}"),
    ("images_per_s", "{:.3f}"),
    ("s_per_step", "{:.3f}"),
    ("peak_memory_gb", "{:.2f}"),
    ("gflop_per_step", "{:.1f}"),
    ("achieved_tflop_per_s", "{:.3f}"),
)


def mode_config(cfg: DictConfig, mode: str) -> DictConfig:
    """The config a mode runs: ``fast`` is the training config as composed; ``reference`` has
    ``bench.reference`` merged over it."""
    return cfg if mode == "fast" else OmegaConf.merge(cfg, cfg.bench.reference)


def check_bench_config(cfg: DictConfig) -> int:
    """Checks the bench settings and the model config; returns the resolution in pixels."""
    bench = cfg.bench
    if bench.mode not in MODES:
        raise ValueError(f"bench.mode={bench.mode!r}: accepted are {list(MODES)}")
    for key, least in (("steps", 1), ("warmup_steps", 0), ("batch_size", 1)):
        if not isinstance(bench[key], int) or bench[key] < least:
            raise ValueError(f"bench.{key}={bench[key]!r}: accepted are integers >= {least}")
    resolution = bench.resolution or cfg.teacher.resolution
    check_value_types(cfg)
    check_precision(cfg)
    check_model_config(cfg, resolution, resolution_key="bench.resolution")
    if not bench.count_only:  # counting needs the configs only, which the presets embed
        check_available_offline(cfg.teacher.source, cfg.teacher.revision)
    return resolution


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def settings(cfg: DictConfig, device: torch.device) -> dict:
    """What the step ran with, ``auto`` switches resolved for the device."""
    return {
        "precision": str(cfg.trainer.precision),
        "frozen_dtype": resolve_frozen_dtype(cfg.distill.frozen_dtype, device),
        "pre_encoded": cfg.bench.pre_encoded,
        **instantiate(cfg.speed).resolved(device),
        "fused_adamw": bool(cfg.optim.optimizer.get("fused")),
        "gradient_checkpointing": cfg.distill.gradient_checkpointing,
        "host_sync_every_step": cfg.bench.host_sync_every_step,
        "ema": cfg.distill.ema_decay is not None,
        "accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
    }


def count_flops(cfg: DictConfig, resolution: int, vae=None, text_encoder=None) -> dict[str, int]:
    teacher = teacher_config(cfg)
    student = student_config(teacher, OmegaConf.to_container(cfg.arch.removal))
    images = cfg.bench.batch_size * cfg.trainer.accumulate_grad_batches
    needs_teacher = instantiate(cfg.loss).needs_teacher
    return step_flops(teacher if needs_teacher else None, student, resolution, images, vae, text_encoder)


def run_mode(cfg: DictConfig, mode: str, resolution: int) -> dict:
    """Builds the module and a trainer for ``mode`` and times ``bench.steps`` optimizer steps."""
    cfg = mode_config(cfg, mode)
    bench = cfg.bench
    set_tf32(cfg.speed.tf32)
    L.seed_everything(cfg.seed, verbose=False)
    total_steps = bench.warmup_steps + bench.steps
    data = FixedBatches(
        bench.batch_size,
        resolution,
        total_steps * cfg.trainer.accumulate_grad_batches,
        teacher_config(cfg)["cross_attention_dim"],
        bench.pre_encoded,
    )
    timer = StepTimer(bench.warmup_steps)
    callbacks = [timer] + ([HostSyncEveryStep()] if bench.host_sync_every_step else [])
    with tempfile.TemporaryDirectory() as scratch:  # a benchmark leaves nothing behind
        trainer: L.Trainer = instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=False,
            max_steps=total_steps,
            enable_checkpointing=False,
            enable_progress_bar=False,
            plugins=None,
            default_root_dir=scratch,
        )
        module = build_module(cfg, pre_encoded=data.pre_encoded, device=trainer.strategy.root_device)
        trainer.fit(module, datamodule=data)
    device = module.device
    vae, text_encoder = module.frozen.vae, module.frozen.text_encoder
    flops = count_flops(
        cfg,
        resolution,
        vae.config if vae is not None else None,
        text_encoder.config if text_encoder is not None else None,
    )
    images = bench.batch_size * cfg.trainer.accumulate_grad_batches * trainer.world_size
    seconds_per_step = timer.seconds / timer.steps
    record = {
        "mode": mode,
        # what the step starts from: pre-encoded latents and text embeddings, or images and captions
        "inputs": "pre-encoded" if bench.pre_encoded else "encoded each step",
        "device": device_name(device),
        "teacher": cfg.teacher.name,
        "arch": cfg.arch.name,
        "loss": {k: v for k, v in OmegaConf.to_container(cfg.loss).items() if k != "_target_"},
        "resolution": resolution,
        "batch_size": bench.batch_size,
        "world_size": trainer.world_size,
        "steps": timer.steps,
        "images_per_s": images / seconds_per_step,
        "s_per_step": seconds_per_step,
        "peak_memory_gb": timer.peak_memory_gb,
        "flops_per_step": flops["total"],  # per device
        "flops_by_part": flops,
        "achieved_tflop_per_s": flops["total"] / seconds_per_step / 1e12,
        "settings": settings(cfg, device),
    }
    return record


def release_memory() -> None:
    """Frees what a finished mode held, so that the next mode's peak is its own. Called once the mode's
    frame is gone (while it runs, its locals keep the models alive)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if platform.system() == "Linux":
        with contextlib.suppress(OSError):  # hand freed heap pages back to the OS (glibc)
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def render_table(records: list[dict]) -> str:
    rows = [[name for name, _ in COLUMNS]]
    for record in records:
        values = {**record, "gflop_per_step": record["flops_per_step"] / 1e9}
        rows.append([fmt.format(values[name]) for name, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def benchmark(cfg: DictConfig) -> dict:
    """Runs ``bench.mode``; prints a table and one JSON line ``{"runs": [...], "speedup": ...}``
    (speedup: fast images/s over reference images/s, with ``both``); returns that dict."""
    with config_checks():
        resolution = check_bench_config(cfg)
    modes = ["fast", "reference"] if cfg.bench.mode == "both" else [cfg.bench.mode]
    if cfg.bench.count_only:
        result = {"flops_per_step": {mode: _count_only(mode_config(cfg, mode), resolution) for mode in modes}}
        print(json.dumps(result))
        return result
    records = []
    for mode in modes:
        records.append(run_mode(cfg, mode, resolution))
        release_memory()
    result = {"runs": records, "speedup": None}
    if len(records) == 2:
        result["speedup"] = records[0]["images_per_s"] / records[1]["images_per_s"]
    print(render_table(records))
    if result["speedup"] is not None:
        print(f"speedup (fast / reference images/s): {result['speedup']:.2f}x")
    line = json.dumps(result)
    print(line)
    if cfg.bench.out:
        out = Path(cfg.bench.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as file:
            file.write(line + "\n")
    return result


def _count_only(cfg: DictConfig, resolution: int) -> dict[str, int]:
    """FLOPs per step from configs alone; a mode that encodes its inputs needs the teacher's VAE and
    text-encoder configs, read from its source (config files only)."""
    vae = text_encoder = None
    if not cfg.bench.pre_encoded:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextConfig

        from bksdm.teachers.loading import resolve_source

        source = resolve_source(cfg.teacher.source)
        vae = AutoencoderKL.load_config(source, subfolder="vae", revision=cfg.teacher.revision)
        text_encoder = CLIPTextConfig.from_pretrained(
            source, subfolder="text_encoder", revision=cfg.teacher.revision
        )
    return count_flops(cfg, resolution, vae, text_encoder)
