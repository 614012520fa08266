"""A real one-node SLURM cluster (Debian's slurmctld, slurmd and munge) for the launcher tests.

Started once per test session when the binaries are installed (``.ci/run`` installs them) and we are
root; ``unavailable()`` says why not otherwise. Settings follow ../shared/reference/slurm-one-node.md:
quick requeue (cred_expire, short scheduler intervals), two partitions for preemption, ports outside
Lightning's MASTER_PORT range, and an ``sacct`` stand-in (no accounting daemon) answering from squeue.

The cluster is private to the test session and leaves the machine's own SLURM and munge alone: its
``slurm.conf`` lives in the scratch folder and reaches every daemon and command through ``SLURM_CONF``
(``OneNodeCluster.env``), it runs its own munged on its own socket and key in the scratch folder, and it
refuses to start (``unavailable()``) while SLURM daemons it did not start are running or its ports are
taken. ``stop()`` cancels the jobs of this cluster only, shuts down its own controller and signals only
the processes it started (and their slurmstepd), by their ids.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
DAEMONS = ("slurmctld", "slurmd", "slurmstepd", "slurmdbd")  # a foreign one of these: we do not start
PORTS = {"SlurmctldPort": 6817, "SlurmdPort": 6818}  # SLURM's defaults, outside Lightning's 15000-24999
PROC = Path("/proc")

SACCT = """#!/bin/sh
# sacct stand-in for a cluster without accounting: JobID|State|NodeList of the asked jobs, from squeue
ids=$(echo "$@" | sed -n 's/.*-j *\\([0-9_,]*\\).*/\\1/p')
squeue -h -r --states=all -o '%i|%T|%N' ${ids:+-j $ids}
"""


def processes() -> dict[int, tuple[int, str]]:
    """Every process of the machine: pid -> (parent pid, command name), from ``/proc``."""
    found = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if state != "Z":  # a zombie has ended, only its parent has not read its exit status yet
            found[int(entry.name)] = (int(ppid), comm)
    return found


def environ_has(pid: int, entry: str) -> bool:
    try:
        return entry.encode() in (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left over is no owner
        try:
            probe.bind(("", port))
        except OSError:
            return True
    return False


def unavailable() -> str | None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing; .ci/run installs Debian's slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "the one-node SLURM cluster needs root to start munged and slurmd"
    foreign = sorted({f"{comm} (pid {pid})" for pid, (_, comm) in processes().items() if comm in DAEMONS})
    if foreign:
        return f"SLURM daemons not started by the tests are running ({', '.join(foreign)}): the test cluster would clash with them, so it is not started"
    taken = [f"{name} {port}" for name, port in PORTS.items() if port_in_use(port)]
    if taken:
        return f"the test cluster's ports are in use ({', '.join(taken)}): it is not started"
    return None


def slurm_conf(scratch: Path, munge_socket: Path) -> str:
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory = next(
        int(field.split("=")[1])
        for field in subprocess.run(
            ["slurmd", "-C"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "SLURM_CONF": str(scratch / "slurm.conf")},  # never the machine's own
        ).stdout.split()
        if field.startswith("RealMemory=")
    )
    return f"""ClusterName=bksdm-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={PORTS["SlurmctldPort"]}
