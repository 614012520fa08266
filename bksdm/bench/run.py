"""Runs the benchmark modes of a composed config and reports them (a table and one JSON line)."""

from __future__ import annotations

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
from bksdm.arch.depth import depth_student_config, empty_transformer, is_transformer
from bksdm.bench.batches import FixedBatches
from bksdm.bench.flops import step_flops
from bksdm.bench.machine import probe_machine
from bksdm.bench.memory_plan import denoiser_activation_bytes, memory_plan
from bksdm.bench.phases import PhaseTimer
from bksdm.bench.roofline import StepShape, roofline, step_bytes
from bksdm.bench.timer import HostSyncEveryStep, StepTimer
from bksdm.cli import config_checks
from bksdm.cli.train_setup import (
    build_module,
    check_model_config,
    check_precision,
    teacher_config,
    teacher_vae_scale,
)
from bksdm.cli.value_types import check_value_types
from bksdm.teachers.frozen import DTYPES, resolve_frozen_dtype, resolve_storage_dtype
from bksdm.teachers.loading import check_available_offline
from bksdm.teachers.transformer_text import t5_length_of
from bksdm.training.memory import release_host_memory

MODES = ("fast", "reference", "both")
COLUMNS = (
    ("mode", "{}"),
    ("inputs", "{}"),
    ("images_per_s", "{:.3f}"),
    ("s_per_step", "{:.3f}"),
    ("peak_memory_gb", "{:.2f}"),
    ("gflop_per_step", "{:.1f}"),
    ("gb_per_step", "{:.1f}"),
    ("achieved_tflop_per_s", "{:.3f}"),
    ("limit_s", "{:.3f}"),
    ("x_limit", "{:.2f}"),
)
# the dtype the student's matmuls run in, by Lightning precision
COMPUTE_DTYPES = {
    "bf16-mixed": "bfloat16",
    "16-mixed": "float16",
    "bf16-true": "bfloat16",
    "16-true": "float16",
}


def mode_config(cfg: DictConfig, mode: str) -> DictConfig:
    """The config a mode runs: ``fast`` is the training config as composed; ``reference`` has
    ``bench.reference`` merged over it."""
    return cfg if mode == "fast" else OmegaConf.merge(cfg, cfg.bench.reference)


def check_bench_config(cfg: DictConfig) -> int:
    """Checks the bench settings and the model config; returns the resolution in pixels."""
    bench = cfg.bench
    if bench.mode not in MODES:
        raise ValueError(f"bench.mode={bench.mode!r}: accepted are {list(MODES)}")
    for key, least in (("steps", 1), ("warmup_steps", 0), ("breakdown_steps", 0), ("batch_size", 1)):
        if not isinstance(bench[key], int) or bench[key] < least:
            raise ValueError(f"bench.{key}={bench[key]!r}: accepted are integers >= {least}")
    every = cfg.distill.get("ema_every", 1)
    if cfg.distill.ema_decay is not None and bench.steps % every:
        raise ValueError(
            f"bench.steps={bench.steps} is not a whole number of EMA windows: accepted are multiples of "
            f"distill.ema_every={every} (so that the timed steps average the EMA as often as training does)"
        )
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
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def settings(cfg: DictConfig, device: torch.device) -> dict:
    """What the step ran with, ``auto`` switches resolved for the device."""
    return {
        "precision": str(cfg.trainer.precision),
        "frozen_dtype": resolve_frozen_dtype(
            cfg.distill.frozen_dtype, device, is_transformer(teacher_config(cfg))
        ),
        "frozen_storage_dtype": cfg.distill.get("frozen_storage_dtype"),
        "pre_encoded": cfg.bench.pre_encoded,
        **instantiate(cfg.speed).resolved(device),
        "fused_adamw": bool(cfg.optim.optimizer.get("fused")),
        "gradient_checkpointing": cfg.distill.gradient_checkpointing,
        "host_sync_every_step": cfg.bench.host_sync_every_step,
        "ema": cfg.distill.ema_decay is not None,
        "accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
    }


def student_of(cfg: DictConfig, teacher: dict) -> dict:
    """The student's config: block removal from a U-Net, depth pruning of a transformer."""
    removal = OmegaConf.to_container(cfg.arch.removal)
    return (
        depth_student_config(teacher, removal)
        if is_transformer(teacher)
        else student_config(teacher, removal)
    )


