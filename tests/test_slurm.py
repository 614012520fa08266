"""hydra/launcher=slurm against a real one-node SLURM cluster started for the session (skipped, saying
why, where SLURM is not installed or we are not root)."""

import subprocess
import sys

import pytest
from slurm_cluster import OneNodeCluster, unavailable

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed"
)

# one cluster per machine (it owns /etc/slurm/slurm.conf): every SLURM test runs on the same xdist worker
pytestmark = pytest.mark.xdist_group("slurm")


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
        slurm, tmp_path / "sweep", "hydra.launcher.tasks_per_node=2", "experiment=demo", "teacher=tiny",
        "data=synthetic", "trainer=ddp",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32", "trainer.max_steps=3",
        "data.batch_size=2", "callbacks.sample_grid=null",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    job = tmp_path / "sweep" / "0"
    assert (job / "student" / "model_index.json").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.err"))
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs  # SLURM's ranks


@pytest.mark.slow
def test_a_preempted_job_checkpoints_requeues_and_resumes_to_the_requested_step(slurm, tmp_path):
    import time

    import torch

    steps = 60
    command = [
        sys.executable, "-m", "bksdm.train", "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=2",
        "hydra.launcher.timeout_min=11", "hydra.launcher.partition=normal", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "experiment=demo", "teacher=tiny", "data=synthetic", f"trainer.max_steps={steps}",
        "callbacks.checkpoint.every_n_train_steps=10",
        "callbacks.sample_grid=null",
    ]  # fmt: skip
    env = {**slurm.env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    sweep = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    run = tmp_path / "sweep" / "0"
    deadline = time.monotonic() + 300
    while not list(run.glob("checkpoints/*.ckpt")) and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    # a job of the higher-priority partition that needs both CPUs: SLURM preempts (and requeues) ours
    urgent = subprocess.run(
        ["sbatch", "-p", "urgent", "-c", "2", "-o", "/dev/null", "--wrap", "sleep 2"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert urgent.returncode == 0, urgent.stderr
    _, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, stderr[-3000:]

    preempted = torch.load(run / "checkpoints" / "preempted.ckpt", weights_only=True)["global_step"]
    assert 10 <= preempted < steps
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == steps
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
    assert "this job is preempted" in logs and logs.count("Starting with JobEnvironment") == 2
    assert f"resume   {run / 'checkpoints' / 'preempted.ckpt'}" in logs
