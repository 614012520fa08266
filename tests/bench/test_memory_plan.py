"""What a step holds in memory (bksdm.bench.memory_plan), counted on the meta device: the states per parameter,
the saved activations with and without gradient checkpointing, and the count-only bench of the full-width
FLUX teacher with the Flux-Mini student."""

import json

import torch
from helpers.paths import CONF
from hydra import compose, initialize_config_dir

from bksdm.bench.memory_plan import GIB, memory_plan, saved_activation_bytes
from bksdm.bench.run import benchmark


class Blocks(torch.nn.Module):
    """Two checkpointable blocks (a transformer's stack) between an embedder and a head."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.transformer_blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
            for _ in range(2)
        )
        self.head = torch.nn.Linear(16, 8)

    def forward(self, x):
        x = self.embed(x)
        for block in self.transformer_blocks:
            x = x + block(x)
        return self.head(x)


def test_saved_activations_are_counted_and_checkpointing_keeps_one_blocks_worth():
    with torch.device("meta"):
        model = Blocks().requires_grad_(True)
        x = torch.empty(4, 8)
    # a bare model: no stack of a known family, so every Sequential counts as one unit by its path
    import bksdm.bench.memory_plan as plan

    units = ["transformer_blocks.0", "transformer_blocks.1"]
    original, plan.checkpointed_units = plan.checkpointed_units, lambda _: units
    try:
        full = saved_activation_bytes(model, lambda m: m(x), checkpointing=False)
        kept = saved_activation_bytes(model, lambda m: m(x), checkpointing=True)
    finally:
        plan.checkpointed_units = original
    # a block saves its first linear's input (4x16), the GELU's input (4x64), the second linear's input (4x64);
    # the embedder saves x (4x8), the head its input (4x16); fp32
    block = 4 * (16 + 64 + 64) * 4
    assert full == 2 * block + 4 * (8 + 16) * 4
    assert kept == 4 * (8 + 16) * 4 + 2 * 4 * 16 * 4 + block  # outside, each block's input, one block


def test_the_plan_adds_the_states_per_parameter_and_fsdp_shards_the_students():
    plan = memory_plan(frozen_weight_bytes=2 * GIB, student_params=GIB, activation_bytes=3 * GIB,
                       mixed_precision=True, ema=True)  # fmt: skip
    assert plan == {"frozen": 2, "student": 20, "autocast": 2, "activations": 3, "total": 27}
    sharded = memory_plan(2 * GIB, GIB, 0, mixed_precision=False, ema=False, shards=8)
    assert sharded["student"] == 2 and sharded["autocast"] == 0


def test_count_only_says_whether_flux_mini_fits_on_one_gpu(capsys):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=["teacher=flux_random", "arch=flux_mini", "bench.count_only=true",
                                          "bench.resolution=512", "distill.gradient_checkpointing=true"])  # fmt: skip
    result = benchmark(cfg)
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(printed[-1]) == json.loads(json.dumps(result))
    memory = result["memory_gib"]["fast"]
    # FLUX.1's 11.9B parameters in bf16 (auto, for a transformer teacher), Flux-Mini's 3.18B with fp32 states and EMA (20 B each)
    assert round(memory["frozen"], 2) == round(11_901_408_320 * 2 / GIB, 2)
    assert round(memory["student"], 2) == round(3_179_199_552 * 20 / GIB, 2)
    assert 0 < memory["activations"] < 5 and "does not fit on 80 GB, fits on 141 GB" in printed[0]
    flops = result["flops_per_step"]["fast"]
    assert (
        2.5 * flops["teacher_forward"] * 3179 / 11901
        < flops["student_forward_backward"]
        < flops["teacher_forward"]
    )


def test_an_fp8_stored_teacher_takes_a_byte_per_weight_but_its_norms_and_modulations(capsys):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=["teacher=flux_random", "arch=flux_mini", "bench.count_only=true",
                                          "bench.resolution=512", "distill.frozen_storage_dtype=float8_e4m3fn"])  # fmt: skip
    frozen = benchmark(cfg)["memory_gib"]["fast"]["frozen"] * GIB
    # diffusers keeps what its FLUX model names norm (with the adaptive norms' modulation linears) and the
    # positional embedding in bf16: 14.1 GiB against 22.2 in bf16
    flux = 11_901_408_320
    assert 1.2 * flux < frozen < 1.3 * flux
    assert "frozen 14.1," in capsys.readouterr().out


def test_the_other_full_width_transformers_are_counted_from_their_embedded_configs(capsys):
    for teacher, arch, params in (
        ("sd35_random", "sd35_hprune", 2_243_171_520),
        ("pixart_random", "pixart_half", 610_856_096),
    ):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("bench", overrides=[f"teacher={teacher}", f"arch={arch}", "bench.count_only=true"])
        memory = benchmark(cfg)["memory_gib"]["fast"]
        assert round(memory["frozen"], 3) == round(params * 2 / GIB, 3)  # bf16, no build
