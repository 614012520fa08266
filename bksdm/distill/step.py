"""One BK-SDM training step in plain torch, read top to bottom in the order it runs.

    batch -> encode (VAE, text encoder; or taken pre-encoded) -> noise and timesteps from the teacher's
    schedule -> teacher forward (frozen, taps recording) -> student forward (taps recording) -> loss

Shapes: B images per micro-batch, latents (B, C, h, w) with h = w = resolution / 8 (C = 4; 16 for FLUX and
SD3), text context (B, T, D); an SDXL teacher also takes the pooled text (B, P) and six size ids (B, 6) per
image (``bksdm.teachers.conditioning``), FLUX and SD3 the pooled text, PixArt the context's mask. Every
denoiser is called through ``bksdm.teachers.denoiser_call.denoise``. Backward, the gradient guard, the
optimizer and the EMA follow in ``DistillModule``; nothing here knows of Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bksdm.distill.flow_matching import flow_matching_noise, is_flow_matching
from bksdm.distill.losses import DistillLoss, ddpm_task_target, task_prediction
from bksdm.distill.randomness import SampleRandomness
from bksdm.distill.taps import FeatureTaps, TapPair
from bksdm.teachers.conditioning import Conditioning, added_conditioning, size_ids
from bksdm.teachers.denoiser_call import denoise
from bksdm.teachers.frozen import FrozenTeacher

SIZE_KEYS = ("original_size", "crop_top_left")  # where each crop came from (ImageTransform.sample)


class DistillStep:
    """The objective of one micro-batch: ``step(batch, device) -> (loss, terms)``.

    Args:
        frozen: the teacher's frozen parts.
        student: the trainable block-removed U-Net or depth-pruned transformer (fp32 weights).
        loss: the weighted objective (task, output KD, feature KD).
        tap_pairs: the feature-KD pairs; empty when the loss uses no features.
        caption_dropout: probability of replacing a caption by the empty prompt (0 in the paper).
        flux_guidance: the guidance scale a FLUX teacher with a guidance embedding (FLUX.1-dev) and its
            student are both given.
    """

    def __init__(
        self,
        frozen: FrozenTeacher,
        student: torch.nn.Module,
        loss: DistillLoss,
        tap_pairs: Sequence[TapPair] = (),
        caption_dropout: float = 0.0,
        flux_guidance: float = 3.5,
    ):
        self.frozen, self.student, self.loss = frozen, student, loss
        self.flux_guidance = flux_guidance
        self.tap_pairs = list(tap_pairs)
        self.caption_dropout = caption_dropout
        self.teacher_taps: FeatureTaps | None = None
        self.student_taps: FeatureTaps | None = None

    def __call__(
        self, batch: Mapping[str, Any], device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss (0-dim, fp32, with autograd through the student) and its detached terms by name
        (``loss_task``, ``loss_kd_out``, ``loss_kd_feat``, ``kd_feat/<tap>``)."""
        randomness = SampleRandomness(batch.get("sample_seed"), device)  # each sample's own generator
        latents, conditioning = self.encode(batch, device, randomness)
        noisy, timesteps, target = self.add_noise(latents, randomness)
        teacher_pred, teacher_features = None, {}
        if self.loss.needs_teacher:
            teacher_pred, teacher_features = self.teacher_forward(noisy, timesteps, conditioning)
        student_pred, student_features = self.student_forward(noisy, timesteps, conditioning)
        return self.objective(student_pred, target, teacher_pred, student_features, teacher_features)

    # 1. encode ----------------------------------------------------------------------------------------
    def encode(
        self, batch: Mapping[str, Any], device: torch.device, randomness: SampleRandomness | None = None
    ) -> tuple[torch.Tensor, Conditioning]:
        """Latents (B, C, h, w), shifted and scaled by the VAE's factors, and the conditioning (text context
        (B, T, D); by family also pooled text, SDXL's size ids, PixArt's mask, FLUX's guidance), encoded once
        with the frozen parts or taken pre-encoded from the batch (``latent_mean`` and ``latent_std``,
        ``text_embeds``, ``pooled_text_embeds`` and ``text_mask``); returned as ordinary fp32 tensors usable
        by autograd."""
        frozen = self.frozen.to(device)
        randomness = randomness or SampleRandomness(None, device)
        captions = list(batch["caption"])
        if self.caption_dropout > 0:
            drop = randomness.rand(len(captions)) < self.caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        if "latent_mean" in batch:  # pre-encoded: sample the stored distribution, as the VAE path does
            mean = batch["latent_mean"].to(device, torch.float32)
            std = batch["latent_std"].to(device, torch.float32)
            latents = (mean + std * randomness.randn(mean.shape) - frozen.latent_shift) * frozen.latent_scale
        else:
            with frozen.compute():
                pixels = batch["pixel_values"].to(device, frozen.vae_dtype)  # (B, 3, H, W) in [-1, 1]
                posterior = frozen.vae.encode(pixels).latent_dist  # sampled as DiagonalGaussian.sample does
                noise = randomness.randn(posterior.mean.shape, posterior.mean.dtype)
                latents = (posterior.mean + posterior.std * noise - frozen.latent_shift) * frozen.latent_scale
            # an ordinary copy (inference tensors cannot be saved for backward), in the standard layout
            latents = latents.float().clone(memory_format=torch.contiguous_format)
        if "text_embeds" in batch:
            pooled, mask = batch.get("pooled_text_embeds"), batch.get("text_mask")
            conditioning = Conditioning(
                batch["text_embeds"].to(device, torch.float32),
                pooled=pooled.to(device, torch.float32) if pooled is not None else None,
                mask=mask.to(device) if mask is not None else None,
            )
        else:
            with frozen.compute():
                encoded = frozen.encode_text(captions)
            # ordinary fp32 copies of the inference tensors; PixArt's mask stays as it is (integers)
            conditioning = Conditioning(
                encoded.context.float().clone(),
                pooled=encoded.pooled.float().clone() if encoded.pooled is not None else None,
                mask=encoded.mask,
            )
        if frozen.family == "FluxPipeline" and frozen.denoiser.config.guidance_embeds:
            conditioning.guidance = torch.full((len(captions),), self.flux_guidance, device=device)
        if not frozen.sdxl:
            return latents, conditioning
        missing = [key for key in SIZE_KEYS if key not in batch]
        missing += ["pooled_text_embeds"] * (conditioning.pooled is None)
        if missing:
            raise ValueError(
                f"the SDXL teacher {frozen.source!r} is conditioned on each image's original size and crop "
                f"and on the pooled text embedding, and the batch has no {missing}: the image data sources "
                "record the sizes; latent shards must be written by `python -m bksdm.prepare` with this "
                "teacher (text_embeddings=true stores the pooled embedding too)"
            )
        # (height, width) in pixels
        target_size = tuple(frozen.vae_scale * side for side in latents.shape[-2:])
        ids = size_ids(batch["original_size"].to(device), batch["crop_top_left"].to(device), target_size)
        conditioning.added = added_conditioning(conditioning.pooled, ids.float())
        return latents, conditioning

    # 2. noise and timesteps ---------------------------------------------------------------------------
    def add_noise(
        self, latents: torch.Tensor, randomness: SampleRandomness | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy latents (B, C, h, w), timesteps (B,) and the task target (B, C, h, w) from the teacher's own
        schedule: for DDPM teachers timesteps uniform in [0, T) and the noise (or the velocity, for
        v-prediction) as target; for flow-matching teachers (FLUX, SD3) logit-normal timesteps and the
        velocity ``noise - latents`` (``flow_matching``)."""
        scheduler = self.frozen.noise_scheduler
        randomness = randomness or SampleRandomness(None, latents.device)
        if is_flow_matching(scheduler):
            return flow_matching_noise(scheduler, latents, randomness)
        # randn of a shape, not randn_like: the noise must not depend on the latents' memory layout
        noise = randomness.randn(latents.shape, latents.dtype)
        timesteps = randomness.randint(scheduler.config.num_train_timesteps, latents.shape[0])
        noisy = scheduler.add_noise(latents, noise, timesteps)
        return noisy, timesteps, ddpm_task_target(scheduler, latents, noise, timesteps)

    # 3. teacher forward -------------------------------------------------------------------------------
    def teacher_forward(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The teacher's prediction (B, C', h, w) and tapped features by tap path, computed without autograd
        in its low precision."""
        frozen = self.frozen.to(noisy.device)
        teacher_taps, _ = self.hook_taps()
        with frozen.compute(), teacher_taps.recording() as features:
            prediction = denoise(frozen.denoiser, frozen.family, noisy, timesteps, conditioning, frozen.dtype)
        # inference tensors cannot be saved for backward: hand out ordinary copies
        return prediction.clone(), {path: feature.clone() for path, feature in features.items()}

    # 4. student forward -------------------------------------------------------------------------------
    def student_forward(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The student's prediction (B, C', h, w) and tapped features, with autograd."""
        _, student_taps = self.hook_taps()
        with student_taps.recording() as features:
            prediction = denoise(self.student, self.frozen.family, noisy, timesteps, conditioning)
        return prediction, features

    # 5. loss ------------------------------------------------------------------------------------------
    def objective(
        self,
        student_pred: torch.Tensor,
        target: torch.Tensor,
        teacher_pred: torch.Tensor | None,
        student_features: Mapping[str, torch.Tensor],
        teacher_features: Mapping[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted loss (fp32) and its terms; switched-off terms are still computed (without
        autograd) where their inputs exist, since they are worth watching."""
        pairs = [
            (p.name, student_features[p.student], teacher_features[p.teacher], p.weight)
            for p in self.tap_pairs
        ]
        loss, terms = self.loss(student_pred, target, teacher_pred, pairs)
        with torch.no_grad():
            if "loss_task" not in terms:
                terms["loss_task"] = F.mse_loss(task_prediction(student_pred, target).float(), target.float())
            if "loss_kd_out" not in terms and teacher_pred is not None:
                terms["loss_kd_out"] = F.mse_loss(student_pred.float(), teacher_pred.float())
        return loss, terms

    # taps: hooked while a trainer uses the module, taken off when it is torn down ---------------------
    def hook_taps(self) -> tuple[FeatureTaps, FeatureTaps]:
        if self.teacher_taps is None:
            self.teacher_taps = FeatureTaps(
                self.frozen.denoiser, [p.teacher for p in self.tap_pairs], "teacher"
            )
            self.student_taps = FeatureTaps(self.student, [p.student for p in self.tap_pairs], "student")
        return self.teacher_taps, self.student_taps

    def remove_taps(self) -> None:
        for taps in (self.teacher_taps, self.student_taps):
            if taps is not None:
                taps.remove()
        self.teacher_taps = self.student_taps = None
