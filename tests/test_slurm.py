"""hydra/launcher=slurm against a real one-node SLURM cluster started for the session (skipped, saying
why, where SLURM is not installed, we are not root, or the machine runs SLURM daemons of its own), and
the fast checks that this cluster keeps off the machine's own SLURM and munge."""

import os
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
from helpers import slurm_cluster
from helpers.slurm_cluster import OneNodeCluster, unavailable

# one cluster per machine (it holds SLURM's ports): every SLURM test runs on the same xdist worker
pytestmark = pytest.mark.xdist_group("slurm")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed"
    )
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
        slurm, tmp_path / "sweep", "hydra.launcher.tasks_per_node=2", "experiment=demo", "teacher=toy",
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
        "experiment=demo", "teacher=toy", "data=synthetic", f"trainer.max_steps={steps}",
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


# --- the cluster keeps off the machine's own SLURM and munge (fast, no SLURM needed) ---------------------

SLURM_COMMANDS = {"slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun"}


class FakeDaemon:
    """A started daemon that never ends by itself: stop() has to end it."""

    def __init__(self, pid, machine):
        self.pid, self.machine, self.returncode = pid, machine, None

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            raise subprocess.TimeoutExpired("daemon", timeout)
        return self.returncode

    def terminate(self):
        self.machine.signals.append(("terminate", self.pid))
        self.returncode = -15

    def kill(self):
        self.machine.signals.append(("kill", self.pid))
        self.returncode = -9


