"""Test setup: offline, one thread, a private cache for the built toy teacher; the shared fixtures.

Code the tests share is in helpers/ (importable as ``helpers`` because pytest puts this file's folder on
sys.path); test files import from there, never from here or from each other."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
if "BKSDM_CACHE" not in os.environ:
    # the built toy teachers take about 2 GB: the process that made the cache removes it, or every run
    # leaves one behind in /tmp (xdist workers inherit the variable, so they share it and leave it alone)
    os.environ["BKSDM_CACHE"] = tempfile.mkdtemp(prefix="bksdm-test-cache-")
    atexit.register(shutil.rmtree, os.environ["BKSDM_CACHE"], ignore_errors=True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# subprocesses too (the CLI tests): two test workers share two cores, and two threads each would thrash
os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch
from helpers.paths import teacher_preset

from bksdm.cli.logs import quiet_third_party

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _third_party_noise_filtered():
    """The third-party noise the entry points filter, filtered in every test too (per test: pytest
    restores the warning filters after each)."""
    quiet_third_party()


@pytest.fixture(scope="session")
def sd14_config() -> dict:
    return teacher_preset("sd14")


@pytest.fixture(scope="session")
def sd21base_config() -> dict:
    return teacher_preset("sd21base")


@pytest.fixture(scope="session")
def toy_path() -> Path:
    from bksdm.teachers.builtin import random_pipeline_path

    return random_pipeline_path()


@pytest.fixture(scope="session")
def toy_teacher(toy_path):
    """The toy teacher's parts, loaded from its folder by the real from_pretrained path."""
    from bksdm.teachers.loading import load_components

    return load_components(str(toy_path))


def pytest_collection_modifyitems(items):
    """Slow tests first (order otherwise kept): with two xdist workers the long ones then run beside the
    short ones instead of ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
