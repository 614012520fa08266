"""Resume: a run stopped by SIGTERM or killed with SIGKILL and resumed with resume=auto ends with the same
step count and the same student and EMA weights as a run that never stopped; a run whose data loader is stuck
still stops. The pieces resuming rests on are tested with their modules: atomic checkpoint writes in
tests/training/ (test_checkpoint_io.py, test_atomic.py), the resumable sampler in tests/data/test_sampler.py."""

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.paths import CONF
from helpers.train_config import FAST, config

from bksdm import train as train_app
from bksdm.cli.errors import ConfigError

# 10 samples in batches of 2: 5 batches an epoch, so 7 steps cross an epoch boundary
RUN = [
    *FAST,
    "experiment=demo",
    "data.num_samples=10",
    "distill.ema_decay=0.99",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "callbacks.checkpoint.every_n_train_steps=2",
    "callbacks.sample_grid=null",
    "callbacks.export_student=null",
]
STEPS = 7


def weights(module) -> dict[str, torch.Tensor]:
    return {**module.student.state_dict(), **{f"ema.{k}": v for k, v in module.ema.state_dict().items()}}


def assert_same_weights(a, b):
    for key, value in weights(a).items():
        assert torch.equal(value, weights(b)[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train_app.train(
        config(*RUN, f"trainer.max_steps={STEPS}", output_dir=tmp_path_factory.mktemp("whole"))
    )


class SigtermAt(L.Callback):
    """Sends this process SIGTERM during step ``step``, as a cluster does before preempting a job."""

    def __init__(self, step):
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_a_checkpoint_and_resume_auto_continues_exactly(uninterrupted, tmp_path, monkeypatch):
    original = train_app.instantiate

    def with_sigterm(cfg, *args, **kwargs):  # the trainer gets one more callback
        if "callbacks" in kwargs:
            kwargs["callbacks"] = [*kwargs["callbacks"], SigtermAt(step=2)]
        return original(cfg, *args, **kwargs)

    monkeypatch.setattr(train_app, "instantiate", with_sigterm)
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException: a clean exit
        train_app.train(config(*RUN, f"trainer.max_steps={STEPS}", output_dir=tmp_path))
    monkeypatch.undo()
    preempted = tmp_path / "checkpoints" / "preempted.ckpt"
    assert torch.load(preempted, weights_only=True)["global_step"] == 3  # saved after step 3's update

    resumed = train_app.train(config(*RUN, f"trainer.max_steps={STEPS}", "resume=auto", output_dir=tmp_path))
    assert resumed.trainer.global_step == STEPS
    assert_same_weights(resumed, uninterrupted)
    with (tmp_path / "csv" / "metrics.csv").open() as handle:  # the first run's metrics were kept
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]
    assert sorted(set(steps)) == list(range(1, STEPS + 1))  # optimizer steps 1..STEPS, none twice or lost


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(uninterrupted, tmp_path):
    overrides = [*RUN, f"trainer.max_steps={STEPS}", f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # one thread, as in-process
    process = subprocess.Popen([sys.executable, "-m", "bksdm.train", *overrides], env=env, cwd=CONF.parent,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300  # killed as soon as the first checkpoint (step 2 of 7) is there
    while (
        not list(tmp_path.glob("checkpoints/*.ckpt"))
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    process.kill()
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-3000:]

    resumed = train_app.train(config(*RUN, f"trainer.max_steps={STEPS}", "resume=auto", output_dir=tmp_path))
    assert resumed.trainer.global_step == STEPS
    assert_same_weights(resumed, uninterrupted)


def test_resume_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"^ckpt_path='.*nowhere\.ckpt' is neither a checkpoint file"):
        train_app.train(config(*FAST, f"ckpt_path={tmp_path / 'nowhere.ckpt'}", output_dir=tmp_path))


def children_running(pid: int, text: str) -> list[int]:
    """Processes whose parent is ``pid`` and whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and text in cmdline:
            found.append(int(entry.name))
    return found


def run_with_a_stuck_loader(tmp_path, *overrides, sigterm: bool) -> tuple[int, str]:
    """A CLI run whose first shard is a command that never writes: the loader blocks in a read of the
    main thread. Returns its exit status and stderr."""
    overrides = ["experiment=demo", "data=webdataset", 'data.urls="pipe:sleep 300"', "data.num_workers=0",
                 *overrides, f"hydra.run.dir={tmp_path}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "stderr.txt").open("w")  # not a pipe: the stuck command would hold it open
    process = subprocess.Popen([sys.executable, "-m", "bksdm.train", *overrides], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=log, text=True)  # fmt: skip
    stuck = []
    try:
        deadline = time.monotonic() + 120
        while not stuck and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            stuck = children_running(process.pid, "sleep 300")
        assert stuck, "the loader never started its shard command"
        stuck += [pid for shell in stuck for pid in children_running(shell, "sleep 300")]  # what sh started
        if sigterm:
            time.sleep(1)
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        time.sleep(0.5)
        left = [pid for pid in stuck if alive(pid)]
    finally:
        process.kill()
        log.close()
        for pid in stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not left, f"the stuck reader's processes outlived the run: {left}"
    return process.returncode, (tmp_path / "stderr.txt").read_text()


def alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie waits for an init that may not reap it here)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_ends_a_run_whose_data_loader_is_stuck(tmp_path):
    status, stderr = run_with_a_stuck_loader(
        tmp_path, "callbacks.data_watchdog.sigterm_grace_s=2", sigterm=True
    )
    assert status == 1, stderr[-3000:]
    assert "data     1 shard from data.urls: pipe:sleep 300 ... pipe:sleep 300" in stderr
    assert "stop signal received, but the data loader produced no batch for" in stderr
    assert "waiting for data.urls=pipe:sleep 300 (1 shard)" in stderr
    assert (
        "`weights_only` was not set" not in stderr
    )  # Lightning's notice when a save does not say what to save
    assert torch.load(tmp_path / "checkpoints" / "preempted.ckpt", weights_only=True)["global_step"] == 0


@pytest.mark.slow
def test_a_loader_without_a_batch_is_reported_then_stopped(tmp_path):
    status, stderr = run_with_a_stuck_loader(
        tmp_path,
        "callbacks.data_watchdog.warn_after_s=2",
        "callbacks.data_watchdog.stop_after_s=5",
        sigterm=False,
    )
    assert status == 1, stderr[-3000:]
    assert "still waiting for data.urls=pipe:sleep 300 (1 shard)" in stderr  # the warning, before the stop
    assert "the data loader produced no batch for 5 s" in stderr and "stop_after_s=5" in stderr
