"""hydra/launcher=slurm against a real one-node SLURM cluster started for the session (skipped, saying
why, where SLURM is not installed or we are not root)."""

import subprocess
import sys

import pytest
from slurm_cluster import OneNodeCluster, unavailable

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed"
)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = OneNodeCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


def submit(cluster, sweep_dir, *overrides, timeout=600):
    command = [
        sys.executable, "-m", "bksdm.train", "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=11", f"hydra.sweep.dir={sweep_dir}", *overrides,
    ]  # fmt: skip
    env = {**cluster.env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, env=env, cwd=sweep_dir.parent, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_a_two_task_cpu_job_through_the_slurm_launcher_trains_and_exports(slurm, tmp_path):
    done = submit(
        slurm, tmp_path / "sweep", "hydra.launcher.tasks_per_node=2", "experiment=demo", "trainer=ddp",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32", "trainer.max_steps=3",
        "data.batch_size=2", "callbacks.sample_grid=null",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    job = tmp_path / "sweep" / "0"
    assert (job / "student" / "model_index.json").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.err"))
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs  # SLURM's ranks
