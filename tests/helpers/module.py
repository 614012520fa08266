"""A DistillModule on the toy teacher (the paper's taps for the variant) and a short CPU fit of it."""

import functools

import lightning as L
import torch

from bksdm.data.datamodule import SyntheticDataModule
from bksdm.distill.losses import DistillLoss
from bksdm.distill.module import DistillModule
from bksdm.distill.taps import paper_tap_pairs
from bksdm.teachers.builtin import TOY_UNET_CONFIG
from helpers.trainer import cpu_trainer


def make_module(variant="small", loss=None, **kwargs) -> DistillModule:
    torch.manual_seed(0)
    return DistillModule(
        teacher_source="builtin:toy",
        removal=variant,
        taps=paper_tap_pairs(TOY_UNET_CONFIG, variant),
        loss=loss or DistillLoss(),
        **{"optimizer": functools.partial(torch.optim.AdamW, lr=1e-3), **kwargs},
    )


def fit(module, steps, tmp_path, batch_size=2, **trainer_kwargs) -> L.Trainer:
    trainer = cpu_trainer(tmp_path, max_steps=steps, **trainer_kwargs)
    trainer.fit(module, datamodule=SyntheticDataModule(num_samples=64, resolution=128, batch_size=batch_size))
    return trainer
