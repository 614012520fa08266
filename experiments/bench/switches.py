"""One speed switch at a time against the default step, on this CPU: ``python experiments/bench/switches.py``.

Each configuration below runs ``python -m bksdm.bench preset=cpu_full_width`` with its overrides, in its own
process, one after another, in ``--rounds`` rounds (2: a shared machine's slow minutes hit one round, not
both); each JSON result, labelled (the device, with the CPU model, is in it), is appended to this
CPU model's ``cpu-switches-<model>.jsonl`` as soon as it ends. Restartable: a label with its rounds in the file is not run
again (``--only LABEL ...`` runs those once more, appending). ``--list`` prints the configurations,
``--table`` the results as a markdown table (each configuration's round with the fastest step).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bksdm.bench.run import cpu_model

HERE = Path(__file__).parent
# one file per CPU model: "Intel(R) Xeon(R) Processor" -> cpu-switches-intel-xeon-processor.jsonl
MODEL = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", cpu_model().lower())).strip("-")
RESULTS = HERE / f"cpu-switches-{MODEL}.jsonl"

# label -> overrides of preset=cpu_full_width (the training default: bf16 mixed, pre-encoded, EMA, fused AdamW)
CONFIGS = {
    "default": [],
    "encode_every_step": ["bench.pre_encoded=false"],
    "ema_every_step": ["distill.ema_every=1"],
    "host_memory_returned": ["speed.keep_host_memory=false"],
    "foreach_adamw": ["optim.optimizer.fused=false"],
    "channels_last_all": ["speed.channels_last=true"],
    "channels_last_off": ["speed.channels_last=false"],
    "gemm_convolutions_off": ["speed.gemm_convolutions=false"],
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


PHASE_NAMES = (
    "inputs",
    "teacher_forward",
    "student_forward",
    "backward",
    "grad_norm_clip",
    "optimizer",
    "ema",
)


def table() -> str:
    """One row per configuration, from its round with the fastest step; seconds per optimizer step."""
    best: dict[str, dict] = {}
    for line in filter(str.strip, RESULTS.read_text().splitlines()):
        record = json.loads(line)
        run = record["runs"][0]
        if (
            record["label"] not in best
            or run["fastest_s_per_step"] < best[record["label"]]["fastest_s_per_step"]
        ):
            best[record["label"]] = {**run, "rounds": 0}
        best[record["label"]]["rounds"] += 1
    header = ["configuration", "overrides", "mean s", "fastest s", "limit s", "x limit", "peak RSS GB",
              *PHASE_NAMES]  # fmt: skip
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, run in best.items():
        overrides = " ".join(f"`{o}`" for o in CONFIGS.get(label, [])) or "(the default)"
        phases = [f"{run['phases_s'][name]:.2f}" for name in PHASE_NAMES]
        cells = [label, overrides, f"{run['s_per_step']:.2f}", f"{run['fastest_s_per_step']:.2f}",
                 f"{run['limit_s']:.2f}", f"{run['x_limit']:.2f}", f"{run['peak_memory_gb']:.1f}", *phases]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="run these labels (again)")
    parser.add_argument("--list", action="store_true", help="print the configurations and stop")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration (default 2)")
    parser.add_argument("--table", action="store_true", help="print the results as a markdown table and stop")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
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
