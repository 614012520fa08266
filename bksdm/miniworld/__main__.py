"""python -m bksdm.miniworld [world=single|scenes] [out=<folder>] [seed=0]: train a mini world's VAE, teacher U-Net
and classifier (rerun to resume a killed build)."""

from __future__ import annotations

from omegaconf import DictConfig

from bksdm.cli import app
from bksdm.cli.help import EntryHelp

HELP = EntryHelp(
    command="python -m bksdm.miniworld",
    summary="Train a mini world's VAE, teacher U-Net and attribute classifier from a seed: the 64 px world\n"
    "(about 35 minutes on 2 CPU cores; the shipped builtin:miniworld teacher) or world=scenes, the 128 px\n"
    "relational one (hours). Running the same command again resumes a killed build from work_dir.",
    settings=("seed", "out", "work_dir", "accelerator", "save_dtype"),
    examples=(
        "python -m bksdm.miniworld out=outputs/miniworld",
        "python -m bksdm.miniworld world=scenes",
        "python -m bksdm.miniworld world=scenes teacher.steps=60000   # train a finished teacher on",
    ),
    more="Manual: docs/miniworld.md",
)  # fmt: skip


@app("miniworld", HELP)
def main(cfg: DictConfig) -> None:
    from bksdm.cli.logs import route_lightning_logs
    from bksdm.miniworld.build import build  # here: composing alone (--cfg job) needs no torch

    route_lightning_logs()
    print(f"mini world of seed {cfg.seed} -> {build(cfg)}")


if __name__ == "__main__":
    main()
