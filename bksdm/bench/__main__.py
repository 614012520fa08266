"""python -m bksdm.bench [teacher=sd14_random] [arch=small] [bench.mode=both] ...: KD step speed and memory."""

from __future__ import annotations

from omegaconf import DictConfig

from bksdm.cli import app


@app("bench")
def main(cfg: DictConfig) -> None:
    from bksdm.bench.run import benchmark  # here: composing alone (--cfg job) needs no torch
    from bksdm.cli.logs import route_lightning_logs

    route_lightning_logs()
    benchmark(cfg)


if __name__ == "__main__":
    main()
