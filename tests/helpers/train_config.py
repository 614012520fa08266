"""The training app's config as `python -m bksdm.train` composes it (with FAST: one small CPU step), and a
run's CSV metrics."""

import csv
from pathlib import Path

from hydra import compose, initialize_config_dir

from helpers.paths import CONF

# what makes any experiment small enough for one CPU step here: conf/debug/step.yaml
FAST = ["debug=step"]


def config(*overrides, output_dir):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def read_metrics(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))
