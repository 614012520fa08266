"""python -m bksdm.bench: fields of its output, FLOP counts, the fast step's switches, and config errors."""

import json

import pytest
import torch
from helpers.paths import CONF
from hydra import compose, initialize_config_dir

from bksdm.arch import build_student
from bksdm.arch.report import unet_cost
from bksdm.bench.batches import FixedBatches
from bksdm.bench.flops import unet_flops
from bksdm.bench.phases import PHASES
from bksdm.bench.run import benchmark
from bksdm.teachers.builtin import TOY_UNET_CONFIG
from bksdm.teachers.conditioning import takes_added_conditioning, text_towers
from bksdm.teachers.frozen import FrozenTeacher
from bksdm.teachers.loading import (
    TRANSFORMER_FAMILIES,
    load_components,
    pipeline_family,
    resolve_source,
    teacher_denoiser_config,
)

TINY = ["teacher=toy", "trainer=cpu", "distill.frozen_dtype=float32", "bench.resolution=64"]


def bench_config(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("bench", overrides=list(overrides))


def test_both_modes_run_side_by_side_and_report_every_field(tmp_path, capsys):
    out = tmp_path / "bench" / "results.jsonl"
    settings = ["bench.mode=both", "bench.warmup_steps=1", "bench.steps=2", "distill.ema_every=2"]
    result = benchmark(bench_config(*TINY, *settings, f"bench.out={out}"))
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(printed[-1]) == json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert (
        printed[0].startswith("machine: cpu")
        and "matmul GFLOP/s: float32 " in printed[0]
        and "memory GB/s: copy " in printed[0]
    )
    assert printed[1].split() == [
        "mode", "inputs", "images_per_s", "s_per_step", "peak_memory_gb", "gflop_per_step", "gb_per_step",
        "achieved_tflop_per_s", "limit_s", "x_limit",
    ]  # fmt: skip
    assert printed[2].split()[0] == "fast" and printed[3].split()[0] == "reference"
    assert printed[4].startswith("fast: roofline ") and printed[5].startswith("  phases (s per step, of a ")
    machine = result["machine"]
    assert machine["matmul_flop_per_s"]["float32"] > 1e9 and machine["memory_bytes_per_s"]["update"] > 1e8
    assert machine["bytes_per_s"] == max(machine["memory_bytes_per_s"].values())
    fast, reference = result["runs"]
    for run in (fast, reference):
        assert run["steps"] == 2 and run["resolution"] == 64 and run["batch_size"] == 1
        assert run["images_per_s"] == pytest.approx(1 / run["s_per_step"])
        assert run["achieved_tflop_per_s"] == pytest.approx(run["flops_per_step"] / run["s_per_step"] / 1e12)
        assert 0.1 < run["peak_memory_gb"] < 64
        # the roofline: FLOPs at the probed fp32 rate plus the bytes at the probed bandwidth
        rate = machine["matmul_flop_per_s"]["float32"]
        assert run["compute_s"] == pytest.approx(run["flops_per_step"] / rate)
        assert run["memory_s"] == pytest.approx(run["bytes_per_step"] / machine["bytes_per_s"])
        assert run["fastest_s_per_step"] <= run["s_per_step"] * (1 + 1e-9)
        assert run["x_limit"] == pytest.approx(
            run["fastest_s_per_step"] / (run["compute_s"] + run["memory_s"])
        )
        assert run["x_limit"] > 1  # nothing beats the machine
        phases = run["phases_s"]
        assert list(phases) == list(PHASES) and all(seconds >= 0 for seconds in phases.values())
        assert phases["teacher_forward"] > 0 and phases["backward"] > 0 and phases["optimizer"] > 0
        assert phases["ema"] > 0  # one averaging over 2 steps, though the breakdown's 2 steps may hold none
        # the phases split the breakdown's own steps (timed apart from s_per_step, so not compared with it)
        # into parts; the EMA's share is one averaging's, timed after them
        in_step = sum(seconds for phase, seconds in phases.items() if phase != "ema")
        assert in_step <= run["breakdown_s_per_step"] * (1 + 1e-9)
        assert in_step == pytest.approx(run["breakdown_s_per_step"], rel=0.5)
    # the student's fp32 weights twice, gradients written and read for the norm, AdamW's 28 B, EMA's 12 B
    params = sum(p.numel() for p in build_student(load_components("builtin:toy").unet, "small").parameters())
    moved = fast["bytes_by_part"]
    assert (moved["student_weights"], moved["gradients"], moved["optimizer"]) == (
        8 * params,
        8 * params,
        28 * params,
    )
    assert moved["ema"] == 12 * params // 2  # averaged every 2 steps
    assert reference["bytes_by_part"]["ema"] == 12 * params  # every step, as diffusers' EMAModel
    assert result["speedup"] == pytest.approx(fast["images_per_s"] / reference["images_per_s"])
    # the reference step encodes its own inputs; the fast one gets them pre-encoded
    assert set(fast["flops_by_part"]) == {"teacher_forward", "student_forward_backward", "total"}
    assert reference["flops_by_part"]["vae_encode"] > 0 and reference["flops_by_part"]["text_encode"] > 0
    assert reference["flops_per_step"] > fast["flops_per_step"]
    assert fast["settings"] | {"attention": "eager"} != reference["settings"]
    assert (fast["settings"]["attention"], reference["settings"]["attention"]) == ("sdpa", "eager")
    assert fast["settings"]["fused_adamw"] and not reference["settings"]["fused_adamw"]
    assert reference["settings"]["host_sync_every_step"] and not reference["settings"]["pre_encoded"]


def test_the_default_trainer_benchmarks_on_a_cpu_with_honest_labels(capsys):
    # no trainer= override: bf16-mixed with frozen_dtype auto (bf16 here), as `python -m bksdm.bench
    # teacher=toy arch=small` runs it
    result = benchmark(bench_config("teacher=toy", "arch=small", "bench.resolution=64", "bench.warmup_steps=0",
                                    "bench.steps=1", "distill.ema_every=1", "trainer.accumulate_grad_batches=1"))  # fmt: skip
    (run,) = result["runs"]
    assert run["settings"]["precision"] == "bf16-mixed" and run["settings"]["frozen_dtype"] == "bfloat16"
    printed = capsys.readouterr().out.splitlines()
    assert run["inputs"] == "pre-encoded" and printed[2].split()[:2] == ["fast", "pre-encoded"]
    # the student's matmuls at the bf16 rate, the bf16 teacher's too: the machine was probed in bf16
    assert run["compute_dtypes"] == {"student_forward_backward": "bfloat16", "teacher_forward": "bfloat16"}
    assert set(result["machine"]["matmul_flop_per_s"]) == {"bfloat16"}


def test_the_gpu_benchmark_script_runs_each_configuration_once():
    script = (CONF.parent / "experiments" / "bench" / "gpu.sh").read_text().replace("\\\n", " ")
    runs = [
        " ".join(line.split()[3:]) for line in script.splitlines() if line.startswith("python -m bksdm.bench")
    ]
    assert len(runs) == 4 and len(set(runs)) == 4


def test_the_cpu_full_width_preset_composes():
    cfg = bench_config("preset=cpu_full_width")
    assert (cfg.teacher.source, cfg.arch.name, cfg.bench.resolution, cfg.bench.batch_size) == (
        "builtin:sd14-random", "small", 256, 1,
    )  # fmt: skip
    assert (
        cfg.trainer.precision == "bf16-mixed" and cfg.distill.frozen_dtype == "auto"
    )  # the training default
    assert cfg.trainer.accelerator == "cpu" and cfg.bench.mode == "fast"


def test_flops_are_twice_the_macs_of_the_arch_report_and_backward_doubles_them():
    cost = unet_cost(TOY_UNET_CONFIG, 8)
    forward = unet_flops(TOY_UNET_CONFIG, 8, 1, backward=False)
    assert forward == 2 * (cost.macs + cost.attention_macs)
    assert unet_flops(TOY_UNET_CONFIG, 8, 3, backward=False) == 3 * forward
    assert 2.5 * forward < unet_flops(TOY_UNET_CONFIG, 8, 1, backward=True) < 3.05 * forward


def test_count_only_needs_no_weights(capsys):
    benchmark(bench_config(*TINY, "bench.count_only=true", "bench.batch_size=2"))
    counts = json.loads(capsys.readouterr().out.splitlines()[-1])["flops_per_step"]["fast"]
    assert counts["teacher_forward"] == unet_flops(TOY_UNET_CONFIG, 8, 2, backward=False)
    assert counts["total"] == counts["teacher_forward"] + counts["student_forward_backward"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["bench.mode=fastest"], r"bench\.mode='fastest': accepted are \['fast', 'reference', 'both'\]"),
        (["bench.steps=0"], r"bench\.steps=0: accepted are integers >= 1"),
        (
            ["bench.steps=5"],
            r"bench\.steps=5 is not a whole number of EMA windows: accepted are multiples of "
            r"distill\.ema_every=10",
        ),
        (["bench.resolution=100"], r"bench\.resolution=100 cannot go through teacher=toy's U-Net"),
        (
            ["speed.channels_last=maybe"],
            r"speed\.channels_last='maybe': accepted are \[True, False, 'auto', 'frozen'\]",
        ),
        (["optim.optimizer.lr=fast"], r"^optim\.optimizer\.lr='fast' is not a number$"),
    ],
)
def test_bad_bench_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        benchmark(bench_config(*TINY, *overrides))


