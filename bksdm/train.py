"""python -m bksdm.train [experiment=demo] [arch=small] [loss=kd_full] ...: BK-SDM distillation."""

from __future__ import annotations

import warnings
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bksdm.cli import app, config_checks
from bksdm.cli.help import EntryHelp

HELP = EntryHelp(
    command="python -m bksdm.train",
    summary="Distil a block-removed BK-SDM student from a frozen Stable Diffusion teacher with output- and\n"
    "feature-level knowledge distillation. The defaults are the paper's run (SD-v1.4 -> BK-SDM-Small, LAION).",
    settings=("data.root", "data.batch_size", "global_batch_size", "trainer.max_steps", "optim.optimizer.lr",
              "distill.ema_decay", "distill.frozen_dtype", "seed", "resume"),
    examples=("python -m bksdm.train experiment=demo   # offline, CPU, minutes",
              "python -m bksdm.train arch=tiny data.root=/data/laion_212k",
              "python -m bksdm.train experiment=paper_small debug=step   # does the recipe take a step?"),
    more="Manual: docs/training.md (several GPUs, SLURM: docs/distributed.md)",
)  # fmt: skip


def train(cfg: DictConfig):
    """Build everything from the composed config and fit; returns the trained ``DistillModule``.

    Everything up to the teacher's loading is a config check: a mistake there raises ``ConfigError``,
    which the command line prints as one message.
    """
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

    from bksdm.cli.logs import route_lightning_logs
    from bksdm.cli.train_setup import build_module, check_config, make_logger, per_device_batch
    from bksdm.distill.summary import startup_summary
    from bksdm.teachers.loading import check_available_offline
    from bksdm.training.resume import checkpoint_to_resume, report_offline_parts

    route_lightning_logs()
    output_dir = Path(cfg.paths.output_dir)
    with config_checks():
        check_config(cfg)
        datamodule = instantiate(cfg.data)  # opens the data source: a wrong path stops here
        check_available_offline(cfg.teacher.source, cfg.teacher.revision)
        callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=make_logger(cfg, output_dir)
        )
        datamodule.batch_size = per_device_batch(
            cfg.get("global_batch_size"),
            datamodule.batch_size,
            trainer.world_size,
            trainer.accumulate_grad_batches,
        )
        resume_from = checkpoint_to_resume(cfg, output_dir)  # last: it says what it found
    L.seed_everything(cfg.seed, workers=True)
    instantiate(cfg.speed).apply_to_process(trainer.strategy.root_device)
    output_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # every rank runs this function; one writes
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    module = build_module(cfg, getattr(datamodule, "pre_encoded", ()), trainer.strategy.root_device)
    summary = startup_summary(
        module, cfg.teacher.name, datamodule.batch_size, trainer.accumulate_grad_batches, trainer.world_size
    )
    rank_zero_info(f"{summary}\noutput   {output_dir}" + (f"\nresume   {resume_from}" if resume_from else ""))
    # once, at the top level: W&B's run table sorts by loss.w_feat, arch.name ...
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if resume_from is not None and resume_from.is_relative_to(output_dir):
        # continuing in its own folder (a periodic, last or preemption checkpoint): the earlier checkpoints
        # Lightning's warning is about are expected
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):  # one W&B run per job: the next job of a multirun starts its own
            logger.experiment.finish()
            report_offline_parts(logger.experiment)
    return module


@app("train", HELP)
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
