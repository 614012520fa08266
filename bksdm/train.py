"""python -m bksdm.train [experiment=demo] [arch=small] [loss=kd_full] ...: BK-SDM distillation."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from bksdm.components import teacher_unet_config
from bksdm.module import DistillModule
from bksdm.summary import startup_summary
from bksdm.taps import paper_tap_pairs

DATA_LOCATIONS = {
    "root": "an image folder with metadata.csv (file_name,text) or .txt captions: data.root=/path/to/folder",
    "urls": "webdataset shards: data.urls='/path/to/{00000..00099}.tar' (or pipe: / http URLs)",
}


def check_config(cfg: DictConfig) -> None:
    """Config errors that must stop the run before anything heavy is loaded."""
    for key, what in DATA_LOCATIONS.items():
        # `in` on a DictConfig is False for a ??? value, so look at the keys
        if key in cfg.data.keys() and OmegaConf.is_missing(cfg.data, key):  # noqa: SIM118
            raise ValueError(
                f"data.{key} is not set: this data source reads {what}. Run `python -m bksdm.train "
                f"data.{key}=...`, or pick another source, e.g. `experiment=demo` or `data=synthetic`."
            )


def tap_pairs(cfg: DictConfig) -> list:
    """The arch config's tap pairs; ``auto`` applies the paper's rule to the removal spec."""
    if cfg.arch.taps == "auto":
        embedded = cfg.teacher.unet_config
        teacher = teacher_unet_config(
            cfg.teacher.source,
            OmegaConf.to_container(embedded) if embedded is not None else None,
            cfg.teacher.revision,
        )
        pairs = paper_tap_pairs(teacher, OmegaConf.to_container(cfg.arch.removal))
        return [[p.teacher, p.student] for p in pairs]  # plain lists: they are saved as hyperparameters
    return OmegaConf.to_container(cfg.arch.taps)


def train(cfg: DictConfig) -> DistillModule:
    """Build everything from the composed config and fit; returns the trained module."""
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = instantiate(cfg.data)
    module = DistillModule(
        teacher_source=cfg.teacher.source,
        revision=cfg.teacher.revision,
        removal=OmegaConf.to_container(cfg.arch.removal),
        taps=tap_pairs(cfg),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optim.optimizer),
        lr_scheduler=instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None,
        **OmegaConf.to_container(cfg.distill),
        # pre-encoded data: the VAE (and the text encoder) stay out of memory
        load_vae="latents" not in getattr(datamodule, "provides", ()),
        load_text_encoder="text_embeds" not in getattr(datamodule, "provides", ()),
    )
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    rank_zero_info(
        startup_summary(
            module,
            cfg.teacher.name,
            datamodule.batch_size,
            trainer.accumulate_grad_batches,
            trainer.world_size,
        )
        + f"\noutput   {output_dir}"
    )
    for logger in trainer.loggers:
        logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True)})
    trainer.fit(module, datamodule=datamodule)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):  # one W&B run per job: the next job of a multirun starts its own
            logger.experiment.finish()
    return module


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