SlurmdPort={PORTS["SlurmdPort"]}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5,socket={munge_socket}
StateSaveLocation={scratch}/state
SlurmdSpoolDir={scratch}/spool
SlurmctldPidFile={scratch}/slurmctld.pid
SlurmdPidFile={scratch}/slurmd.pid
SlurmctldLogFile={scratch}/slurmctld.log
SlurmdLogFile={scratch}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=2,bf_interval=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=normal Nodes={host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes={host} Default=NO MaxTime=INFINITE State=UP PriorityTier=10
"""


class OneNodeCluster:
    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.bin = scratch / "bin"
        self.conf = scratch / "slurm.conf"
        self.munge = scratch / "munge"
        self.munge_socket = self.munge / "munge.socket"
        self.started: dict[str, subprocess.Popen] = {}  # the daemons we started, by name

    def _daemon(self, name: str, *command: str) -> None:
        with open(self.scratch / f"{name}.out", "ab") as out:
            self.started[name] = subprocess.Popen(
                command, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def _logs(self) -> str:
        tails = []
        for log in sorted(self.scratch.glob("*.log")) + sorted(self.scratch.glob("*.out")):
            tails.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(tails)

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for folder in ("state", "spool", "bin"):
            (self.scratch / folder).mkdir(parents=True, exist_ok=True)
        (self.bin / "sacct").write_text(SACCT)
        (self.bin / "sacct").chmod(0o755)
        self.conf.write_text(slurm_conf(self.scratch, self.munge_socket))
        # our own munged (as root, like every client here), key, socket and seed in the scratch folder;
        # --force: it would otherwise refuse a socket that the scratch folder's 0700 parents hide from
        # other users, who do not use this cluster
        self.munge.mkdir(mode=0o700)
        key = self.munge / "munge.key"
        key.touch(mode=0o600)
        key.write_bytes(os.urandom(128))
        self._daemon(
            "munged", "munged", "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={key}", f"--pid-file={self.munge / 'munged.pid'}",
            f"--seed-file={self.munge / 'munged.seed'}", f"--log-file={self.munge / 'munged.log'}",
        )  # fmt: skip
        self._wait(lambda: self.munge_socket.is_socket(), "munged did not create its socket")
        taken = [f"{name} {port}" for name, port in PORTS.items() if port_in_use(port)]
        if taken:
            raise RuntimeError(f"the test cluster's ports were taken meanwhile: {', '.join(taken)}")
        self._daemon("slurmctld", "slurmctld", "-D", "-c")
        self._daemon("slurmd", "slurmd", "-D")
        state = ""

        def idle() -> bool:
            nonlocal state
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True
            ).stdout
            return "idle" in state

        self._wait(idle, lambda: f"the one-node SLURM cluster did not come up: sinfo says {state!r}")

    def _wait(self, ready, failure, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            ended = [
                f"{name} exited ({p.returncode})" for name, p in self.started.items() if p.poll() is not None
            ]
            if ended or time.monotonic() > deadline:
                message = failure() if callable(failure) else failure
                raise RuntimeError(f"{message}; {', '.join(ended) or 'timed out'}\n{self._logs()}")
            time.sleep(0.2)

    def ours(self) -> set[int]:
        """The live processes this cluster started: its daemons, their descendants, and whatever runs
        with its ``SLURM_CONF`` (slurmd detaches its slurmstepd, which keep slurmd's environment)."""
        table = processes()
        roots = {p.pid for p in self.started.values() if p.poll() is None}
        found = roots & table.keys()
        found |= {pid for pid in table if environ_has(pid, f"SLURM_CONF={self.conf}")}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(found)
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        mine, pid = set(), os.getpid()  # never this process nor the ones above it
        while pid in table and pid not in mine:
            mine.add(pid)
            pid = table[pid][0]
        return found - mine

    def _jobs(self) -> list[str]:
        return subprocess.run(
            ["squeue", "-h", "-o", "%A"], env=self.env, capture_output=True, text=True
        ).stdout.split()

    @staticmethod
    def _until(done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancels this cluster's jobs, shuts down its controller and daemons (``scontrol shutdown``)
        and waits for them and their steps, then kills what is left of the processes it started (and
        their steps), by their ids, and stops its munged."""
        munged = self.started.get("munged")
        spared = {munged.pid} if munged else set()  # the daemons and steps need it until they end
        if any(p.poll() is None for name, p in self.started.items() if name != "munged"):
            jobs = self._jobs()  # all of them ours: the cluster is private
            if jobs:
                subprocess.run(["scancel", "--full", *jobs], env=self.env, check=False, capture_output=True)
                self._until(lambda: not self._jobs(), 15)  # KillWait=5
            subprocess.run(["scontrol", "shutdown"], env=self.env, check=False, capture_output=True)
        self._until(lambda: not self.ours() - spared, 15)
        for pid in self.ours() - spared:  # steps can outlive the shutdown
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._until(lambda: not self.ours() - spared, 5)
        if munged is not None and munged.poll() is None:
            munged.terminate()
            try:
                munged.wait(10)
            except subprocess.TimeoutExpired:
                munged.kill()
        for p in self.started.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)

    @property
    def env(self) -> dict[str, str]:
        """The environment for this cluster's daemons and commands: its own config, none of the
        machine's (nor of an allocation the tests may run in)."""
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SALLOC_", "SRUN_"))
        }
        return {**inherited, "PATH": f"{self.bin}:{os.environ['PATH']}", "SLURM_CONF": str(self.conf)}
