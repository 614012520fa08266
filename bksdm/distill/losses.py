"""The BK-SDM objective: task loss, output KD and feature KD, each an fp32 MSE with its own weight."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_REDUCTIONS = ("sum", "normalized")


class DistillLoss(nn.Module):
    """``w_task * MSE(student, target) + w_out * MSE(student, teacher) + w_feat * feature term``.

    Args:
        w_task: weight of the task loss against the scheduler's target (noise or velocity).
        w_out: weight of output KD against the teacher's prediction.
        w_feat: weight of feature KD over the tap pairs.
        feature_reduction: ``sum`` (the paper: plain sum of each pair's MSE, which lets deep, large-valued
            features dominate) or ``normalized`` (each pair's MSE divided by the mean square of the teacher
            feature, then summed: every pair counts by its relative error).

    A zero weight switches its term off; ``needs_teacher`` and ``needs_features`` say what work the
    caller may skip.
    """

    def __init__(
        self, w_task: float = 1.0, w_out: float = 1.0, w_feat: float = 1.0, feature_reduction: str = "sum"
    ):
        super().__init__()
        for name, weight in (("w_task", w_task), ("w_out", w_out), ("w_feat", w_feat)):
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise ValueError(f"loss.{name} must be a number >= 0, got {weight!r}")
        if w_task == w_out == w_feat == 0:
            raise ValueError("loss weights w_task, w_out and w_feat are all 0: nothing would be trained")
        if feature_reduction not in FEATURE_REDUCTIONS:
            raise ValueError(
                f"loss.feature_reduction={feature_reduction!r}: accepted are {list(FEATURE_REDUCTIONS)}"
            )
        self.w_task, self.w_out, self.w_feat = float(w_task), float(w_out), float(w_feat)
        self.feature_reduction = feature_reduction

    @property
    def needs_teacher(self) -> bool:
        return self.w_out > 0 or self.w_feat > 0

    @property
    def needs_features(self) -> bool:
        return self.w_feat > 0

    def forward(
        self,
        student_pred: torch.Tensor,
        target: torch.Tensor | None,
        teacher_pred: torch.Tensor | None = None,
        feature_pairs: Sequence[tuple[str, torch.Tensor, torch.Tensor]] = (),
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its terms.

        Args:
            student_pred: the student's prediction, (B, C, h, w); (B, 2C, h, w) for a learned-variance
                model (PixArt), whose first C channels the task term compares with the target.
            target: the scheduler's target of the same shape (needed when w_task > 0).
            teacher_pred: the teacher's prediction (needed when w_out > 0).
            feature_pairs: (name, student feature, teacher feature[, weight]) per tap pair (needed when
                w_feat > 0); the feature term is the weighted sum (weight 1 where none is given).

        Returns:
            ``(loss, terms)``: terms holds ``loss_task``, ``loss_kd_out``, ``loss_kd_feat`` (unweighted)
            for the enabled terms and ``kd_feat/<name>`` per pair; all detached, fp32.
        """
        terms: dict[str, torch.Tensor] = {}
        total = student_pred.new_zeros((), dtype=torch.float32)
        if self.w_task > 0:
            target = _required(target, "target", "w_task")
            terms["loss_task"] = _mse(task_prediction(student_pred, target), target)
            total = total + self.w_task * terms["loss_task"]
        if self.w_out > 0:
            terms["loss_kd_out"] = _mse(student_pred, _required(teacher_pred, "teacher_pred", "w_out"))
            total = total + self.w_out * terms["loss_kd_out"]
        if self.w_feat > 0:
            if not feature_pairs:
                raise ValueError(
                    "loss.w_feat > 0 needs feature pairs, got none: declare taps in the arch config"
                )
            feature_total = total.new_zeros(())
            for name, student_feature, teacher_feature, *weight in feature_pairs:
                term = _mse(student_feature, teacher_feature)
                if self.feature_reduction == "normalized":
                    term = term / teacher_feature.detach().float().pow(2).mean().clamp_min(1e-8)
                terms[f"kd_feat/{name}"] = term
                feature_total = feature_total + (weight[0] if weight else 1.0) * term
            terms["loss_kd_feat"] = feature_total
            total = total + self.w_feat * feature_total
        return total, {k: v.detach() for k, v in terms.items()}


def ddpm_task_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The task target (B, C, h, w) of a DDPM-scheduled denoiser: the ``noise`` for ``epsilon``
    prediction, the velocity of ``latents`` and ``noise`` at ``timesteps`` for SD-v2's ``v_prediction``."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"teacher prediction_type {scheduler.config.prediction_type!r} is not supported")


def task_prediction(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The part of a prediction the task target is for: all of it, or the noise half (the first C
    channels) of a learned-variance prediction (PixArt: 2C channels, noise then variance), whose variance
    half only output KD trains, as in the pipelines that sample it."""
    return prediction[:, : target.shape[1]] if prediction.shape[1] != target.shape[1] else prediction


def _mse(prediction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), reference.detach().float(), reduction="mean")


def _required(tensor: torch.Tensor | None, name: str, weight: str) -> torch.Tensor:
    if tensor is None:
        raise ValueError(f"{name} is required when loss.{weight} > 0")
    return tensor
