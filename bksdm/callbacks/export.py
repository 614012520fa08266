"""ExportStudent: write the student (EMA weights when EMA is on) as a diffusers pipeline folder."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from bksdm.eval.sampling import check_sampling
from bksdm.teachers.export import save_student_pipeline
from bksdm.training.fsdp import whole_module


class ExportStudent(L.Callback):
    """At the end of training, rank 0 saves ``dirpath`` as a StableDiffusionPipeline folder (under FSDP
    every rank first takes part in gathering the weights). ``sampling``: the guidance scale and step count
    the folder's ``sampling.json`` records (e.g. ``${teacher.sampling}``); None: the teacher folder's own
    ``sampling.json``, else Stable Diffusion's. ``single_file``: the U-Net also as one file in the
    original checkpoint layout (``bksdm.teachers.export.SINGLE_FILE``)."""

    def __init__(self, dirpath: str | Path, sampling: Mapping | None = None, single_file: bool = True):
        self.dirpath, self.single_file = Path(dirpath), single_file
        # checked now, not when training ends
        self.sampling = None if sampling is None else check_sampling(sampling, "export_student.sampling")

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        student = whole_module(pl_module.exported_student(), rank0_only=True)
        if not trainer.is_global_zero:
            return
        # nn.Module.to: diffusers' override warns about fp32-only modules that SD U-Nets do not have
        student = torch.nn.Module.to(copy.deepcopy(student), "cpu", torch.float32)
        if getattr(student, "is_gradient_checkpointing", False):
            student.disable_gradient_checkpointing()
        hparams = pl_module.hparams
        save_student_pipeline(
            student.eval(),
            hparams.teacher_source,
            self.dirpath,
            revision=hparams.revision,
            sampling=self.sampling,
            single_file=self.single_file,
            vae_source=hparams.vae_source,
        )
        rank_zero_info(f"student pipeline saved to {self.dirpath}")
