"""The paths no CPU test reaches, on one GPU, in a few minutes: python experiments/gpu/check.py [--out F]

Each check is a real command line of bksdm, run in a scratch folder, offline (SD-v1.4's shapes with random
weights, ``teacher=sd14_random``, built in code and cached under $BKSDM_CACHE):

- the default training config at 512 px (bf16-mixed, fp16 frozen parts, compile and channels-last
  ``auto``, fused AdamW, batch 8 x 4 accumulation) for a few steps, exporting its student;
- the ``16-mixed`` path (the paper's precision: loss scaling, unfused AdamW);
- gradient checkpointing (the ``paper_*`` experiments' memory setting);
- generation from the exported student, and ``evaluate eval=standin`` on a few images, on the GPU;
- the generation rate (images/s) of ``evaluate`` at 512 px with the paper's sampling, batch 16;
- ``python -m bksdm.bench`` at 512 px, batch 64, the small student.

It appends one JSON line per check to ``--out`` (default experiments/gpu/results.jsonl): name, command,
exit status, seconds, the GPU's name, for the benchmark its figures and for the generation rate the images
per second of its progress bar; it exits non-zero when any check
failed. ``--compose-only`` composes every command (``--cfg job``) instead of running it: what the CPU
test suite checks, so that the script cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN_512 = [
    "teacher=sd14_random", "data=synthetic", "data.num_samples=256", "data.batch_size=8", "data.num_workers=2",
    "trainer.max_steps=3", "trainer.log_every_n_steps=1", "callbacks.sample_grid.num_inference_steps=5",
    "callbacks.sample_grid.prompts=[a lighthouse on a hill at sunset]",
]  # fmt: skip


def checks(scratch: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of every check, in order: later ones use the student the first one exports."""
    train = [sys.executable, "-m", "bksdm.train"]
    student = scratch / "default" / "student"
    evaluate = [sys.executable, "-m", "bksdm.evaluate", "eval=standin", f"model={student}",
                f"prompts={scratch / 'captions.json'}", f"real={scratch / 'real'}"]  # fmt: skip
    return [
        ("train_default_512px", [*train, *TRAIN_512, f"hydra.run.dir={scratch / 'default'}"]),
        (
            "train_16_mixed",
            [
                *train,
                *TRAIN_512,
                "trainer.precision=16-mixed",
                "optim.optimizer.fused=false",
                "speed.compile=false",
                f"hydra.run.dir={scratch / 'fp16'}",
            ],
        ),
        (
            "train_gradient_checkpointing",
            [
                *train,
                *TRAIN_512,
                "distill.gradient_checkpointing=true",
                "speed.compile=false",
                f"hydra.run.dir={scratch / 'ckpt'}",
            ],
        ),
        (
            "generate",
            [
                sys.executable,
                "-m",
                "bksdm.generate",
                f"model={student}",
                "prompt=a red bird on a branch",
                "num_inference_steps=10",
                f"out={scratch / 'generated'}",
            ],
        ),
        (
            "evaluate_tiny",
            [
                *evaluate,
                "num_images=10",
                "generator_device=cuda",  # the paper's latents
                "num_inference_steps=5",
                "batch_size=5",
                f"out={scratch / 'evaluation'}",
            ],
        ),
        (
            "generation_rate_512px",  # the paper's sampling: 25 PNDM steps, guidance 7.5, fp16
            [
                *evaluate,
                "num_images=64",
                "batch_size=16",
                f"out={scratch / 'rate'}",
            ],
        ),
        (
            "bench_512px_batch64",
            [
                sys.executable,
                "-m",
                "bksdm.bench",
                "teacher=sd14_random",
                "arch=small",
                "bench.resolution=512",
                "bench.batch_size=64",
                "bench.warmup_steps=3",
                "bench.steps=10",
            ],
        ),
        (
            "train_sdxl_toy",  # SDXL's conditioning with fp16 frozen parts, its VAE kept fp32, the grid
            [
                *train,
                "teacher=sdxl_toy",
                "arch=koala_700m",
                "data=synthetic",
                "trainer.max_steps=3",
                f"hydra.run.dir={scratch / 'sdxl'}",
            ],
        ),
        (
            "bench_sdxl_1024px",  # SDXL-base shapes (built once, 7 GB), KOALA-700M, 1024 px, batch 8
            [
                sys.executable,
                "-m",
                "bksdm.bench",
                "preset=gpu_sdxl",
                "bench.warmup_steps=2",
                "bench.steps=10",
            ],
        ),
        (
            "train_flux_toy_fp8",  # a transformer teacher in bf16 on the GPU, its weights stored in FP8
            [
                *train,
                "teacher=flux_toy",
                "arch=flux_mini",
                "data=synthetic",
                "data.resolution=256",
                "distill.frozen_storage_dtype=float8_e4m3fn",
                "trainer.max_steps=3",
                f"hydra.run.dir={scratch / 'flux'}",
            ],
        ),
        (
            "bench_flux_512px",  # FLUX.1-dev's shapes (built once, 33 GB: minutes), Flux-Mini, 512 px, batch 8;
            # 95 GiB by the memory plan: a 141 GB GPU
            [
                sys.executable,
                "-m",
                "bksdm.bench",
                "preset=gpu_flux",
                "bench.warmup_steps=2",
                "bench.steps=10",
            ],
        ),
    ]


