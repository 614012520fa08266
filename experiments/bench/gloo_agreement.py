"""What the per-step agreement of DDP ranks costs: ``bksdm.training.host_sync.ranks_agree_each`` (one
gloo all-reduce of two int32 flags on the host, every training step) timed between two local processes.

    python experiments/bench/gloo_agreement.py [--steps 2000]

Prints the median and 99th-percentile microseconds per call and the CPU model. The flags (a batch with
no usable sample, a dead data source) must be decided together on every step, or one rank would skip a
step the others take and DDP would hang; this measures what keeping that property costs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def worker(rank: int, world: int, store: str, steps: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from bksdm.training.host_sync import ranks_agree_each

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    for _ in range(100):  # warm-up
        ranks_agree_each([True, True])
    times = []
    for step in range(steps):
        start = time.perf_counter()
        ranks_agree_each([step % 7 != 0, True])
        times.append(time.perf_counter() - start)
    dist.barrier()  # both done before either tears its end down (gloo aborts otherwise, now and then)
    dist.destroy_process_group()
    if rank == 0:
        times.sort()
        with open(out, "w") as handle:
            json.dump(
                {"median_us": times[len(times) // 2] * 1e6, "p99_us": times[int(len(times) * 0.99)] * 1e6},
                handle,
            )


def cpu_model() -> str:
    with open("/proc/cpuinfo") as handle:
        return next(
            (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "unknown"
        )


def main() -> None:
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        store, out = os.path.join(scratch, "store"), os.path.join(scratch, "result.json")
        mp.spawn(worker, args=(2, store, args.steps, out), nprocs=2, join=True)
        with open(out) as handle:
            result = json.load(handle)
    print(json.dumps({"cpu": cpu_model(), "processes": 2, "steps": args.steps, **result}))


if __name__ == "__main__":
    main()
