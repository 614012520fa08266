"""The training app's config as `python -m bksdm.train` composes it (with FAST: one small CPU step), and a
run's CSV metrics, and the command line run in a subprocess."""

import csv
import os
import subprocess
import sys
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


def run_cli(*args, cwd, **env_vars):
    """``python -m bksdm.train *args`` in ``cwd``, its output captured."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "bksdm.train", *args], capture_output=True, text=True, cwd=cwd, env=env
    )