def write_eval_inputs(scratch: Path) -> None:
    """64 captions in COCO's format and twelve real images, for ``evaluate eval=standin``."""
    import numpy as np
    from PIL import Image

    (scratch / "real").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(scratch / "real" / f"{i}.png")
    captions = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(64)],
        "annotations": [
            {"id": i, "image_id": i, "caption": f"a photo of thing number {i}"} for i in range(64)
        ],
    }
    (scratch / "captions.json").write_text(json.dumps(captions))


# checks that need more memory than some GPUs have (GiB, by bksdm.bench's memory plan): skipped on smaller ones
NEEDS_GIB = {"bench_flux_512px": 100}


def gpu_memory_gib() -> float:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0.0


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        return "no torch"


def generation_rate(text: str) -> float | None:
    """The last rate of ``generate_images``' progress bar (``... 64/64 [00:20<00:00, 3.10image/s]``), in
    images per second; tqdm writes ``s/image`` when a rate is below one."""
    import re

    rates = re.findall(r"generating into [^|]*\|[^|]*\|[^\[]*\[[^,]*,\s*([\d.]+)(image/s|s/image)\]", text)
    if not rates:
        return None
    value, unit = rates[-1]
    return float(value) if unit == "image/s" else 1 / float(value)


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "gpu" / "results.jsonl")
    parser.add_argument(
        "--compose-only", action="store_true", help="compose each command instead of running it"
    )
    parser.add_argument("--timeout", type=int, default=300, help="seconds one check may take")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"}
    failed = []
    with tempfile.TemporaryDirectory(prefix="bksdm-gpu-check-") as folder:
        scratch = Path(folder)
        write_eval_inputs(scratch)
        device = "composed only" if args.compose_only else gpu_name()
        for name, command in checks(scratch):
            if args.compose_only:
                command = [*command, "--cfg", "job"]
            elif NEEDS_GIB.get(name, 0) > gpu_memory_gib():
                print(json.dumps({"check": name, "status": "skipped", "device": device,
                                  "why": f"needs {NEEDS_GIB[name]} GiB of GPU memory"}), flush=True)  # fmt: skip
                continue
            start = time.monotonic()
            try:
                done = subprocess.run(
                    command, cwd=scratch, env=env, capture_output=True, text=True, timeout=args.timeout
                )
                status, output = done.returncode, done.stdout + done.stderr
            except subprocess.TimeoutExpired as error:
                status, output = "timeout", f"{error.stdout or ''}{error.stderr or ''}"
            record = {
                "check": name,
                "status": status,
                "seconds": round(time.monotonic() - start, 1),
                "device": device,
                "command": " ".join(command[1:]).replace(str(scratch), "<scratch>"),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            if name.startswith("bench") and status == 0 and not args.compose_only:
                record["bench"] = last_json_line(output)
            if name.startswith("generation_rate") and status == 0 and not args.compose_only:
                record["images_per_s"] = generation_rate(output)
            if status != 0:
                failed.append(name)
                record["output_tail"] = output[-4000:] if isinstance(output, str) else ""
            print(json.dumps({k: v for k, v in record.items() if k != "output_tail"}), flush=True)
            if not args.compose_only:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a") as results:
                    results.write(json.dumps(record) + "\n")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
