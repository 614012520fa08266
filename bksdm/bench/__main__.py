"""python -m bksdm.bench [teacher=sd14_random] [arch=small] [bench.mode=both] ...: KD step speed and memory."""

from __future__ import annotations

from omegaconf import DictConfig

from bksdm.cli import app
from bksdm.cli.help import EntryHelp

HELP = EntryHelp(
    command="python -m bksdm.bench",
    summary="How fast one KD training step runs and how much memory it takes, on a fixed random batch;\n"
    "bench.mode=both times the reference implementation's way of running it too.",
    settings=("bench.mode", "bench.steps", "bench.batch_size", "bench.resolution", "bench.pre_encoded",
              "bench.count_only", "bench.out"),
    examples=("python -m bksdm.bench preset=cpu_full_width", "python -m bksdm.bench teacher=sd14_random bench.mode=both"),
    more="Manual: docs/benchmark.md",
)  # fmt: skip


@app("bench", HELP)
def main(cfg: DictConfig) -> None:
    from bksdm.bench.run import benchmark  # here: composing alone (--cfg job) needs no torch
    from bksdm.cli.logs import route_lightning_logs

    route_lightning_logs()
    benchmark(cfg)


if __name__ == "__main__":
    main()