def count_flops(
    cfg: DictConfig, resolution: int, vae=None, text_encoders=(), t5_tokens: int = 512
) -> dict[str, int]:
    teacher = teacher_config(cfg)
    student = student_of(cfg, teacher)
    images = cfg.bench.batch_size * cfg.trainer.accumulate_grad_batches
    needs_teacher = instantiate(cfg.loss).needs_teacher
    return step_flops(
        teacher if needs_teacher else None, student, resolution, images, vae, text_encoders, t5_tokens,
        teacher_vae_scale(cfg),
    )  # fmt: skip


def bench_device(cfg: DictConfig) -> torch.device:
    """The device the trainer will pick: a GPU when one is there and the trainer may use it."""
    wants_gpu = str(cfg.trainer.accelerator) in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def part_dtypes(cfg: DictConfig, device: torch.device) -> dict[str, str]:
    """The dtype each FLOP-counted part computes in: the student in the precision's compute dtype, the
    frozen parts in their own."""
    frozen = resolve_frozen_dtype(cfg.distill.frozen_dtype, device, is_transformer(teacher_config(cfg)))
    student = COMPUTE_DTYPES.get(str(cfg.trainer.precision), "float32")
    return {"student_forward_backward": student, "teacher_forward": frozen, "vae_encode": frozen,
            "text_encode": frozen}  # fmt: skip


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters()) if model is not None else 0


def weight_bytes(model) -> int:
    """Bytes of a model's weights as stored (an FP8-stored teacher's mix of FP8 and bf16 included)."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) if model is not None else 0


def step_shape(cfg: DictConfig, module) -> StepShape:
    """What the step touches, from the built module (``bksdm.bench.roofline``)."""
    frozen = module.frozen
    running = weight_bytes(frozen.denoiser) if module.loss.needs_teacher else 0
    if not cfg.bench.pre_encoded:
        running += weight_bytes(frozen.vae.encoder) + weight_bytes(frozen.vae.quant_conv)
        running += sum(map(weight_bytes, (frozen.text_encoder, frozen.text_encoder_2, frozen.text_encoder_3)))
    return StepShape(
        student_params=count_params(module.student),
        frozen_weight_bytes=running,
        micro_batches=cfg.trainer.accumulate_grad_batches,
        clip=bool(cfg.trainer.gradient_clip_val),
        ema=module.ema is not None,
        ema_every=module.ema.every if module.ema is not None else 1,
    )


def run_mode(cfg: DictConfig, mode: str, resolution: int) -> dict:
    """Builds the module and a trainer for ``mode``, times ``bench.steps`` optimizer steps, then breaks
    ``bench.breakdown_steps`` more down by phase."""
    cfg = mode_config(cfg, mode)
    bench = cfg.bench
    L.seed_everything(cfg.seed, verbose=False)
    total_steps = bench.warmup_steps + bench.steps + bench.breakdown_steps
    timer = StepTimer(bench.warmup_steps, bench.steps)
    phases = PhaseTimer(start_step=bench.warmup_steps + bench.steps)
    callbacks = [timer, phases] + ([HostSyncEveryStep()] if bench.host_sync_every_step else [])
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
        instantiate(cfg.speed).apply_to_process(trainer.strategy.root_device)
        pre_encoded = {"latents", "text_embeds"} if bench.pre_encoded else set()
        module = build_module(cfg, pre_encoded=pre_encoded, device=trainer.strategy.root_device)
        steps = total_steps * cfg.trainer.accumulate_grad_batches
        data = FixedBatches(bench.batch_size, resolution, steps, module.frozen, bench.pre_encoded)
        trainer.fit(module, datamodule=data)
    device = module.device
    vae = module.frozen.vae
    frozen = module.frozen
    towers = (frozen.text_encoder, frozen.text_encoder_2, frozen.text_encoder_3)
    text_encoders = [m.config for m in towers if m is not None]
    t5_tokens = t5_length_of(frozen, frozen.family) if frozen.is_transformer else 0
    flops = count_flops(cfg, resolution, vae.config if vae is not None else None, text_encoders, t5_tokens)
    traffic = step_bytes(step_shape(cfg, module))
    dtypes = part_dtypes(cfg, device)
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
        "bytes_per_step": traffic["total"],
        "bytes_by_part": traffic,
        "compute_dtypes": {part: dtypes[part] for part in flops if part != "total"},
        "fastest_s_per_step": timer.fastest_step,
        "phases_s": phases.per_step(),
        # the breakdown's steps, timed whole: slower than s_per_step where synchronising stalls a GPU
        "breakdown_s_per_step": phases.step_s(),
        "settings": settings(cfg, device),
    }
    return record


def best_of(first: dict, second: dict) -> dict:
    """The faster of two ``probe_machine`` results, rate by rate."""
    if isinstance(first, dict):
        return {key: best_of(first[key], second[key]) for key in first}
    return max(first, second)


def limits(record: dict, machine: dict) -> dict:
    """A mode's roofline on ``machine`` and its fastest step's multiple of it (``x_limit``): both are the
    machine at its best (the probes keep their best repeat), which is what a ratio on a shared machine
    can compare."""
    flops = record["flops_by_part"]
    rates = {
        part: machine["matmul_flop_per_s"][record["compute_dtypes"][part]]
        for part in flops
        if part != "total"
    }
    limit = roofline(flops, rates, record["bytes_per_step"], machine["bytes_per_s"])
    return {**limit, "x_limit": record["fastest_s_per_step"] / limit["limit_s"]}  # 1.0: at the roofline


def release_memory() -> None:
    """Frees what a finished mode held, so that the next mode's peak is its own. Called once the mode's
    frame is gone (while it runs, its locals keep the models alive)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    release_host_memory()


