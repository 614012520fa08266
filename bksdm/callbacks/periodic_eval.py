"""PeriodicEval: FID and CLIP score of the student on a fixed prompt subset every N optimizer steps.

The authors found that training loss stops tracking FID late in training, so generation metrics pick
checkpoints. Real statistics are computed (or read from the cache) once, on rank 0, at the start and
handed to the other ranks; each evaluation splits the prompts across DDP ranks (every image's latents
follow its prompt index, so the split changes no image), each rank scores its share into torchmetrics
states (``bksdm.eval.scoring.ImageScores``) that are summed over ranks, logs ``eval/fid`` and
``eval/clip``, and keeps ``best.ckpt`` by FID.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from bksdm.callbacks.schedule import EveryNSteps
from bksdm.eval.generation import generate_images, resolve_generator_device
from bksdm.eval.prompts import load_prompts
from bksdm.eval.scoring import ImageScores, load_scored, real_embeddings, real_statistics
from bksdm.teachers.pipeline import denoiser_part, frozen_pipeline
from bksdm.training.fsdp import whole_module


class PeriodicEval(EveryNSteps):
    """Args:
    prompts: COCO captions json or ``file_name,text`` csv; ``num_images`` of them by the prompt rule.
    real: folder of real images for the FID statistics.
    features, clip: the extractors (see ``bksdm.eval.extractors``).
    every_n_steps: evaluate when the global step is a multiple of it (and at the end of training).
    dirpath: where images (``step_<n>/``) and ``best.ckpt`` go.
    generator_device: where the seeded latents are drawn (``bksdm.eval.generation.resolve_generator_device``).
    cmmd: also log ``eval/cmmd`` (CMMD on the CLIP scorer's embeddings; the real ones computed once).
    fd_dinov2: a DINOv2 feature network (``bksdm.eval.dinov2.DINOv2Features``): also log ``eval/fd_dinov2``.
    table_prompts: with a W&B logger, a table ``eval/samples`` of this many fixed prompts (rank 0's first
        ones) at each evaluation: step, caption, the teacher's image, the student's, the student's CLIP
        score; the teacher's images are drawn once, with the same latents. 0: no table.
    """

    def __init__(
        self,
        prompts: str,
        real: str,
        features,
        clip,
        dirpath: str | Path,
        num_images: int = 1000,
        every_n_steps: int = 5000,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int = 1234,
        generator_device: str = "auto",
        batch_size: int = 8,
        score_size: int = 256,
        cache_dir: str | Path | None = None,
        table_prompts: int = 8,
        cmmd: bool = False,
        fd_dinov2=None,
    ):
        super().__init__(every_n_steps)
        self.prompt_source, self.real, self.num_images = prompts, real, num_images
        self.features, self.clip = features, clip
        self.dirpath = Path(dirpath)
        self.num_inference_steps, self.guidance_scale, self.seed = num_inference_steps, guidance_scale, seed
        self.generator_device, self.table_prompts, self.cmmd = generator_device, table_prompts, cmmd
        self.dinov2 = fd_dinov2
        self.batch_size, self.score_size, self.cache_dir = batch_size, score_size, cache_dir
        self.best_fid = float("inf")
        self.history: list[dict] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.draw_on = resolve_generator_device(self.generator_device, str(trainer.strategy.root_device))
        self.captions = [caption for _, caption in load_prompts(self.prompt_source, self.num_images)]
        if len(self.captions) % trainer.world_size:
            raise ValueError(
                f"PeriodicEval: {len(self.captions)} prompts do not split evenly over {trainer.world_size} ranks: "
                "choose num_images as a multiple of the world size"
            )
        # once, on rank 0 (which also writes the cache): the other ranks wait for its result
        real = None
        if trainer.is_global_zero:
            real = {"fid": real_statistics(self.real, self.features, self.score_size, self.cache_dir)}
            if self.cmmd:
                real["cmmd"] = real_embeddings(self.real, self.clip, self.score_size, self.cache_dir)
            if self.dinov2 is not None:
                real["fd_dinov2"] = real_statistics(self.real, self.dinov2, self.score_size, self.cache_dir)
        real = trainer.strategy.broadcast(real, src=0)
        self.real_stats = real["fid"]
        self.scores = ImageScores(
            self.features,
            self.clip,
            self.real_stats,
            None,
            real.get("cmmd"),
            self.dinov2,
            real.get("fd_dinov2"),
        )

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module) -> dict:
        self._last_step = step = trainer.global_step
        student = whole_module(pl_module.exported_student(), rank0_only=False)
        pipeline = frozen_pipeline(pl_module.frozen, student, pl_module.device)
        mine = list(range(trainer.global_rank, len(self.captions), trainer.world_size))
        with pl_module.frozen.sampling_precision(pl_module.device):  # a low-precision VAE and text tower
            paths = generate_images(
                pipeline, self.captions, self.dirpath / f"step_{step:07d}", seed=self.seed,
                generator_device=self.draw_on, num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale, batch_size=self.batch_size, progress=False, indices=mine,
            )  # fmt: skip
        self.scores.reset()
        clip_scores = []
        for start in range(0, len(mine), self.batch_size):
            indices = mine[start : start + self.batch_size]
            images = load_scored(paths[start : start + self.batch_size], self.score_size)
            clip_scores += self.scores.update(images, [self.captions[i] for i in indices], indices).tolist()
        scores = self.scores.compute()  # every rank's images
        result = {"step": step, **scores}
        if trainer.is_global_zero:  # written to the loggers directly: Lightning forbids self.log at train end
            for logger in trainer.loggers:
                logger.log_metrics({f"eval/{name}": value for name, value in scores.items()}, step=step)
                if isinstance(logger, WandbLogger) and self.table_prompts:
                    self.log_samples_table(logger, pipeline, pl_module, step, mine, paths, clip_scores)
        self.history.append(result)
        if result["fid"] < self.best_fid:
            self.best_fid = result["fid"]
            trainer.save_checkpoint(self.dirpath / "best.ckpt", weights_only=False)  # the whole state
        return result

    def log_samples_table(
        self, logger, pipeline, pl_module, step: int, mine: list[int], paths, clip_scores
    ) -> None:
        """W&B table ``eval/samples``: for rank 0's first ``table_prompts`` prompts, the step, caption,
        teacher and student images and the student image's CLIP score. ``pipeline``: this evaluation's,
        whose VAE and text encoder (loaded for it when training is pre-encoded) draw the teacher's too."""
        import wandb

        shown = mine[: self.table_prompts]
        # the student's images are drawn by now
        pipeline.register_modules(**{denoiser_part(pl_module.frozen): pl_module.frozen.denoiser})
        teacher_paths = generate_images(  # drawn once: the folder keeps them for later evaluations
            pipeline, self.captions, self.dirpath / "teacher", seed=self.seed, generator_device=self.draw_on,
            num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
            batch_size=self.batch_size, progress=False, indices=shown,
        )  # fmt: skip
        rows = [
            [step, self.captions[index], wandb.Image(str(teacher)), wandb.Image(str(student)), clip]
            for index, teacher, student, clip in zip(shown, teacher_paths, paths, clip_scores, strict=False)
        ]
        logger.log_table(
            key="eval/samples",
            columns=["step", "caption", "teacher", "student", "clip"],
            data=rows,
            step=step,
        )