def fake_proc(root, table):
    """A /proc of {pid: (parent pid, command name, environment)}."""
    for pid, (ppid, comm, environ) in table.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560\n")
        (root / str(pid) / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in environ.items()))


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Stand-ins for subprocess, os.kill, the clock, /proc and the ports, which record what the cluster
    runs and signals; any write outside tmp_path fails the test before it happens."""
    machine = types.SimpleNamespace(commands=[], signals=[], sockets=[], jobs=["7", "8"], now=0.0)
    machine.proc = tmp_path / "proc"
    machine.proc.mkdir()

    def run(command, *args, env=None, **kwargs):
        machine.commands.append((list(command), env))
        stdout = ""
        if command[0] == "slurmd" and "-C" in command:
            stdout = "NodeName=node CPUs=2 RealMemory=1000\n"
        elif command[0] == "sinfo":
            stdout = "idle\n"
        elif command[0] == "squeue":
            stdout = "\n".join(machine.jobs)
        elif command[0] == "scancel":
            machine.jobs = []
        return subprocess.CompletedProcess(command, 0, stdout, "")

    def popen(command, *args, env=None, **kwargs):
        machine.commands.append((list(command), env))
        for argument in command:
            if command[0] == "munged" and argument.startswith("--socket="):  # munged's socket appears
                listener = socket.socket(socket.AF_UNIX)
                listener.bind(argument.split("=", 1)[1])
                machine.sockets.append(listener)
        return FakeDaemon(1000 + len(machine.commands), machine)

    def tick(seconds):
        machine.now += 5

    def inside(original):
        def guarded(path, *args, **kwargs):
            assert Path(path).resolve().is_relative_to(tmp_path.resolve()), f"the test cluster writes {path}"
            return original(path, *args, **kwargs)

        return guarded

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(os, "kill", lambda pid, sig: machine.signals.append((sig, pid)))
    monkeypatch.setattr(
        slurm_cluster, "time", types.SimpleNamespace(monotonic=lambda: machine.now, sleep=tick)
    )
    monkeypatch.setattr(slurm_cluster, "PROC", machine.proc, raising=False)
    monkeypatch.setattr(slurm_cluster, "port_in_use", lambda port: False, raising=False)
    for name in ("write_text", "write_bytes", "mkdir", "touch", "chmod"):
        monkeypatch.setattr(Path, name, inside(getattr(Path, name)))
    monkeypatch.setattr(slurm_cluster.shutil, "chown", inside(slurm_cluster.shutil.chown))
    yield machine
    for listener in machine.sockets:
        listener.close()


def test_the_test_cluster_runs_on_its_own_config_and_munged_in_its_scratch_folder(machine, tmp_path):
    scratch = tmp_path / "slurm"
    scratch.mkdir()
    cluster = OneNodeCluster(scratch)
    cluster.start()
    conf = scratch / "slurm.conf"
    assert cluster.env["SLURM_CONF"] == str(conf)
    text = conf.read_text()
    assert "/etc/" not in text and "/run/" not in text and f"AuthInfo=cred_expire=5,socket={scratch}/" in text
    started = [command[0] for command, _ in machine.commands]
    assert {"munged", "slurmctld", "slurmd", "sinfo"} <= set(started)
    for command, env in machine.commands:
        assert not any("/etc/" in a or "/run/munge" in a for a in command), command
        if command[0] in SLURM_COMMANDS:  # every SLURM daemon and command reads our config, not the machine's
            assert env is not None and env["SLURM_CONF"] == str(conf), command
        if command[0] == "munged":  # our own munged: its socket, key, pid, seed and log in the scratch folder
            for option in ("--socket=", "--key-file=", "--pid-file=", "--seed-file=", "--log-file="):
                assert any(a.startswith(f"{option}{scratch}/") for a in command), (option, command)


def test_stopping_the_test_cluster_ends_only_its_own_jobs_and_processes(machine, tmp_path):
    cluster = OneNodeCluster(tmp_path / "slurm")
    conf = {"SLURM_CONF": str(tmp_path / "slurm" / "slurm.conf")}
    me = os.getpid()
    fake_proc(machine.proc, {
        1: (0, "init", {}),
        me: (1, "pytest", conf),  # even were it to carry our SLURM_CONF, never this process
        500: (me, "munged", conf), 501: (me, "slurmctld", conf), 502: (me, "slurmd", conf),
        503: (501, "slurmscriptd", {}),
        510: (1, "slurmstepd", conf), 511: (510, "slurm_script", {}), 512: (511, "python", {}),  # our job
        600: (1, "slurmctld", {}), 601: (1, "slurmd", {}), 603: (1, "munged", {}),  # the machine's own
        602: (1, "slurmstepd", {"SLURM_CONF": "/etc/slurm/slurm.conf"}), 604: (602, "python", {}),
    })  # fmt: skip
    cluster.started = {
        name: FakeDaemon(pid, machine) for name, pid in (("munged", 500), ("slurmctld", 501), ("slurmd", 502))
    }
    cluster.stop()
    for command, env in machine.commands:
        assert command[0] in SLURM_COMMANDS, command  # no pkill, killall, pgrep
        assert env is not None and env["SLURM_CONF"] == conf["SLURM_CONF"], command
    assert ["scancel", "--full", "7", "8"] in [command for command, _ in machine.commands]  # its jobs, by id
    assert ["scontrol", "shutdown"] in [command for command, _ in machine.commands]
    assert {pid for _, pid in machine.signals} <= {500, 501, 502, 503, 510, 511, 512}  # nothing else
    # its daemons (which here never end), their children and its job's step, detached from slurmd
    assert {pid for sig, pid in machine.signals if sig == signal.SIGKILL} == {501, 502, 503, 510, 511, 512}
    assert machine.signals[-1] == ("terminate", 500)  # its munged, last: the others need it until they end


def test_the_test_cluster_is_not_started_beside_the_machines_own_slurm(monkeypatch, tmp_path):
    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda binary: f"/usr/bin/{binary}")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_cluster, "PROC", tmp_path / "proc", raising=False)
    fake_proc(tmp_path / "proc", {1: (0, "init", {}), 40: (1, "munged", {})})  # a munged is no obstacle
    with socket.socket() as listener:
        listener.bind(("", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.setattr(slurm_cluster, "PORTS", {"SlurmctldPort": port}, raising=False)
        reason = unavailable()
        assert reason is not None and str(port) in reason  # a port that something listens on
    assert unavailable() is None
    fake_proc(tmp_path / "proc", {41: (1, "slurmd", {})})
    reason = unavailable()
    assert reason is not None and "slurmd (pid 41)" in reason


def test_the_slurm_tests_are_grouped_on_one_xdist_worker(request):
    """--dist loadgroup keeps this module's tests on one worker by a suffix of their node ids; a pytest
    that ignores it (9.2, pytest-dev/pytest-xdist#1386) would start a second cluster beside the first."""
    if not getattr(request.config.option, "loadgroup", False):  # what xdist sets on its workers
        pytest.skip("not run on an xdist worker with --dist loadgroup")
    assert request.node.nodeid.endswith("@slurm"), request.node.nodeid
