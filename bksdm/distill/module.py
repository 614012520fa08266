"""DistillModule: a frozen SD teacher, a trainable block-removed student, and one BK-SDM training step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from lightning.pytorch.utilities import rank_zero_info
from transformers import CLIPTextModel, CLIPTokenizer

from bksdm.arch import build_student, resolve_variant
from bksdm.data.skips import SkipTally, describe_skips
from bksdm.distill.ema import StudentEMA
from bksdm.distill.guard import NonfiniteTracker
from bksdm.distill.losses import DistillLoss
from bksdm.distill.randomness import SampleRandomness
from bksdm.distill.speed import (
    check_speed_settings,
    compile_in_place,
    resolve_auto,
    set_attention,
    to_channels_last,
)
from bksdm.distill.taps import FeatureTaps, TapPair, check_tap_pairs, parse_tap_pairs
from bksdm.teachers.loading import load_components, resolve_source
from bksdm.training.fsdp import gradient_shard_group
from bksdm.training.host_sync import ranks_agree, ranks_agree_each
from bksdm.training.rng import restore_rng_states, rng_states

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FROZEN_DTYPES = ("auto", *DTYPES)


def resolve_frozen_dtype(name: str, device: torch.device | str) -> str:
    """``auto``: float16 on CUDA (the paper's choice, tensor cores), bfloat16 elsewhere (CPUs compute
    bf16 natively, AMX or AVX-512, while fp16 convolutions and group norms on a CPU are slow or missing)."""
    if name not in FROZEN_DTYPES:
        raise ValueError(f"distill.frozen_dtype={name!r}: accepted are {list(FROZEN_DTYPES)}")
    if name != "auto":
        return name
    return "float16" if torch.device(device).type == "cuda" else "bfloat16"


@dataclass
class FrozenParts:
    """The teacher's frozen models. Held outside nn.Module registration on purpose: they are not
    parameters of the LightningModule, so they stay out of the optimizer, out of checkpoints (they are
    reloaded from their source) and out of DDP/FSDP wrapping and gradient synchronisation."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL | None  # None when the data brings pre-encoded latents
    text_encoder: CLIPTextModel | None  # None when the data brings text embeddings
    tokenizer: CLIPTokenizer
    device: torch.device | None = None  # where the models are now; None: not placed yet


