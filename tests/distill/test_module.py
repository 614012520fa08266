"""DistillModule on the toy teacher: frozen teacher, what is trained, what is checkpointed, one step's data path."""

import functools
import linecache
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from diffusers import DDPMScheduler
from helpers.module import fit, make_module

from bksdm.distill.losses import DistillLoss


@torch.no_grad()
def output_gap(module) -> float:
    """MSE between student and teacher predictions on fixed held-out noisy latents and captions."""
    g = torch.Generator().manual_seed(99)
    batch = {"pixel_values": torch.rand(4, 3, 128, 128, generator=g) * 2 - 1, "caption": ["a red circle"] * 4}
    latents, conditioning = module.step.encode(batch, module.device)
    noisy = latents + torch.randn(latents.shape, generator=g)
    timesteps = torch.tensor([50, 300, 600, 900])
    teacher, _ = module.step.teacher_forward(noisy, timesteps, conditioning)
    student = module.student(noisy, timesteps, conditioning.context).sample
    return torch.nn.functional.mse_loss(student, teacher).item()


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_student_learns_to_imitate_the_teacher_and_the_teacher_stays_frozen(tmp_path):
    module = make_module(loss=DistillLoss(w_task=0.0, w_out=1.0, w_feat=1.0))
    teacher_before = state(module.frozen.unet)
    vae_before, text_before = state(module.frozen.vae), state(module.frozen.text_encoder)
    gap_before = output_gap(module)
    fit(module, 40, tmp_path)
    gap_after = output_gap(module)
    assert gap_after < 0.5 * gap_before, (gap_before, gap_after)
    for before, model in (
        (teacher_before, module.frozen.unet),
        (vae_before, module.frozen.vae),
        (text_before, module.frozen.text_encoder),
    ):
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_frozen_parts_are_outside_optimizer_and_checkpoint(tmp_path):
    module = make_module(ema_decay=0.9)
    trainer = fit(module, 2, tmp_path)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.student.parameters()}
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    keys = checkpoint["state_dict"].keys()
    assert {k.split(".")[0] for k in keys} == {"student", "ema"}
    student_tensors = sum(p.numel() for p in module.student.parameters())
    assert (
        sum(v.numel() for k, v in checkpoint["state_dict"].items() if k.startswith("student."))
        == student_tensors
    )


def test_ema_follows_the_student_and_is_what_gets_exported(tmp_path):
    module = make_module(ema_decay=0.5)
    initial = state(module.student)
    fit(module, 3, tmp_path)
    exported = module.exported_student()
    assert exported is module.ema.module
    key = "conv_in.weight"
    ema, student = exported.state_dict()[key], module.student.state_dict()[key]
    assert not torch.equal(ema, student) and not torch.equal(ema, initial[key])
    assert int(module.ema.n_averaged) == 3  # one update per optimizer step


def test_an_ema_averaged_every_few_steps_is_brought_up_to_date_for_export(tmp_path):
    module = make_module(ema_decay=0.5, ema_every=2)
    fit(module, 3, tmp_path)
    assert (int(module.ema.n_averaged), int(module.ema.pending)) == (2, 1)  # averaged at step 2
    module.exported_student()
    assert (int(module.ema.n_averaged), int(module.ema.pending)) == (3, 0)


@pytest.mark.parametrize(
    ("loss", "teacher_calls", "taps"),
    [
        (DistillLoss(1, 0, 0), 0, 0),
        (DistillLoss(1, 1, 0), 2, 0),
        (DistillLoss(1, 0, 1), 2, 8),
        (DistillLoss(1, 1, 1), 2, 8),
    ],
)
def test_loss_switches_skip_the_work_they_do_not_need(tmp_path, loss, teacher_calls, taps):
    module = make_module(loss=loss)
    calls = []
    module.frozen.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    fit(module, 2, tmp_path)
    assert len(calls) == teacher_calls
    assert len(module.tap_pairs) == taps


@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_tap_fires_once_per_step(tmp_path, checkpointing):
    module = make_module("tiny", gradient_checkpointing=checkpointing)
    per_step = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            per_step.append(
                (dict(pl_module.step.teacher_taps.calls), dict(pl_module.step.student_taps.calls))
            )

    fit(module, 3, tmp_path, callbacks=[Spy()])
    assert len(per_step) == 3
    for teacher_calls, student_calls in per_step:
        assert teacher_calls == {p.teacher: 1 for p in module.tap_pairs}
        assert student_calls == {p.student: 1 for p in module.tap_pairs}
    assert module.step.teacher_taps is None  # hooks are taken off when the trainer tears the module down


