"""experiments/miniworld_ablation: run.sh (the sweep as workers sharing one list of runs) and summarize.py,
for the relational world's sweep as for the 64 px one's."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.paths import ROOT

FAKE_TRAIN = """#!/bin/bash
# records its arguments and, as a finished run would, writes the run's last evaluation
echo "$@" >> "$CALLS"
for word in "$@"; do
  case $word in loss=*) loss=${word#loss=};; arch=*) arch=${word#arch=};; seed=*) seed=${word#seed=};;
    hydra.sweep.dir=*) sweep=${word#hydra.sweep.dir=};; esac
done
mkdir -p "$sweep/$loss-$arch-seed$seed/eval"
echo "{\\"step\\": $FINAL_STEP, \\"accuracy/all\\": 0.5}" > "$sweep/$loss-$arch-seed$seed/eval/history.jsonl"
"""


def run_sweep(tmp_path: Path, **settings: str) -> list[str]:
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "python").write_text(FAKE_TRAIN)
    (shim / "python").chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "CALLS": str(calls),
           "CLAIMS": str(tmp_path / "claims"), "SEEDS": "0", "ARCHS": "small", **settings}  # fmt: skip
    done = subprocess.run(["bash", str(ROOT / "experiments/miniworld_ablation/run.sh")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return sorted(calls.read_text().splitlines()) if calls.is_file() else []


def test_the_runner_runs_each_missing_run_once_with_the_experiment_s_own_settings(tmp_path):
    sweep = tmp_path / "scenes"
    settings = {"EXPERIMENT": "miniworld_scenes_ablation", "SWEEP": str(sweep), "STEPS": "1000",
                "LOSSES": "task kd_full", "FINAL_STEP": "1000"}  # fmt: skip
    calls = run_sweep(tmp_path, **settings)
    assert calls == [
        f"-m bksdm.train -m experiment=miniworld_scenes_ablation loss={loss} arch=small seed=0 "
        f"hydra.sweep.dir={sweep}"
        for loss in ("kd_full", "task")
    ]  # the experiment's own caption dropout: none given
    assert run_sweep(tmp_path, **settings) == []  # finished runs are kept
    (sweep / "task-small-seed0/eval/history.jsonl").write_text('{"step": 250, "accuracy/all": 0.1}\n')
    assert [call.split()[4] for call in run_sweep(tmp_path, **settings)] == ["loss=task"]  # a stopped one


def test_the_runner_sweeps_caption_dropouts_into_folders_of_their_own(tmp_path):
    base = tmp_path / "miniworld"
    calls = run_sweep(tmp_path, SWEEP=str(base), LOSSES="task", DROPOUTS="0 0.1", FINAL_STEP="400")
    assert calls == [
        f"-m bksdm.train -m experiment=miniworld_ablation loss=task arch=small seed=0 "
        f"distill.caption_dropout={p} hydra.sweep.dir={folder}"
        for p, folder in (("0", base), ("0.1", f"{base}_caption_dropout0.1"))
    ]


def test_a_relational_sweep_s_summary_shows_the_relation_and_the_held_out_bindings(tmp_path):
    scores = {"accuracy/all": 0.4, "accuracy/axis": 0.9, "accuracy_held_out_split/all": 0.2, "fid": 9.0,
              "error_to_teacher": 0.1, "error_to_teacher/unconditional": 0.1, "error_to_teacher/guided": 0.3}  # fmt: skip
    for loss in ("task", "kd_full"):
        run = tmp_path / "sweep" / f"{loss}-small-seed0"
        (run / ".hydra").mkdir(parents=True)
        (run / "eval").mkdir()
        (run / ".hydra/hydra.yaml").write_text(
            f"hydra:\n  runtime:\n    choices:\n      loss: {loss}\n      arch: small\n"
        )
        (run / ".hydra/config.yaml").write_text("seed: 0\ntrainer:\n  max_steps: 1000\n  accelerator: cpu\n")
        rows = [{**scores, "step": 0}, {**scores, "step": 1000}]
        (run / "eval/history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    script = ROOT / "experiments/miniworld_ablation/summarize.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "sweep"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    header = (tmp_path / "out/results.md").read_text().splitlines()[0]
    assert header.endswith("| accuracy (all slots) | FID (classifier features) | error to the teacher (MSE) | "
                           "empty-caption error (MSE) | guided error to the teacher (MSE, guidance 3) | relation axis "
                           "accuracy | accuracy on held-out bindings (all slots) |")  # fmt: skip
    assert (tmp_path / "out/held_out_accuracy.png").stat().st_size > 1000
