"""One speed switch at a time against the default step, on this CPU: ``python experiments/bench/switches.py``.

Each configuration below runs ``python -m bksdm.bench preset=cpu_full_width`` with its overrides, in its own
process, one after another, in ``--rounds`` rounds (2: a shared machine's slow minutes hit one round, not
both); each JSON result, labelled (the device, with the CPU model, is in it), is appended to
``cpu-switches.jsonl`` as soon as it ends. Restartable: a label with its rounds in the file is not run
again (``--only LABEL ...`` runs those once more, appending). ``--list`` prints the configurations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "cpu-switches.jsonl"

# label -> overrides of preset=cpu_full_width (the training default: bf16 mixed, pre-encoded, EMA, fused AdamW)
CONFIGS = {
    "default": [],
    "encode_every_step": ["bench.pre_encoded=false"],
    "ema_every_step": ["distill.ema_every=1"],
    "host_memory_returned": ["speed.keep_host_memory=false"],
    "foreach_adamw": ["optim.optimizer.fused=false"],
    "channels_last_all": ["speed.channels_last=true"],
    "channels_last_off": ["speed.channels_last=false"],
    "fp32": ["trainer.precision=32", "distill.frozen_dtype=float32"],
    "reference": ["bench.mode=reference"],
}


def runs_done() -> dict[str, int]:
    done = {label: 0 for label in CONFIGS}
    if RESULTS.is_file():
        for line in filter(str.strip, RESULTS.read_text().splitlines()):
            label = json.loads(line)["label"]
            done[label] = done.get(label, 0) + 1
    return done


def run(label: str, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.jsonl"
        command = [
            sys.executable,
            "-m",
            "bksdm.bench",
            "preset=cpu_full_width",
            *overrides,
            f"bench.out={out}",
        ]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
        result = json.loads(out.read_text())
    return {"label": label, "overrides": overrides, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="run these labels (again)")
    parser.add_argument("--list", action="store_true", help="print the configurations and stop")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration (default 2)")
    args = parser.parse_args()
    if args.list:
        for label, overrides in CONFIGS.items():
            print(f"{label:20s} {' '.join(overrides)}")
        return
    if args.only:
        labels = args.only
    else:
        done = runs_done()
        labels = [label for round in range(args.rounds) for label in CONFIGS if done[label] <= round]
    for label in labels:
        record = run(label, CONFIGS[label])
        with RESULTS.open("a") as file:
            file.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