def test_targets_follow_the_teachers_prediction_type():
    module = make_module(loss=DistillLoss(1, 0, 0))
    latents = torch.randn(3, 4, 16, 16)
    torch.manual_seed(5)
    noisy, timesteps, target = module.step.add_noise(latents)
    torch.manual_seed(5)
    noise = torch.randn_like(latents)
    torch.testing.assert_close(target, noise)
    torch.testing.assert_close(noisy, module.frozen.noise_scheduler.add_noise(latents, noise, timesteps))
    assert timesteps.min() >= 0 and timesteps.max() < 1000
    module.frozen.noise_scheduler = DDPMScheduler.from_config(
        module.frozen.noise_scheduler.config, prediction_type="v_prediction"
    )
    torch.manual_seed(5)
    _, timesteps, target = module.step.add_noise(latents)
    torch.testing.assert_close(target, module.frozen.noise_scheduler.get_velocity(latents, noise, timesteps))


def test_caption_dropout_encodes_the_empty_prompt():
    batch = {"pixel_values": torch.zeros(2, 3, 128, 128), "caption": ["a red circle", "a blue square"]}
    empty = {"pixel_values": batch["pixel_values"], "caption": ["", ""]}
    dropped = make_module(caption_dropout=1.0)
    kept = make_module(caption_dropout=0.0)

    def context(module, batch):
        return module.step.encode(batch, "cpu")[1].context

    torch.testing.assert_close(context(dropped, batch), context(kept, empty))
    assert not torch.allclose(context(kept, batch), context(kept, empty))


def test_frozen_parts_run_in_the_configured_precision():
    module = make_module(frozen_dtype="bfloat16")
    assert (
        module.frozen.unet.dtype
        == module.frozen.vae.dtype
        == module.frozen.text_encoder.dtype
        == torch.bfloat16
    )
    assert module.student.dtype == torch.float32
    latents, conditioning = module.step.encode(
        {"pixel_values": torch.zeros(1, 3, 128, 128), "caption": ["x"]}, "cpu"
    )
    assert latents.dtype == conditioning.context.dtype == torch.float32 and latents.shape == (1, 4, 16, 16)
    assert conditioning.added is None  # SD-v1: no added conditioning


@pytest.mark.parametrize("frozen_dtype", ["float16", "bfloat16"])
def test_under_bf16_autocast_the_frozen_parts_compute_in_their_own_dtype(frozen_dtype):
    # bf16-mixed (the default trainer) wraps the step in autocast: it must not recast the frozen parts
    module = make_module(frozen_dtype=frozen_dtype)
    seen = set()
    for model in (module.frozen.unet, module.frozen.vae, module.frozen.text_encoder):
        for layer in model.modules():
            if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear | torch.nn.GroupNorm):
                layer.register_forward_hook(
                    lambda _, inputs, output: seen.add((inputs[0].dtype, output.dtype))
                )
    batch = {"pixel_values": torch.zeros(1, 3, 128, 128), "caption": ["x"]}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latents, conditioning = module.step.encode(batch, module.device)
        prediction, _ = module.step.teacher_forward(latents, torch.tensor([10]), conditioning)
    dtype = getattr(torch, frozen_dtype)
    assert seen == {(dtype, dtype)}
    assert prediction.dtype == dtype and latents.dtype == conditioning.context.dtype == torch.float32


def test_frozen_dtype_auto_is_bf16_on_a_cpu_and_fp16_on_cuda():
    from bksdm.teachers.frozen import resolve_frozen_dtype

    assert resolve_frozen_dtype("auto", "cpu") == "bfloat16"
    assert resolve_frozen_dtype("auto", "cuda") == "float16"
    assert resolve_frozen_dtype("float32", "cuda") == "float32"
    assert make_module(frozen_dtype="auto").frozen.dtype == (
        torch.float16 if torch.cuda.is_available() else torch.bfloat16
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"frozen_dtype": "fp8"},
            r"frozen_dtype='fp8': accepted are \['auto', 'float32', 'float16', 'bfloat16'\]",
        ),
        ({"caption_dropout": 1.5}, r"caption_dropout=1\.5 must be a probability"),
        ({"ema_decay": 1.0}, r"ema_decay=1\.0 must be in \(0, 1\)"),
        ({"ema_decay": 0.9, "ema_every": 0}, r"ema_every=0: accepted are integers >= 1"),
        ({"nonfinite_patience": 0}, r"nonfinite_patience=0 must be >= 1"),
        ({"variant": "huge"}, "unknown removal 'huge'"),
    ],
)
def test_bad_module_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_module(**kwargs)


