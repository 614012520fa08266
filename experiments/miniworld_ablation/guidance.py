"""python experiments/miniworld_ablation/guidance.py <sweep folder> [--out <folder>] [--guidance-scale 3]

The error to the teacher of every finished run's exported student (``student/``, its last step) on the
held-out noisy latents, three ways: for the captions (the sweep's ``error_to_teacher``), for the empty
caption, and for their classifier-free-guided combination, which is what the sampler uses. Writes
guidance.md (mean ± sd over seeds per arch x loss) into --out (default: this folder).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from summarize import ARCHS, LOSSES, read_runs, spread

from bksdm.arch import build_student
from bksdm.eval.generation import load_pipeline
from bksdm.miniworld.assets import load_classifier
from bksdm.miniworld.evaluation import MiniWorldReference, errors_to_teacher

COLUMNS = {"error_to_teacher": "captions", "error_to_teacher/unconditional": "empty caption",
           "error_to_teacher/guided": "guided"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs, _ = read_runs(args.sweep)
    teacher = load_pipeline("builtin:miniworld", "float32", "cpu", None)
    reference = MiniWorldReference.build(teacher, load_classifier(), num_latents=256)  # the sweep's latents
    groups = defaultdict(list)
    for arch in sorted({run["arch"] for run in runs}, key=ARCHS.index):
        groups["untrained", arch].append(
            errors_to_teacher(build_student(teacher.unet, arch), reference, args.guidance_scale)
        )
    for run in runs:
        unet = UNet2DConditionModel.from_pretrained(args.sweep / run["folder"] / "student", subfolder="unet")
        with torch.no_grad():
            groups[run["loss"], run["arch"]].append(errors_to_teacher(unet, reference, args.guidance_scale))
    rows = ["untrained", *LOSSES]
    lines = [
        "| arch | loss | seeds | "
        + " | ".join(f"error to the teacher: {c}" for c in COLUMNS.values())
        + " |",
        "|---" * (3 + len(COLUMNS)) + "|",
    ]
    for loss, arch in sorted(groups, key=lambda key: (ARCHS.index(key[1]), rows.index(key[0]))):
        scores = groups[loss, arch]
        cells = [spread([s[k] for s in scores]) for k in COLUMNS]
        lines.append(f"| {arch} | {loss} | {len(scores)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + f"\n\nGuidance scale {args.guidance_scale:g}; 256 held-out noisy latents.\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guidance.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