def test_each_switch_of_the_cpu_table_composes_with_the_preset():
    import importlib.util

    path = CONF.parent / "experiments" / "bench" / "switches.py"
    spec = importlib.util.spec_from_file_location("switches", path)
    switches = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(switches)
    for label, overrides in switches.CONFIGS.items():
        cfg = bench_config("preset=cpu_full_width", *overrides)
        assert cfg.bench.steps % cfg.distill.ema_every == 0, label  # each runs as written
    assert switches.CONFIGS["default"] == []


@pytest.mark.parametrize("source", ["builtin:toy", "builtin:sdxl-toy", "builtin:flux-toy", "builtin:sd3-toy",
                                    "builtin:pixart-toy"])  # fmt: skip
def test_the_fixed_batch_is_shaped_as_the_teachers_own_encoding(source):
    """The benchmark's pre-encoded batch holds what data=latents brings: the tensors, shapes and dtypes the
    teacher's VAE and text towers would give."""
    torch.set_num_threads(1)
    family, denoiser = pipeline_family(resolve_source(source)), teacher_denoiser_config(source)
    towers = [part for tower in text_towers(family, takes_added_conditioning(denoiser)) for part in tower]
    part = "transformer" if family in TRANSFORMER_FAMILIES else "unet"
    parts = load_components(source, [part, "vae", "noise_scheduler", *towers])
    frozen = FrozenTeacher.freeze(parts, torch.float32, source)
    batch = FixedBatches(2, 64, 1, frozen, pre_encoded=True).batch
    with frozen.compute():
        text = frozen.encode_text(["a red cube", "a blue sphere"])
        latents = frozen.vae.encode(torch.zeros(2, 3, 64, 64)).latent_dist.mean
    expected = {"text_embeds": text.context, "pooled_text_embeds": text.pooled, "text_mask": text.mask}
    expected = {key: value for key, value in expected.items() if value is not None}
    expected |= {"latent_mean": latents, "latent_std": latents}
    if frozen.sdxl:
        expected |= {key: torch.zeros(2, 2, dtype=torch.long) for key in ("original_size", "crop_top_left")}
    shapes = {key: (v.shape, v.is_floating_point()) for key, v in batch.items() if key != "caption"}
    assert shapes == {key: (v.shape, v.is_floating_point()) for key, v in expected.items()}


def test_a_transformer_teacher_benchmarks_from_pre_encoded_inputs():
    result = benchmark(bench_config(
        "teacher=flux_toy", "arch=flux_mini", "trainer=cpu", "distill.frozen_dtype=float32", "bench.resolution=64",
        "bench.warmup_steps=0", "bench.steps=1", "bench.breakdown_steps=1", "distill.ema_every=1",
    ))  # fmt: skip
    (run,) = result["runs"]
    assert run["inputs"] == "pre-encoded" and run["steps"] == 1
    assert set(run["flops_by_part"]) == {"teacher_forward", "student_forward_backward", "total"}
    assert run["phases_s"]["inputs"] >= 0 and run["phases_s"]["teacher_forward"] > 0
