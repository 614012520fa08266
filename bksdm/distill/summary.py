"""The start-up summary of a distillation run: what is distilled into what, through which taps."""

from __future__ import annotations

from bksdm.arch.depth import STACKS, kept_blocks
from bksdm.arch.report import unit_fates
from bksdm.distill.flow_matching import is_flow_matching


def startup_summary(module, teacher_name: str, batch_size: int, accumulation: int, world_size: int) -> str:
    """A few lines: teacher and student sizes, removed units, tap pairs with shapes, loss weights, batch."""
    teacher, student = module.frozen.denoiser, module.student
    teacher_params = sum(p.numel() for p in teacher.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    spec = module.removal_spec
    if module.is_transformer:
        kind = type(teacher).__name__
        kept = kept_blocks(teacher.config, spec)
        depths = ", ".join(f"{stack} {len(blocks)} of {teacher.config[field]}" for (stack, blocks), field in
                           zip(kept.items(), STACKS[kind].values(), strict=True))  # fmt: skip
        removal_line = f"kept     {depths}"
        target = "velocity (flow matching)" if is_flow_matching(module.frozen.noise_scheduler) else "epsilon"
    else:
        kind = "U-Net"
        removed = [unit for unit, fate in unit_fates(teacher.config, spec).items() if fate is None]
        removal_line = f"removed  {len(removed)} units: {', '.join(removed)}"
        target = module.frozen.noise_scheduler.config.prediction_type
    loss = module.loss
    storage = module.hparams.frozen_storage_dtype
    stored = f" (weights stored in {storage})" if storage else ""
    lines = [
        f"teacher  {teacher_name} ({module.hparams.teacher_source}): {kind} {teacher_params:,} params, "
        f"{module.hparams.frozen_dtype}{stored}, frozen",
        f"student  {module.student_name}: {kind} {student_params:,} params ({student_params / teacher_params:.1%} "
        f"of the teacher), initialised from the teacher",
        removal_line,
        f"loss     w_task={loss.w_task:g} w_out={loss.w_out:g} w_feat={loss.w_feat:g} "
        f"(feature terms: {loss.feature_reduction}); target: {target}",
    ]
    if module.tap_pairs:
        lines.append(
            f"taps     {len(module.tap_pairs)} pairs (teacher -> student, feature shape at the native latent):"
        )
        lines += [
            f"           {p.teacher} -> {p.student}  {'x'.join(map(str, module.tap_shapes[p.name]))}"
            + (f"  weight {p.weight:g}" if p.weight != 1 else "")
            for p in module.tap_pairs
        ]
    else:
        lines.append("taps     none (loss.w_feat = 0)")
    lines.append(
        f"batch    {batch_size} per device x {accumulation} accumulation x {world_size} device(s) = "
        f"{batch_size * accumulation * world_size} images per optimizer step; EMA "
        + (
            "off"
            if module.ema is None
            else f"decay {module.hparams.ema_decay}, every {module.ema.every} step(s)"
        )
    )
    return "\n".join(lines)
