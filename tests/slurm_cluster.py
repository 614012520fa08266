"""A real one-node SLURM cluster (Debian's slurmctld, slurmd and munge) for the launcher tests.

Started once per test session when the binaries are installed (``.ci/run`` installs them) and we are
root; ``unavailable()`` says why not otherwise. Settings follow ../shared/reference/slurm-one-node.md:
quick requeue (cred_expire, short scheduler intervals), two partitions for preemption, ports outside
Lightning's MASTER_PORT range, and an ``sacct`` stand-in (no accounting daemon) answering from squeue.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "scontrol")

SACCT = """#!/bin/sh
# sacct stand-in for a cluster without accounting: JobID|State|NodeList of the asked jobs, from squeue
ids=$(echo "$@" | sed -n 's/.*-j *\\([0-9_,]*\\).*/\\1/p')
squeue -h -r --states=all -o '%i|%T|%N' ${ids:+-j $ids}
"""


def unavailable() -> str | None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing; .ci/run installs Debian's slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "the one-node SLURM cluster needs root to start munged and slurmd"
    return None


def slurm_conf(scratch: Path) -> str:
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory = next(
        int(field.split("=")[1])
        for field in subprocess.run(
            ["slurmd", "-C"], capture_output=True, text=True, check=True
        ).stdout.split()
        if field.startswith("RealMemory=")
    )
    return f"""ClusterName=bksdm-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
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

    def start(self) -> None:
        for folder in ("state", "spool", "bin"):
            (self.scratch / folder).mkdir(parents=True, exist_ok=True)
        (self.bin / "sacct").write_text(SACCT)
        (self.bin / "sacct").chmod(0o755)
        Path("/etc/slurm").mkdir(exist_ok=True)
        Path("/etc/slurm/slurm.conf").write_text(slurm_conf(self.scratch))
        run_munge = Path("/run/munge")
        run_munge.mkdir(exist_ok=True)
        shutil.chown(run_munge, "munge", "munge")
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
        subprocess.run(["slurmctld", "-c"], check=True)
        subprocess.run(["slurmd"], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout
            if "idle" in state:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the one-node SLURM cluster did not come up: sinfo says {state!r}")

    def stop(self) -> None:
        """Cancels what is left, then stops both daemons (``scontrol shutdown``) and waits for them."""
        subprocess.run(["scancel", "--full", "--user=root"], check=False, capture_output=True)
        subprocess.run(["scontrol", "shutdown"], check=False, capture_output=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(
            subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode == 0
            for daemon in ("slurmctld", "slurmd")
        ):
            time.sleep(0.2)
        for leftover in ("slurmstepd", "slurmd", "slurmctld"):  # steps can outlive the shutdown
            subprocess.run(["pkill", "-9", "-x", leftover], check=False)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}"}
