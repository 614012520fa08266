"""python -m bksdm.bench [teacher=sd14_random] [arch=small] [bench.mode=both] ...: KD step speed and memory."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bksdm.bench.run import benchmark


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    benchmark(cfg)


if __name__ == "__main__":
    main()
