"""python -m bksdm.miniworld [out=<folder>] [seed=0]: train the mini-world VAE, teacher U-Net and classifier."""

from __future__ import annotations

from omegaconf import DictConfig

from bksdm.cli import app
from bksdm.cli.help import EntryHelp

HELP = EntryHelp(
    command="python -m bksdm.miniworld",
    summary="Train the mini world's VAE, teacher U-Net and attribute classifier from a seed (about 35 minutes\n"
    "on 2 CPU cores); the shipped builtin:miniworld teacher was made this way.",
    settings=("seed", "out", "accelerator", "save_dtype"),
    examples=("python -m bksdm.miniworld out=outputs/miniworld", "python -m bksdm.miniworld seed=1"),
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
