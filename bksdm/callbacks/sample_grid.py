"""SampleGrid: teacher and student images for fixed prompts and seeds, side by side, as a labelled PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from bksdm.eval.labelled_grid import labelled_grid
from bksdm.teachers.pipeline import call_settings, denoiser_part, frozen_pipeline
from bksdm.training.fsdp import whole_module


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` optimizer steps (0: only at the end) and at the end of training, on rank 0,
    draw each prompt with the teacher (left) and the student (right) from the same seed and save the
    grid as ``<dirpath>/step_<global step>.png``: the step in the title, "teacher" and "student" above
    the columns, each prompt above its row, images of less than ``min_cell`` pixels enlarged (nearest
    neighbour). The same image goes to the loggers. ``resolution``: the images' side in pixels (the
    training data's); None: the pipeline's default (FLUX's is 1024 px whatever the model).
    """

    def __init__(
        self,
        dirpath: str | Path,
        prompts: Sequence[str],
        every_n_steps: int = 0,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int = 1234,
        min_cell: int = 256,
        resolution: int | None = None,
    ):
        if not prompts:
            raise ValueError("SampleGrid needs at least one prompt")
        self.dirpath, self.prompts = Path(dirpath), list(prompts)
        self.every_n_steps, self.num_inference_steps = every_n_steps, num_inference_steps
        self.guidance_scale, self.seed, self.min_cell = guidance_scale, seed, min_cell
        self.resolution = resolution
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
        # built for each draw: parts that training keeps out of memory (a VAE, T5) are loaded for it
        pipeline = frozen_pipeline(pl_module.frozen, pl_module.frozen.denoiser, pl_module.device)
        columns = []
        for denoiser in (pl_module.frozen.denoiser, student):
            pipeline.register_modules(**{denoiser_part(pl_module.frozen): denoiser})
            columns.append(self._images(pipeline, pl_module))
        step = trainer.global_step
        title = f"step {step}: teacher {pl_module.frozen.source}, student {pl_module.student_name}"
        grid = labelled_grid(columns, ["teacher", "student"], self.prompts, title, self.min_cell)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"step_{step:07d}.png"
        grid.save(path)
        self.saved.append(path)
        for logger in trainer.loggers:
            log_grid(logger, grid, step)
        return path

    def _images(self, pipeline, pl_module) -> np.ndarray:
        device = pl_module.device
        images = []
        for i, prompt in enumerate(self.prompts):
            generator = torch.Generator(device=device).manual_seed(self.seed + i)
            with pl_module.frozen.sampling_precision(pl_module.device):
                out = pipeline(
                    prompt,
                    num_inference_steps=self.num_inference_steps,
                    guidance_scale=self.guidance_scale,
                    generator=generator,
                    output_type="np",
                    **({"height": self.resolution, "width": self.resolution} if self.resolution else {}),
                    **call_settings(pipeline),
                )
            images.append(out.images[0])
        return np.stack(images)


def log_grid(logger, grid: Image.Image, step: int) -> None:
    """Sends the grid to a logger with an image API (W&B's ``log_image``, TensorBoard's ``add_image``)."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    elif hasattr(logger, "log_image"):
        logger.log_image(key="samples", images=[grid], step=step, caption=[f"step {step}: teacher | student"])
