"""DistillModule: the Lightning glue around one BK-SDM step (``bksdm.distill.step``): a frozen SD teacher,
a trainable block-removed student, the step guard, EMA, and what a checkpoint must keep."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from bksdm.arch import PAPER_REMOVALS, build_student, removal_name, resolve_removal
from bksdm.arch.depth import build_depth_student, is_transformer
from bksdm.data.skips import SkipTally, describe_skips
from bksdm.distill.ema import StudentEMA
from bksdm.distill.gemm_conv import use_gemm_convolutions
from bksdm.distill.guard import StepGuard, skips_on_device
from bksdm.distill.losses import DistillLoss
from bksdm.distill.speed import SpeedSettings, compile_in_place, resolve_auto, set_attention, to_channels_last
from bksdm.distill.step import DistillStep
from bksdm.distill.taps import check_tap_pairs, resolve_tap_pairs
from bksdm.teachers.conditioning import takes_added_conditioning, text_towers
from bksdm.teachers.frozen import DTYPES, FrozenTeacher, resolve_frozen_dtype, resolve_storage_dtype
from bksdm.teachers.loading import load_components, pipeline_family, resolve_source, teacher_denoiser_config
from bksdm.training.fsdp import gradient_shard_group
from bksdm.training.host_sync import ranks_agree, ranks_agree_each
from bksdm.training.rng import restore_rng_states, rng_states


class DistillModule(L.LightningModule):
    """BK-SDM knowledge distillation of a block-removed student from a frozen SD-v1/v2 or SDXL teacher, or of
    a depth-pruned transformer from a FLUX, SD3 or PixArt teacher (``conf/distill/default.yaml``).

    Args:
        teacher_source: hub id, diffusers folder or ``builtin:*``.
        removal: the student's removal spec (``base``/``small``/``tiny`` or a mapping); for a transformer
            teacher the blocks each stack keeps (``bksdm.arch.depth``).
        taps: (teacher path, student path) pairs for feature KD, or a rule applied to the removal spec:
            ``auto`` (the paper's block outputs) or ``koala`` (self-attention features, ``koala_tap_pairs``).
        loss: the weighted objective.
        optimizer: ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.AdamW, lr=5e-5)``).
        lr_scheduler: ``optimizer -> LRScheduler`` or None for a constant learning rate.
        revision: hub revision of the teacher.
        speed: how the step's models run (attention kernel, memory format, compilation, ...).
        frozen_dtype: ``float32``, ``float16``, ``bfloat16`` or ``auto`` (float16 when CUDA is available,
            else bfloat16): the precision the teacher U-Net, VAE and text encoder are stored and compute
            in, also inside a mixed-precision (autocast) region.
        frozen_storage_dtype: None, or ``float8_e4m3fn`` / ``float8_e5m2``: the teacher's denoiser is stored
            in FP8 and computes in ``frozen_dtype`` layer by layer (``FrozenTeacher.freeze``).
        ema_decay: EMA decay of the student's weights, None for no EMA.
        ema_every: average the EMA every this many optimizer steps, by the decays of all of them
            (``StudentEMA``); the exported average is brought up to date first.
        gradient_checkpointing: recompute the student's activations in backward (memory for time).
        caption_dropout: probability of replacing a caption by the empty prompt (classifier-free guidance);
            0 as in the paper.
        load_vae: False when the data brings pre-encoded latents (``data=latents``): no VAE in memory.
        load_text_encoder: False when the data brings text embeddings: no text encoder (SDXL: neither
            tower) in memory.
        nonfinite_patience: a step whose loss or gradients are NaN or infinite is skipped and counted;
            this many in a row stop the run, naming the step and the last finite loss terms. With an
            optimizer that can skip a step on the device (fused AdamW) the check costs no host sync and
            the stop comes at the next logging step; with others it is made on the host every step.
        student_name: what summaries and sample grids call a student that is not one of the paper's (the
            arch config's name, e.g. ``koala_700m``); the paper's are named by their spec, and a changed
            paper spec is ``custom(...)``.
        vae_source: the VAE from elsewhere (``teacher.vae_source``: e.g. an fp16-fixed SDXL VAE, which then
            stays in fp16 with fp16 frozen parts); None: the teacher's.
        flux_guidance: the guidance scale a FLUX teacher's guidance embedding and its student's are given.
    """

    def __init__(
        self,
        teacher_source: str,
        removal: str | Mapping,
        taps: Sequence | str,
        loss: DistillLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        revision: str | None = None,
        speed: SpeedSettings | None = None,
        frozen_dtype: str = "float32",
        frozen_storage_dtype: str | None = None,
        ema_decay: float | None = None,
        ema_every: int = 1,
        gradient_checkpointing: bool = False,
        caption_dropout: float = 0.0,
        load_vae: bool = True,
        load_text_encoder: bool = True,
        nonfinite_patience: int = 5,
        student_name: str | None = None,
        vae_source: str | None = None,
        flux_guidance: float = 3.5,
    ):
        super().__init__()
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout={caption_dropout!r} must be a probability in [0, 1]")
        if ema_decay is not None:
            StudentEMA.check_settings(ema_decay, ema_every)
        if caption_dropout > 0 and not load_text_encoder:
            raise ValueError(
                "caption_dropout > 0 needs the text encoder: pre-encoded text embeddings cannot drop captions"
            )
        # kept in checkpoints; not sent to the loggers, which get the whole resolved config once instead
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler", "speed"], logger=False)
        self.speed = speed or SpeedSettings()
        self.guard = StepGuard(nonfinite_patience)
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler

        denoiser_config = teacher_denoiser_config(teacher_source, revision=revision)
        self.is_transformer = is_transformer(denoiser_config)
        frozen_dtype = resolve_frozen_dtype(
            frozen_dtype, "cuda" if torch.cuda.is_available() else "cpu", self.is_transformer
        )
        storage_dtype = resolve_storage_dtype(frozen_storage_dtype)
        parts = load_components(
            teacher_source, self._wanted_parts(teacher_source, revision, denoiser_config, load_vae, load_text_encoder),
            revision=revision, vae_source=vae_source,
        )  # fmt: skip
        if self.is_transformer:  # a depth-pruned transformer: ``removal`` lists the blocks each stack keeps
            self.removal_spec = dict(removal)
            self.student_name = student_name or "depth-pruned"
            self.student = build_depth_student(parts.transformer, self.removal_spec).float()
        else:
            self.removal_spec = resolve_removal(removal)
            # a paper name only where the spec is the paper's
            self.student_name = removal_name(self.removal_spec)
            if (
                student_name
                and student_name not in PAPER_REMOVALS
                and self.student_name.startswith("custom(")
            ):
                self.student_name = student_name
            # the student is copied from the fp32 teacher before the teacher drops to its low precision
            self.student = build_student(parts.unet, removal, dtype=torch.float32)
        if gradient_checkpointing:
            self.student.enable_gradient_checkpointing()
        self.frozen = FrozenTeacher.freeze(
            parts,
            DTYPES[frozen_dtype],
            teacher_source,
            revision,
            self.speed.frozen_inference_mode,
            vae_source,
            storage_dtype,
        )
        # a transformer keeps its own attention processors (FLUX's and SD3's take rotary or joint inputs)
        for model in (
            (self.frozen.vae,) if self.is_transformer else (self.student, self.frozen.unet, self.frozen.vae)
        ):
            if model is not None:
                set_attention(model, self.speed.attention)
        self.ema = (
            StudentEMA(self.student, ema_decay, self.speed.ema_foreach, ema_every)
            if ema_decay is not None
            else None
        )

        if not loss.needs_features:
            tap_pairs = []
        else:
            tap_pairs = resolve_tap_pairs(taps, self.frozen.denoiser.config, self.removal_spec)
        # the checkpoint records what was tapped, with a rule (``auto``, ``koala``) resolved
        self.hparams["taps"] = [[p.teacher, p.student] + [p.weight] * (p.weight != 1) for p in tap_pairs]
        # paths and shapes are checked now, before any data is touched
        teacher_config = self.frozen.denoiser.config
        self.tap_shapes = (
            check_tap_pairs(
                teacher_config, self.student.config, tap_pairs, teacher_config.get("sample_size", 128)
            )
            if tap_pairs
            else {}
        )
        self.step = DistillStep(self.frozen, self.student, loss, tap_pairs, caption_dropout, flux_guidance)
        self.loss = loss  # registered (a module without parameters) so that it moves with the module
        self.step_terms: dict[str, torch.Tensor] = {}  # the last micro-batch's loss terms (detached)
        self.speedups_applied = False
        self._fallback_skips = SkipTally()

    @property
    def tap_pairs(self):
        return self.step.tap_pairs

    @property
    def skips(self) -> SkipTally:
        """The bad-sample tally of the data module (one of its own when the data comes without one)."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        return getattr(datamodule, "skips", self._fallback_skips)

    # -- while a trainer uses the module: taps hooked, speed-ups applied, frozen parts on the device ----
    def setup(self, stage: str) -> None:
        self.step.hook_taps()
        if not self.speedups_applied:  # once, now that the device is known (the module is not on it yet)
            device = self.trainer.strategy.root_device
            frozen = [self.frozen.unet, self.frozen.vae]  # the convolutional ones
            nhwc = {"all": [self.student, *frozen], "frozen": frozen}
            for model in filter(None, nhwc.get(self.speed.channels_last_models(device), [])):
                to_channels_last(model)
            if self.speed.resolved(device)["gemm_convolutions"] and not self.is_transformer:
                use_gemm_convolutions(self.student)
            if resolve_auto(self.speed.compile, device):
                # an FP8-stored teacher casts its weights inside every layer's forward (diffusers' hooks),
                # which torch.compile has not been checked on: it runs eagerly
                frozen = [self.frozen.denoiser] if self.frozen.storage_dtype is None else []
                for model in (self.student, *frozen):
                    compile_in_place(model)
            self.speedups_applied = True

    def on_fit_start(self) -> None:
        self.step.student = self.student  # the strategy's wrapper by now (FSDP wraps the student itself)
        self.frozen.to(self.device)
        self.guard.shard_group = gradient_shard_group(self.trainer.strategy.model)  # wrapped by now

    def teardown(self, stage: str) -> None:
        self.step.remove_taps()

    # -- one optimizer step: training_step and backward, on_before_optimizer_step, clipping, the update -
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        skips = self.skips
        self.log("data/skipped", float(skips.counts.sum()), reduce_fx="max")
        # skipping and giving up are decided on every rank together: one rank alone would desynchronise DDP
        has_samples, source_alive = ranks_agree_each([bool(batch.get("caption")), skips.failure is None])
        if not source_alive:
            skips.raise_failure("the data source of another rank gave only unusable samples")
        if not has_samples:
            return None  # every sample of a batch was bad: nothing to learn from
        # metrics carry the number of the optimizer step they belong to, as grids, evaluations and
        # checkpoints do (trainer.global_step after it); Lightning's own step would be one less
        self.log("step", float(self.global_step + 1), reduce_fx="max")
        loss, terms = self.step(batch, self.device)
        # a non-finite loss is not looked at here (that would sync the host every step): it makes the
        # gradients non-finite, and the guard skips the step
        self.step_terms = {name: value.detach() for name, value in terms.items()}
        batch_size = len(batch["caption"])
        # the loss is averaged over ranks (one scalar all-reduce); the terms are rank 0's
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size, sync_dist=True)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norm = self.guard.inspect(optimizer, self.student.parameters(), self.global_step, self.step_terms)
        if norm is None:
            return
        self.log("train/grad_norm", norm)  # before clipping
        self.log("train/lr", float(optimizer.param_groups[0]["lr"]))  # in the step's row, not one of its own
        nonfinite = self.guard.nonfinite
        self.log("train/nonfinite_skipped", nonfinite.skipped.float(), reduce_fx="max")
        # with an on-device skip, the streak is read on logging steps only (no host sync per step)
        if not skips_on_device(optimizer) or self.global_step % self.trainer.log_every_n_steps == 0:
            nonfinite.check(self.global_step)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Norm clipping by the guard's norm (over all shards under FSDP, where Lightning's own clipping
        refuses); value clipping is Lightning's."""
        if gradient_clip_algorithm not in (None, "norm"):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif gradient_clip_val:
            self.guard.clip(optimizer, self.student.parameters(), gradient_clip_val)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        self.guard.applied = None
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.guard.end_step(
            getattr(optimizer, "optimizer", optimizer)
        )  # Lightning's wrapper has its own __dict__
        if self.ema is not None and self.guard.applied is not None:
            self.ema.update(self.student, applied=self.guard.applied, step=self.global_step + 1)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.student.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- run-level checks: the data source and non-finite steps ----------------------------------------
    def on_train_epoch_end(self) -> None:
        self.skips.end_epoch()  # a whole epoch without one usable sample is a failure
        if not ranks_agree(self.skips.failure is None):
            self.skips.raise_failure("the data source of another rank gave no usable sample this epoch")

    def on_train_end(self) -> None:
        self.guard.nonfinite.check(self.global_step)
        counts = self.trainer.strategy.reduce(self.skips.counts.to(self.device), reduce_op="sum")
        rank_zero_info(f"data: {describe_skips(counts.tolist())}")

    # -- checkpoints: what Lightning does not keep itself ----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()  # the next step's noise and timesteps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])

    @staticmethod
    def _wanted_parts(
        source: str, revision: str | None, denoiser_config: Mapping, load_vae: bool, load_text_encoder: bool
    ) -> list[str]:
        """The teacher parts training needs: the denoiser, the tokenizers, the training noise schedule, and
        the VAE and text encoders unless the data brings them pre-encoded."""
        family = pipeline_family(resolve_source(source), revision)
        towers = text_towers(family, takes_added_conditioning(denoiser_config))
        tokenizers, encoders = [tokenizer for tokenizer, _ in towers], [encoder for _, encoder in towers]
        denoiser = "transformer" if is_transformer(denoiser_config) else "unet"
        return [denoiser, "noise_scheduler", *tokenizers] + encoders * load_text_encoder + ["vae"] * load_vae

    def exported_student(self) -> torch.nn.Module:
        """The weights to export: the EMA student (averaged up to this step) when EMA is on, else the
        student itself."""
        if self.ema is None:
            return self.student
        self.ema.catch_up(self.student)
        return self.ema.module