class NanAt:
    """Wraps a DistillStep so that the given calls (0-based) return a NaN loss."""

    def __init__(self, step, calls):
        self.original, self.calls, self.count = step, set(calls), 0

    def __getattr__(self, name):
        return getattr(self.original, name)

    def __call__(self, batch, device):
        loss, terms = self.original(batch, device)
        self.count += 1
        if self.count - 1 in self.calls:
            return loss * float("nan"), {**terms, "loss_kd_out": terms["loss_kd_out"] * float("nan")}
        return loss, terms


@pytest.mark.parametrize("fused", [False, True], ids=["host-check", "device-skip"])
def test_a_nonfinite_loss_skips_its_step_and_a_streak_stops_the_run(tmp_path, fused):
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3, fused=fused)
    module = make_module(loss=DistillLoss(1.0, 1.0, 0.0), ema_decay=0.9, optimizer=optimizer)
    module.step = NanAt(module.step, calls=[1, 2])
    trainer = fit(module, 5, tmp_path)
    assert trainer.global_step == 5 and module.guard.nonfinite.state() == {"skipped": 2, "streak": 0}
    assert int(module.ema.n_averaged) == 3  # the skipped steps moved neither the student nor its EMA
    assert int(trainer.optimizers[0].state[next(module.student.parameters())]["step"]) == 3
    assert all(torch.isfinite(p).all() for p in module.student.parameters())
    assert all(torch.isfinite(p).all() for p in module.ema.module.parameters())

    module = make_module(loss=DistillLoss(1.0, 1.0, 0.0), nonfinite_patience=3, optimizer=optimizer)
    module.step = NanAt(module.step, calls=range(2, 100))
    with pytest.raises(FloatingPointError) as error:
        fit(module, 10, tmp_path, log_every_n_steps=3)
    message = str(error.value)
    assert "3 non-finite losses or gradients in a row, up to step 4" in message  # steps 2, 3 and 4
    # without a host sync per step, the streak is found on the next logging step (6)
    assert ("found at step 6" in message) == fused
    assert "last finite loss terms at step 1: loss_task=" in message and "loss_kd_out=" in message


STEP_FILES = {"module.py", "step.py", "guard.py", "ema.py", "losses.py", "taps.py", "randomness.py"}


def test_with_a_fused_optimizer_the_step_reads_no_device_value_on_the_host(tmp_path, monkeypatch):
    """Host reads of tensor values (item, bool, int, float, tolist) from the step's code: a GPU would wait
    for the device at each. Their number must not grow with the steps (the checks on logging steps and
    at the end are the only ones; the bad-sample tally and the samples' seeds are host values)."""
    reads = []

    def recording(name):
        original = getattr(torch.Tensor, name)

        def read(tensor, *args, **kwargs):
            caller = sys._getframe(1)
            code = caller.f_code.co_filename
            line = linecache.getline(code, caller.f_lineno)
            host = "skips" in line  # the tally counts on the host
            if Path(code).name in STEP_FILES and "bksdm" in code and not host:
                reads.append(f"{Path(code).name}:{caller.f_lineno}")
            return original(tensor, *args, **kwargs)

        return read

    for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, recording(name))
    counts = {}
    for steps in (2, 5):
        reads.clear()
        optimizer = functools.partial(torch.optim.AdamW, lr=1e-3, fused=True)
        fit(make_module(ema_decay=0.9, optimizer=optimizer), steps, tmp_path, log_every_n_steps=50)
        counts[steps] = sorted(reads)
    assert counts[2] == counts[5], counts


def test_clipping_by_the_steps_norm_equals_clip_grad_norm(tmp_path):
    def reference_clipping(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        torch.nn.utils.clip_grad_norm_(module.student.parameters(), gradient_clip_val)

    weights = {}
    cases = [
        ("folded", True, 0.05),
        ("unfused", False, 0.05),
        ("reference", False, 0.05),
        ("unclipped", True, None),
    ]
    for name, fused, clip in cases:
        optimizer = functools.partial(torch.optim.AdamW, lr=1e-3, fused=fused)
        module = make_module(optimizer=optimizer)
        if name == "reference":
            module.configure_gradient_clipping = reference_clipping
        fit(module, 3, tmp_path, gradient_clip_val=clip)
        assert float(module.guard.grad_norm) > 0.05  # the clip bites
        weights[name] = torch.cat([p.detach().flatten() for p in module.student.parameters()])
    for name in ("folded", "unfused"):
        torch.testing.assert_close(weights[name], weights["reference"], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(weights["folded"], weights["unclipped"], rtol=1e-4, atol=1e-6)
