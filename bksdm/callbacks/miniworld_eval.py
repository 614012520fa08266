"""MiniWorldEval: the student's mini-world scores every N optimizer steps (``callbacks=with_miniworld_eval``).

Logs ``eval/accuracy/<slot>`` and ``eval/accuracy/all`` (``eval/accuracy_<split>_split/...`` for a held-out
split's captions in the relational world), ``eval/fid`` (classifier features) and
``eval/error_to_teacher`` (also ``/unconditional`` and ``/guided``) for the exported student (the EMA
weights when EMA is on), and keeps the history in ``<dirpath>/history.jsonl``. Rank 0 evaluates (under
FSDP every rank first helps gather the weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from bksdm.callbacks.schedule import EveryNSteps
from bksdm.teachers.pipeline import frozen_pipeline
from bksdm.training.fsdp import whole_module


class MiniWorldEval(EveryNSteps):
    """Args:
    dirpath: where ``history.jsonl`` goes.
    every_n_steps: evaluate when the global step is a multiple of it, at step 0 (the untrained student)
        when ``at_start``, and at the end of training.
    world: a built mini world's folder (teacher and classifier; its report says which world it is); None:
        the shipped one. It must be the world of the run's teacher (the config's default,
        ``teacher.world_dir``).
    num_images, num_real, num_latents, num_inference_steps, guidance_scale, batch_size: see
        ``bksdm.miniworld.evaluation``.
    """

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int = 100,
        at_start: bool = True,
        world: str | Path | None = None,
        num_images: int = 1080,
        num_real: int = 2000,
        num_latents: int = 256,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        batch_size: int = 90,
    ):
        super().__init__(every_n_steps)
        if world is not None:
            from bksdm.miniworld.assets import world_folder, world_of

            # a missing or unbuilt folder is named now, not after the first steps
            world_of(world_folder(world))
        self.dirpath, self.at_start, self.world = Path(dirpath), at_start, world
        self.num_images, self.num_real, self.num_latents = num_images, num_real, num_latents
        self.num_inference_steps, self.guidance_scale, self.batch_size = (
            num_inference_steps,
            guidance_scale,
            batch_size,
        )
        self.history: list[dict] = []
        self.reference = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.at_start and trainer.global_step == 0:
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module) -> dict | None:
        from bksdm.miniworld.assets import load_classifier, world_folder, world_of
        from bksdm.miniworld.evaluation import MiniWorldReference, evaluate_student

        self._last_step = step = trainer.global_step
        student = whole_module(pl_module.exported_student(), rank0_only=True)
        if not trainer.is_global_zero:
            return None
        with pl_module.frozen.sampling_precision(pl_module.device):
            if self.reference is None:  # the teacher's side, once (the classifier stays on the CPU)
                teacher = frozen_pipeline(pl_module.frozen, pl_module.frozen.unet, pl_module.device)
                world = world_folder(self.world)
                self.reference = MiniWorldReference.build(
                    teacher, load_classifier(world), self.num_real, self.num_latents, kind=world_of(world)
                )
            scores = evaluate_student(
                frozen_pipeline(pl_module.frozen, student, pl_module.device), self.reference, self.num_images,
                self.num_inference_steps,
                self.guidance_scale, self.batch_size,
            )  # fmt: skip
        result = {"step": step, **scores}
        self.history.append(result)
        for logger in trainer.loggers:  # to the loggers directly: Lightning forbids self.log at train end
            logger.log_metrics({f"eval/{k}": v for k, v in scores.items()}, step=step)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / "history.jsonl", "a") as handle:
            handle.write(json.dumps(result) + "\n")
        return result