class DistillModule(L.LightningModule):
    """BK-SDM knowledge distillation of a block-removed student from a frozen SD teacher.

    Args:
        teacher_source: hub id, diffusers folder or ``builtin:tiny``.
        removal: the student's removal spec (``base``/``small``/``tiny`` or a mapping).
        taps: (teacher path, student path) pairs for feature KD.
        loss: the weighted objective.
        optimizer: ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.AdamW, lr=5e-5)``).
        lr_scheduler: ``optimizer -> LRScheduler`` or None for a constant learning rate.
        revision: hub revision of the teacher.
        frozen_dtype: ``float32``, ``float16``, ``bfloat16`` or ``auto`` (float16 when CUDA is available,
            else bfloat16): the precision the teacher U-Net, VAE and text encoder are stored and compute
            in, also inside a mixed-precision (autocast) region.
        ema_decay: EMA decay of the student's weights, None for no EMA.
        gradient_checkpointing: recompute the student's activations in backward (memory for time).
        caption_dropout: probability of replacing a caption by the empty prompt (classifier-free guidance);
            0 as in the paper.
        load_vae: False when the data brings pre-encoded latents (``data=latents``): no VAE in memory.
        load_text_encoder: False when the data brings text embeddings: no text encoder in memory.
        nonfinite_patience: a step whose loss or gradients are NaN or infinite is skipped and counted;
            this many in a row stop the run, naming the step and the last finite loss terms. With an
            optimizer that can skip a step on the device (fused AdamW) the check costs no host sync and
            the stop comes at the next logging step; with others it is made on the host every step.
        attention: ``sdpa`` (PyTorch's fused attention) or ``eager`` (the reference's explicit softmax).
        channels_last: NHWC weights and activations for the U-Nets and VAE; ``auto``: on a GPU only.
        compile: ``torch.compile`` the teacher and student U-Nets in place; ``auto``: on a GPU only.
        teacher_inference_mode: run the frozen parts under ``torch.inference_mode`` (False: called
            plainly, as the reference implementation does; their weights need no gradient, so autograd
            records nothing either way, but inference mode skips its bookkeeping).
        ema_foreach: update the EMA with one multi-tensor lerp (False: tensor by tensor, as diffusers'
            EMAModel in the reference implementation).
    """

    def __init__(
        self,
        teacher_source: str,
        removal: str | Mapping,
        taps: Sequence,
        loss: DistillLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        revision: str | None = None,
        frozen_dtype: str = "float32",
        ema_decay: float | None = None,
        gradient_checkpointing: bool = False,
        caption_dropout: float = 0.0,
        load_vae: bool = True,
        load_text_encoder: bool = True,
        nonfinite_patience: int = 5,
        attention: str = "sdpa",
        channels_last: bool | str = "auto",
        compile: bool | str = "auto",
        teacher_inference_mode: bool = True,
        ema_foreach: bool = True,
    ):
        super().__init__()
        frozen_dtype = resolve_frozen_dtype(frozen_dtype, "cuda" if torch.cuda.is_available() else "cpu")
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout={caption_dropout!r} must be a probability in [0, 1]")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay!r} must be in (0, 1), or null for no EMA")
        if nonfinite_patience < 1:
            raise ValueError(f"nonfinite_patience={nonfinite_patience!r} must be >= 1")
        check_speed_settings({"attention": attention, "channels_last": channels_last, "compile": compile})
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"])
        self.loss = loss
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.frozen_dtype = DTYPES[frozen_dtype]
        self.caption_dropout = caption_dropout
        self.tap_pairs: list[TapPair] = parse_tap_pairs(taps) if loss.needs_features else []

        if caption_dropout > 0 and not load_text_encoder:
            raise ValueError(
                "caption_dropout > 0 needs the text encoder: pre-encoded text embeddings cannot drop captions"
            )
        wanted = ["unet", "tokenizer", "noise_scheduler"]
        wanted += ["vae"] * load_vae + ["text_encoder"] * load_text_encoder
        parts = load_components(teacher_source, parts=wanted, revision=revision)
        self.latent_scale = (
            parts.vae.config.scaling_factor
            if parts.vae is not None
            else AutoencoderKL.load_config(
                resolve_source(teacher_source), subfolder="vae", revision=revision
            )["scaling_factor"]
        )
        # the student is copied from the fp32 teacher before the teacher drops to its low precision
        self.student = build_student(parts.unet, removal, dtype=torch.float32)
        if gradient_checkpointing:
            self.student.enable_gradient_checkpointing()
        self.noise_scheduler: DDPMScheduler = parts.noise_scheduler
        for model in filter(None, (parts.unet, parts.vae, parts.text_encoder)):
            # nn.Module.to, not diffusers' override: that one warns about fp32-only modules SD has none of
            torch.nn.Module.to(model.requires_grad_(False).eval(), dtype=self.frozen_dtype)
        self.frozen = FrozenParts(parts.unet, parts.vae, parts.text_encoder, parts.tokenizer)
        for model in (self.student, parts.unet, parts.vae):
            if model is not None:
                set_attention(model, attention)
        self.ema = StudentEMA(self.student, ema_decay, ema_foreach) if ema_decay is not None else None
        self.teacher_inference_mode = teacher_inference_mode
        self.speedups_applied = False
        self.removal_spec = resolve_variant(removal)
        # paths and shapes are checked now, before any data is touched
        self.tap_shapes = (
            check_tap_pairs(
                parts.unet.config, self.student.config, self.tap_pairs, parts.unet.config.sample_size
            )
            if self.tap_pairs
            else {}
        )
        self.skips = SkipTally()
        self.nonfinite = NonfiniteTracker(nonfinite_patience)
        self.step_terms: dict[str, torch.Tensor] = {}  # the last micro-batch's loss terms
        self.step_applied: torch.Tensor | None = None  # whether this optimizer step is applied (device)
        self.grad_norm: torch.Tensor | None = None  # this step's gradient norm, before clipping (device)
        self.grad_shard_group = None  # under FSDP: the ranks whose gradient shards make up the norm
        self.teacher_taps: FeatureTaps | None = None
        self.student_taps: FeatureTaps | None = None

    # -- frozen parts ---------------------------------------------------------------------------------
    def _frozen_on_device(self) -> FrozenParts:
        if self.frozen.device != self.device:
            for model in filter(None, (self.frozen.unet, self.frozen.vae, self.frozen.text_encoder)):
                model.to(self.device)
            self.frozen.device = self.device
        return self.frozen

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None:  # what the skip tally names, and when it gives up on the source
            self.skips = SkipTally(
                getattr(datamodule, "source", "the data source"),
                getattr(datamodule, "max_consecutive_bad", 256),
            )
        self._frozen_on_device()
        self.grad_shard_group = gradient_shard_group(self.trainer.strategy.model)  # wrapped by now

    @contextlib.contextmanager
    def _frozen_compute(self):
        """The frozen parts compute in ``frozen_dtype``, without autograd: autocast is switched off
        around them, since under ``bf16-mixed`` it would run fp16 weights in bf16 (and on a CPU mix the
        two in one group norm, which fails)."""
        with contextlib.ExitStack() as stack:
            if self.teacher_inference_mode:
                stack.enter_context(torch.inference_mode())
            stack.enter_context(torch.autocast(self.device.type, enabled=False))
            yield

    # -- taps: hooked while a trainer uses the module, taken off when it is torn down ------------------
    def setup(self, stage: str) -> None:
        self._hook_taps()
        if not self.speedups_applied:  # once, now that the device is known (the module is not on it yet)
            device = self.trainer.strategy.root_device
            unets = [self.student, self.frozen.unet]
            if resolve_auto(self.hparams.channels_last, device):
                for model in filter(None, (*unets, self.frozen.vae)):
                    to_channels_last(model)
            if resolve_auto(self.hparams.compile, device):
                for model in unets:
                    compile_in_place(model)
            self.speedups_applied = True

    def teardown(self, stage: str) -> None:
        for taps in (self.teacher_taps, self.student_taps):
            if taps is not None:
                taps.remove()
        self.teacher_taps = self.student_taps = None

    def _hook_taps(self) -> tuple[FeatureTaps, FeatureTaps]:
        if self.teacher_taps is None:
            self.teacher_taps = FeatureTaps(self.frozen.unet, [p.teacher for p in self.tap_pairs], "teacher")
            self.student_taps = FeatureTaps(self.student, [p.student for p in self.tap_pairs], "student")
        return self.teacher_taps, self.student_taps

    # -- one step ---------------------------------------------------------------------------------------
    def encode_batch(
        self, batch: Mapping[str, Any], randomness: SampleRandomness | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, 4, h, w) scaled by the VAE's factor and text context (B, 77, D), each encoded once
        per batch with the frozen parts (or taken pre-encoded from the batch: ``latent_mean`` and
        ``latent_std``, ``text_embeds``), returned as ordinary fp32 tensors usable by autograd."""
        frozen = self._frozen_on_device()
        randomness = randomness or SampleRandomness(None, self.device)
        captions = list(batch["caption"])
        if self.caption_dropout > 0:
            drop = randomness.rand(len(captions)) < self.caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        if "latent_mean" in batch:  # pre-encoded: sample the stored distribution, as the VAE path does
            mean = batch["latent_mean"].to(self.device, torch.float32)
            latents = (
                mean + batch["latent_std"].to(self.device, torch.float32) * randomness.randn(mean.shape)
            ) * self.latent_scale
        else:
            with self._frozen_compute():
                pixels = batch["pixel_values"].to(self.device, self.frozen_dtype)
                posterior = frozen.vae.encode(pixels).latent_dist  # sampled as DiagonalGaussian.sample does
                noise = randomness.randn(posterior.mean.shape, posterior.mean.dtype)
                latents = (posterior.mean + posterior.std * noise) * self.latent_scale
            # an ordinary copy (inference tensors cannot be saved for backward), in the standard layout
            latents = latents.float().clone(memory_format=torch.contiguous_format)
        if "text_embeds" in batch:
            return latents, batch["text_embeds"].to(self.device, torch.float32)
        ids = frozen.tokenizer(
            captions,
            padding="max_length",
            max_length=frozen.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        with self._frozen_compute():
            context = frozen.text_encoder(ids)[0]
        return latents, context.float().clone()

    def noisy_inputs(
        self, latents: torch.Tensor, randomness: SampleRandomness | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noisy latents, uniform timesteps in [0, T) and the task target (noise, or velocity for
        v-prediction teachers), from the teacher's own DDPM schedule."""
        scheduler = self.noise_scheduler
        randomness = randomness or SampleRandomness(None, latents.device)
        # randn of a shape, not randn_like: the noise must not depend on the latents' memory layout
        noise = randomness.randn(latents.shape, latents.dtype)
        timesteps = randomness.randint(scheduler.config.num_train_timesteps, latents.shape[0])
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "epsilon":
            target = noise
        elif scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"teacher prediction_type {scheduler.config.prediction_type!r} is not supported")
        return noisy, timesteps, target

    def teacher_forward(self, noisy, timesteps, context) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The teacher's prediction and tapped features, computed without autograd in its low precision."""
        unet = self._frozen_on_device().unet
        teacher_taps, _ = self._hook_taps()
        with self._frozen_compute(), teacher_taps.recording() as features:
            prediction = unet(noisy.to(self.frozen_dtype), timesteps, context.to(self.frozen_dtype)).sample
        # inference tensors cannot be saved for backward: hand out ordinary copies
        return prediction.clone(), {path: feature.clone() for path, feature in features.items()}

    # -- bad samples: counted from the collated batches, logged, reported at the end -------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "skipped" in batch:  # popped on the host: no device sync
            self.skips.add(batch.pop("skipped"), good=len(batch.get("caption", ())))
        if isinstance(batch, dict) and "draw" in batch:  # the per-sample seeds stay on the host too
            batch["draw"] = batch["draw"].tolist()
        return batch

    def on_train_epoch_end(self) -> None:
        self.skips.end_epoch()  # a whole epoch without one usable sample is a failure
        if not ranks_agree(self.skips.failure is None):
            self.skips.raise_failure("the data source of another rank gave no usable sample this epoch")

    def on_train_end(self) -> None:
        self.nonfinite.check(self.global_step)
        counts = self.trainer.strategy.reduce(self.skips.counts.to(self.device), reduce_op="sum")
        rank_zero_info(f"data: {describe_skips(counts.tolist())}")

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.log("data/skipped", float(self.skips.counts.sum()), reduce_fx="max")
        # skipping and giving up are decided on every rank together: one rank alone would desynchronise DDP
        has_samples, source_alive = ranks_agree_each([bool(batch.get("caption")), self.skips.failure is None])
        if not source_alive:
            self.skips.raise_failure("the data source of another rank gave only unusable samples")
        if not has_samples:
            return None  # every sample of a batch was bad: nothing to learn from
        loss, terms = self.distill_loss(batch)
        # a non-finite loss is not looked at here (that would sync the host every step): it makes the
        # gradients non-finite, and on_before_optimizer_step skips the step
        self.step_terms = {name: value.detach() for name, value in terms.items()}
        batch_size = len(batch["caption"])
        # the loss is averaged over ranks (one scalar all-reduce); the terms are rank 0's
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size, sync_dist=True)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skips a step whose gradients are not finite (a NaN/inf loss on any rank or micro-batch makes
        them so: DDP averages gradients, so every rank decides alike without a collective). Fused
        optimizers skip on the device (``found_inf``, as under AMP's GradScaler); for the others the
        gradients are dropped, which costs a host sync."""
        grads = [p.grad for p in self.student.parameters() if p.grad is not None]
        self.grad_norm = None
        if not grads:  # nothing to step (an all-bad batch): step_applied stays None, the EMA stays
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if self.grad_shard_group is not None:  # each rank holds a shard: the norm of the whole
            squared = norm.square()
            torch.distributed.all_reduce(squared, group=self.grad_shard_group)
            norm = squared.sqrt()
        self.log("train/grad_norm", norm)  # before clipping
        self.grad_norm = norm
        finite = torch.isfinite(norm)
        self.step_applied = finite
        skips_on_device = getattr(optimizer, "_step_supports_amp_scaling", False)
        if skips_on_device:
            optimizer.found_inf = (~finite).float()
        elif not bool(finite):
            for p in self.student.parameters():
                p.grad = None
        self.nonfinite.record(finite, self.global_step, self.step_terms)
        self.log("train/nonfinite_skipped", self.nonfinite.skipped.float(), reduce_fx="max")
        if not skips_on_device or self.global_step % self.trainer.log_every_n_steps == 0:
            self.nonfinite.check(self.global_step)

    def distill_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's objective: encode, noise, teacher and student forward, loss and its (detached) terms."""
        randomness = SampleRandomness(batch.get("draw"), self.device)
        latents, context = self.encode_batch(batch, randomness)
        noisy, timesteps, target = self.noisy_inputs(latents, randomness)
        teacher_pred, teacher_features = None, {}
        if self.loss.needs_teacher:
            teacher_pred, teacher_features = self.teacher_forward(noisy, timesteps, context)
        _, student_taps = self._hook_taps()
        with student_taps.recording() as student_features:
            student_pred = self.student(noisy, timesteps, context).sample
        pairs = [(p.name, student_features[p.student], teacher_features[p.teacher]) for p in self.tap_pairs]
        loss, terms = self.loss(student_pred, target, teacher_pred, pairs)
        with torch.no_grad():  # switched-off terms are still worth watching where their inputs exist
            if "loss_task" not in terms:
                terms["loss_task"] = F.mse_loss(student_pred.float(), target.float())
            if "loss_kd_out" not in terms and teacher_pred is not None:
                terms["loss_kd_out"] = F.mse_loss(student_pred.float(), teacher_pred.float())
        return loss, terms

    # -- checkpoints: what Lightning does not keep itself ----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()  # the next step's noise and timesteps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])

    # -- optimisation ---------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.student.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Norm clipping by the norm already computed for the non-finite check (over all shards under
        FSDP, where Lightning's own clipping refuses). With a fused optimizer it is folded into the step:
        its ``grad_scale`` divides the gradients inside the kernel, so clipping reads and writes no
        gradient. Equal to ``clip_grad_norm_`` up to rounding. Value clipping is Lightning's."""
        if gradient_clip_algorithm not in (None, "norm"):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif not gradient_clip_val or self.grad_norm is None:  # no clipping, or no gradients to clip
            return
        elif getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.grad_scale = torch.clamp((self.grad_norm + 1e-6) / gradient_clip_val, min=1.0)
        else:
            torch.nn.utils.clip_grads_with_norm_(self.student.parameters(), gradient_clip_val, self.grad_norm)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        self.step_applied = None
        # runs training_step and backward (the closure), on_before_optimizer_step, then the update
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper keeps its own __dict__
        for name in ("found_inf", "grad_scale"):  # set for this step only (as AMP's GradScaler does)
            if hasattr(optimizer, name):
                delattr(optimizer, name)
        if self.ema is not None and self.step_applied is not None:
            self.ema.update(self.student, applied=self.step_applied)

    def exported_student(self) -> UNet2DConditionModel:
        """The weights to export: the EMA student when EMA is on, else the student itself."""
        return self.ema.module if self.ema is not None else self.student
