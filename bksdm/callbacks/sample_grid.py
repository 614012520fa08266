"""SampleGrid: teacher and student images for fixed prompts and seeds, side by side, as a PNG."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from bksdm.teachers.loading import load_components
from bksdm.training.fsdp import whole_module


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` optimizer steps (0: only at the end) and at the end of training, on rank 0,
    draw each prompt with the teacher (left) and the student (right) from the same seed and save the
    grid as ``<dirpath>/step_<global step>.png``; rows are prompts.
    """

    def __init__(
        self,
        dirpath: str | Path,
        prompts: Sequence[str],
        every_n_steps: int = 0,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int = 1234,
    ):
        if not prompts:
            raise ValueError("SampleGrid needs at least one prompt")
        self.dirpath, self.prompts = Path(dirpath), list(prompts)
        self.every_n_steps, self.num_inference_steps = every_n_steps, num_inference_steps
        self.guidance_scale, self.seed = guidance_scale, seed
        self._last_step = -1
        self.saved: list[Path] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self.draw(trainer, pl_module)

    @torch.no_grad()
    def draw(self, trainer: L.Trainer, pl_module) -> Path | None:
        self._last_step = trainer.global_step
        student = whole_module(pl_module.exported_student(), rank0_only=True)  # every rank, under FSDP
        if not trainer.is_global_zero:
            return None
        pipeline = frozen_pipeline(pl_module, pl_module.frozen.unet)  # built (and parts loaded) once
        columns = []
        for unet in (pl_module.frozen.unet, student):
            pipeline.register_modules(unet=unet)
            columns.append(self._images(pipeline, pl_module))
        rows = [np.concatenate([column[i] for column in columns], axis=1) for i in range(len(self.prompts))]
        grid = Image.fromarray((np.concatenate(rows, axis=0) * 255).round().astype(np.uint8))
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"step_{trainer.global_step:07d}.png"
        grid.save(path)
        self.saved.append(path)
        for logger in trainer.loggers:
            log_grid(logger, grid, trainer.global_step)
        return path

    def _images(self, pipeline, pl_module) -> np.ndarray:
        device = pl_module.device
        images = []
        for i, prompt in enumerate(self.prompts):
            generator = torch.Generator(device=device).manual_seed(self.seed + i)
            with frozen_precision(pl_module):
                out = pipeline(
                    prompt,
                    num_inference_steps=self.num_inference_steps,
                    guidance_scale=self.guidance_scale,
                    generator=generator,
                    output_type="np",
                )
            images.append(out.images[0])
        return np.stack(images)


def frozen_precision(pl_module):
    """Autocast to the frozen parts' precision (a float32 student between a low-precision VAE and text
    encoder), or nothing when they are float32."""
    if pl_module.frozen_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(pl_module.device.type, dtype=pl_module.frozen_dtype)


def frozen_pipeline(pl_module, unet):
    """A StableDiffusionPipeline around ``unet`` with the module's frozen VAE, text encoder and tokenizer
    (loaded from the teacher for the occasion when training keeps them out of memory) and a PNDM
    scheduler with the teacher's betas (the paper's sampler)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    frozen = pl_module._frozen_on_device()
    vae, text_encoder = frozen.vae, frozen.text_encoder
    missing = [name for name, part in (("vae", vae), ("text_encoder", text_encoder)) if part is None]
    if missing:
        hparams = pl_module.hparams
        loaded = load_components(hparams.teacher_source, missing, pl_module.frozen_dtype, hparams.revision)
        vae = vae or loaded.vae.to(pl_module.device)
        text_encoder = text_encoder or loaded.text_encoder.to(pl_module.device)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=frozen.tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(pl_module.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def log_grid(logger, grid: Image.Image, step: int) -> None:
    """Sends the grid to a logger with an image API (W&B's ``log_image``, TensorBoard's ``add_image``)."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    elif hasattr(logger, "log_image"):
        logger.log_image(key="samples", images=[grid], step=step, caption=["teacher | student"])
