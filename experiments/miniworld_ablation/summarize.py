"""python experiments/miniworld_ablation/summarize.py <sweep folder> [--out <folder>] [--teacher metrics.json]

Reads every finished run of a mini-world ablation sweep (each run folder's .hydra/hydra.yaml for its loss
and arch, .hydra/config.yaml for its seed and trainer.max_steps, eval/history.jsonl for its scores by
step; a run whose last score is not at trainer.max_steps is still running and left out) and writes, into
--out (default: this folder): results.md (the table: each loss x arch at the last step, mean and sample
standard deviation over seeds, with the untrained student of each arch and, given --teacher, the
teacher's own scores from `python -m bksdm.evaluate eval=miniworld model=builtin:miniworld`),
results.json (every score of every run) and accuracy.png / fid.png / error.png / guided_error.png (the
score against steps, one panel per arch, one line per loss, the band spanning the seeds). A sweep of the
relational world (experiment=miniworld_scenes_ablation) also gets the relation axis's accuracy and the
accuracy on held-out colour-shape bindings (held_out_accuracy.png). Plots need matplotlib
(pip install -e ".[plots]").
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import yaml

LOSSES = ["task", "kd_out", "kd_full", "kd_full_normalized"]
ARCHS = ["base", "small", "tiny"]
SCORES = {"accuracy/all": "accuracy (all four attributes)", "fid": "FID (classifier features)",
          "error_to_teacher": "error to the teacher (MSE)",
          "error_to_teacher/unconditional": "empty-caption error (MSE)",
          "error_to_teacher/guided": "guided error to the teacher (MSE, guidance 3)"}  # fmt: skip
PLOTS = {"accuracy/all": "accuracy.png", "fid": "fid.png", "error_to_teacher": "error.png",
         "error_to_teacher/guided": "guided_error.png"}  # fmt: skip
# the relational world's sweeps (experiment=miniworld_scenes_ablation) score these too
RELATIONAL = {"accuracy/axis": "relation axis accuracy",
              "accuracy_held_out_split/all": "accuracy on held-out bindings (all slots)"}  # fmt: skip
RELATIONAL_PLOTS = {"accuracy_held_out_split/all": "held_out_accuracy.png"}


def read_runs(sweep: Path) -> tuple[list[dict], list[str]]:
    """(finished runs, names of the runs still going)."""
    runs, unfinished = [], []
    for history in sorted(sweep.glob("*/eval/history.jsonl")):
        folder = history.parent.parent
        hydra = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text())["hydra"]
        choices = hydra["runtime"]["choices"]
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        if not rows or rows[-1]["step"] != config["trainer"]["max_steps"]:
            unfinished.append(folder.name)
            continue
        if missing := [score for score in SCORES if score not in rows[-1]]:
            raise ValueError(
                f"{str(history)!r} has no {missing} (written before the score existed?): rerun that run"
            )
        runs.append({"loss": choices["loss"], "arch": choices["arch"], "seed": config["seed"],
                     "device": config["trainer"]["accelerator"], "folder": folder.name,
                     "history": rows})  # fmt: skip
    if not runs:
        raise FileNotFoundError(f"no finished run with eval/history.jsonl under {str(sweep)!r}")
    return runs, unfinished


def scores_of(runs: list[dict]) -> dict[str, str]:
    """The scores to show, by key, with their labels: the relational world's too where every run has them."""
    if all(key in run["history"][-1] for run in runs for key in RELATIONAL):
        return {**SCORES, "accuracy/all": "accuracy (all slots)", **RELATIONAL}
    return SCORES


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def table(runs: list[dict], teacher: dict | None = None) -> str:
    scores = scores_of(runs)
    groups, untrained = defaultdict(list), {}
    for run in runs:
        groups[run["loss"], run["arch"]].append(run["history"][-1])
        if run["history"][0]["step"] == 0:  # no loss has acted yet: one row per arch and seed
            untrained[run["arch"], run["seed"]] = run["history"][0]
    for (arch, _), row in untrained.items():
        groups["untrained", arch].append(row)
    rows = ["untrained", *LOSSES]
    order = sorted(groups, key=lambda key: (ARCHS.index(key[1]) if key[1] in ARCHS else 99,
                                            rows.index(key[0]) if key[0] in rows else 99))  # fmt: skip
    lines = [
        "| arch | loss | steps | seeds | " + " | ".join(scores.values()) + " |",
        "|---" * (4 + len(scores)) + "|",
    ]
    if teacher is not None:
        cells = [f"{teacher[s]:.3g}" if s in teacher else "-" for s in scores]
        lines.append("| teacher | (itself) | - | - | " + " | ".join(cells) + " |")
    for loss, arch in order:
        finals = groups[loss, arch]
        steps = sorted({row["step"] for row in finals})
        cells = [spread([row[score] for row in finals]) for score in scores]
        lines.append(
            f"| {arch} | {loss} | {'/'.join(map(str, steps))} | {len(finals)} | " + " | ".join(cells) + " |"
        )
    devices = Counter(run["device"] for run in runs)
    lines.append("\nTrained on: " + ", ".join(f"{n} runs {d}" for d, n in sorted(devices.items())))
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], score: str, path: Path, teacher: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = [a for a in ARCHS if any(r["arch"] == a for r in runs)]
    figure, axes = plt.subplots(1, len(archs), figsize=(4.5 * len(archs), 3.6), squeeze=False, sharey=True)
    for axis, arch in zip(axes[0], archs, strict=True):
        for loss in [name for name in LOSSES if any(r["loss"] == name for r in runs)]:
            chosen = [r["history"] for r in runs if r["arch"] == arch and r["loss"] == loss]
            if not chosen:
                continue
            steps = sorted(set.intersection(*({row["step"] for row in h} for h in chosen)))
            values = [[next(row[score] for row in h if row["step"] == s) for h in chosen] for s in steps]
            axis.plot(steps, [statistics.mean(v) for v in values], marker="o", label=loss)
            axis.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        if teacher is not None and score in teacher:
            axis.axhline(teacher[score], color="black", linestyle="--", linewidth=1, label="teacher")
        if score != "accuracy/all":  # both fall by orders of magnitude from the untrained student
            axis.set_yscale("log")
        axis.set_title(f"arch={arch}")
        axis.set_xlabel("optimizer steps")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(scores_of(runs)[score])
    axes[0][-1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--teacher", type=Path, help="the teacher's metrics.json (python -m bksdm.evaluate)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args()
    runs, unfinished = read_runs(args.sweep)
    teacher = json.loads(args.teacher.read_text()) if args.teacher else None
    if teacher is not None and (missing := [s for s in SCORES if s not in teacher]):
        raise ValueError(
            f"--teacher {str(args.teacher)!r} has no {missing}: give an eval=miniworld metrics.json"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table(runs, teacher))
    (args.out / "results.json").write_text(json.dumps({"teacher": teacher, "runs": runs}, indent=1) + "\n")
    if not args.no_plots:
        relational = RELATIONAL_PLOTS if set(scores_of(runs)) > set(SCORES) else {}
        for score, name in {**PLOTS, **relational}.items():
            plot(runs, score, args.out / name, teacher)
    print(table(runs, teacher))
    if unfinished:
        print(f"left out, still running: {', '.join(unfinished)}")


if __name__ == "__main__":
    main()
