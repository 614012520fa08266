"""python -m bksdm.miniworld [out=<folder>] [seed=0]: train the mini-world VAE, teacher U-Net and classifier."""

from __future__ import annotations

from omegaconf import DictConfig

from bksdm.cli import app


@app("miniworld")
def main(cfg: DictConfig) -> None:
    from bksdm.cli.logs import route_lightning_logs
    from bksdm.miniworld.build import build  # here: composing alone (--cfg job) needs no torch

    route_lightning_logs()
    print(f"mini world of seed {cfg.seed} -> {build(cfg)}")


if __name__ == "__main__":
    main()
