"""python -m bksdm.miniworld [out=<folder>] [seed=0]: train the mini-world VAE, teacher U-Net and classifier."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bksdm.miniworld.build import build


@hydra.main(version_base="1.3", config_path="../conf", config_name="miniworld")
def main(cfg: DictConfig) -> None:
    print(f"mini world of seed {cfg.seed} -> {build(cfg)}")


if __name__ == "__main__":
    main()
