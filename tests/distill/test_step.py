"""The step in plain torch (bksdm.distill.step) and the step guard (bksdm.distill.guard), without Lightning."""

import subprocess
import sys

import torch

from bksdm.arch import build_student
from bksdm.distill.guard import StepGuard
from bksdm.distill.losses import DistillLoss
from bksdm.distill.step import DistillStep
from bksdm.distill.taps import paper_tap_pairs
from bksdm.teachers.frozen import FrozenTeacher
from bksdm.teachers.loading import load_components


def test_the_step_and_its_guard_import_neither_lightning_nor_hydra():
    code = (
        "import sys, bksdm.distill.step, bksdm.distill.guard, bksdm.teachers.frozen; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'hydra', 'omegaconf'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def tiny_step(loss=None) -> DistillStep:
    torch.manual_seed(0)
    parts = load_components("builtin:toy")
    student = build_student(parts.unet, "small", dtype=torch.float32)
    frozen = FrozenTeacher.freeze(parts, torch.float32, "builtin:toy")
    taps = paper_tap_pairs(parts.unet.config, "small")
    return DistillStep(frozen, student, loss or DistillLoss(), taps)


def test_a_plain_torch_loop_of_steps_brings_the_student_to_its_teacher():
    step = tiny_step(DistillLoss(w_task=0.0, w_out=1.0, w_feat=1.0))
    optimizer = torch.optim.AdamW(step.student.parameters(), lr=1e-3)
    guard = StepGuard()
    pixels = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"pixel_values": pixels, "caption": ["a red circle", "a blue square"]}
    batch["sample_seed"] = [1, 2]  # the same noise and timesteps every step: the gap on them must shrink
    first = None
    for index in range(15):
        loss, terms = step(batch, torch.device("cpu"))
        assert set(terms) >= {"loss_task", "loss_kd_out", "loss_kd_feat"}
        assert {f"kd_feat/{p.name}" for p in step.tap_pairs} <= set(terms)
        first = first if first is not None else float(terms["loss_kd_out"])
        optimizer.zero_grad()
        loss.backward()
        guard.inspect(optimizer, step.student.parameters(), index, terms)
        guard.clip(optimizer, step.student.parameters(), max_norm=1.0)
        optimizer.step()
        guard.end_step(optimizer)
        assert bool(guard.applied)
    assert float(terms["loss_kd_out"]) < 0.5 * first
    assert not hasattr(optimizer, "found_inf") and not hasattr(optimizer, "grad_scale")
    step.remove_taps()


def test_the_guard_skips_a_nonfinite_step_on_the_device_or_by_dropping_the_gradients():
    for fused in (True, False):
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.AdamW([weight], lr=0.1, fused=fused)
        guard = StepGuard(nonfinite_patience=2)
        (weight * float("nan")).sum().backward()
        norm = guard.inspect(optimizer, [weight], step=0, terms={"loss": torch.tensor(float("nan"))})
        assert not torch.isfinite(norm) and not bool(guard.applied)
        assert (weight.grad is None) != fused  # fused: kept, and found_inf skips the update in the kernel
        assert fused == hasattr(optimizer, "found_inf")
        optimizer.step()
        guard.end_step(optimizer)
        assert torch.equal(weight.detach(), torch.ones(3))
        assert guard.nonfinite.state() == {"skipped": 1, "streak": 1}