def render_table(records: list[dict]) -> str:
    rows = [[name for name, _ in COLUMNS]]
    for record in records:
        values = {
            **record,
            "gflop_per_step": record["flops_per_step"] / 1e9,
            "gb_per_step": record["bytes_per_step"] / 1e9,
        }
        rows.append([fmt.format(values[name]) for name, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def render_machine(device: torch.device, machine: dict) -> str:
    rates = ", ".join(f"{name} {rate / 1e9:,.0f}" for name, rate in machine["matmul_flop_per_s"].items())
    memory = ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in machine["memory_bytes_per_s"].items())
    return f"machine: {device_name(device)}; matmul GFLOP/s: {rates}; memory GB/s: {memory}"


def render_limit(record: dict) -> str:
    """The roofline and the phases of one mode, in two lines."""
    limit = (f"{record['mode']}: roofline {record['limit_s']:.3f} s = {record['compute_s']:.3f} s compute + "
             f"{record['memory_s']:.3f} s memory; the fastest step took {record['fastest_s_per_step']:.3f} s "
             f"({record['x_limit']:.2f}x the limit), the mean {record['s_per_step']:.3f} s")  # fmt: skip
    if not record["phases_s"]:
        return limit
    phases = ", ".join(f"{name} {seconds:.3f}" for name, seconds in record["phases_s"].items())
    return f"{limit}\n  phases (s per step, of a {record['breakdown_s_per_step']:.3f} s step): {phases}"


def benchmark(cfg: DictConfig) -> dict:
    """Runs ``bench.mode``; prints a table and one JSON line ``{"runs": [...], "speedup": ...}``
    (speedup: fast images/s over reference images/s, with ``both``); returns that dict."""
    with config_checks():
        resolution = check_bench_config(cfg)
    modes = ["fast", "reference"] if cfg.bench.mode == "both" else [cfg.bench.mode]
    if cfg.bench.count_only:
        result = {
            "flops_per_step": {mode: _count_only(mode_config(cfg, mode), resolution) for mode in modes},
            "memory_gib": {mode: count_memory(mode_config(cfg, mode), resolution) for mode in modes},
        }
        for mode, plan in result["memory_gib"].items():
            print(render_memory(mode, plan))
        print(json.dumps(result))
        return result
    device = bench_device(cfg)
    dtypes = {dtype for mode in modes for dtype in part_dtypes(mode_config(cfg, mode), device).values()}
    probe = [DTYPES[name] for name in sorted(dtypes)]
    machine = probe_machine(device, probe)
    records = []
    for mode in modes:
        records.append(run_mode(cfg, mode, resolution))
        release_memory()
    # probed again after the steps: the better of the two (a shared machine may have been busy at one)
    machine = best_of(machine, probe_machine(device, probe))
    for record in records:
        record.update(limits(record, machine))
    print(render_machine(device, machine))
    result = {"machine": {"device": device_name(device), **machine}, "runs": records, "speedup": None}
    if len(records) == 2:
        result["speedup"] = records[0]["images_per_s"] / records[1]["images_per_s"]
    print(render_table(records))
    for record in records:
        print(render_limit(record))
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


GPU_MEMORY_GIB = {"80 GB": 79.6, "141 GB": 139.8}  # what an H100 80GB and an H200 report as total


def count_memory(cfg: DictConfig, resolution: int) -> dict[str, float]:
    """The step's memory per device in GiB by part (``bksdm.bench.memory_plan``), from configs alone."""
    teacher = teacher_config(cfg)
    student = student_of(cfg, teacher)
    frozen_dtype = DTYPES[
        resolve_frozen_dtype(cfg.distill.frozen_dtype, "cuda", is_transformer(teacher))
    ]  # as on a GPU
    storage = resolve_storage_dtype(cfg.distill.get("frozen_storage_dtype"))
    compute = DTYPES[COMPUTE_DTYPES.get(str(cfg.trainer.precision), "float32")]
    latent = resolution // teacher_vae_scale(cfg)
    activations = denoiser_activation_bytes(
        student, latent, cfg.bench.batch_size, compute, bool(cfg.distill.gradient_checkpointing)
    )
    strategy = str(cfg.trainer.get("strategy", "auto"))
    devices = cfg.trainer.get("devices", 1)
    shards = devices if "fsdp" in strategy and isinstance(devices, int) else 1
    return memory_plan(
        frozen_weight_bytes=(
            _meta_weight_bytes(teacher, frozen_dtype, storage) if instantiate(cfg.loss).needs_teacher else 0
        ),
        student_params=_meta_params(student),
        activation_bytes=activations,
        mixed_precision=str(cfg.trainer.precision).endswith("-mixed"),
        ema=cfg.distill.ema_decay is not None,
        shards=shards,
    )


def render_memory(mode: str, plan: dict[str, float]) -> str:
    parts = ", ".join(f"{name} {gib:.1f}" for name, gib in plan.items() if name != "total")
    fits = ", ".join(
        f"{'fits' if plan['total'] <= gib else 'does not fit'} on {name}"
        for name, gib in GPU_MEMORY_GIB.items()
    )
    return f"memory per device ({mode}, GiB): {parts}; total {plan['total']:.1f}: {fits}"


def _meta_model(config: dict) -> torch.nn.Module:
    from bksdm.arch.student import empty_unet, plain_config

    return empty_transformer(config) if is_transformer(config) else empty_unet(plain_config(config))


def _meta_params(config: dict) -> int:
    return count_params(_meta_model(config))


def _meta_weight_bytes(config: dict, dtype: torch.dtype, storage: torch.dtype | None) -> int:
    """Bytes of a frozen denoiser's weights in ``dtype``, or stored in ``storage`` as ``FrozenTeacher``
    stores them (the layers diffusers' layerwise casting skips stay in ``dtype``)."""
    model = torch.nn.Module.to(_meta_model(config), dtype)
    if storage is not None:
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=dtype)
    return weight_bytes(model)


def _count_only(cfg: DictConfig, resolution: int) -> dict[str, int]:
    """FLOPs per step from configs alone; a mode that encodes its inputs needs the teacher's VAE and
    text-encoder configs, read from its source (config files only)."""
    vae, text_encoders, t5_tokens = None, [], 512
    if not cfg.bench.pre_encoded:
        from diffusers import AutoencoderKL
        from transformers import AutoConfig

        from bksdm.teachers.conditioning import takes_added_conditioning, text_towers
        from bksdm.teachers.loading import pipeline_family, resolve_source
        from bksdm.teachers.transformer_text import TEXT_LENGTHS

        source = resolve_source(cfg.teacher.source)
        vae = AutoencoderKL.load_config(source, subfolder="vae", revision=cfg.teacher.revision)
        family = pipeline_family(source, cfg.teacher.revision)
        t5_tokens = TEXT_LENGTHS.get(family, t5_tokens)
        towers = text_towers(family, takes_added_conditioning(teacher_config(cfg)))
        text_encoders = [
            AutoConfig.from_pretrained(source, subfolder=tower, revision=cfg.teacher.revision)
            for _, tower in towers
        ]
    return count_flops(cfg, resolution, vae, text_encoders, t5_tokens)
