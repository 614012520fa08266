#!/usr/bin/env bash
# The GPU measurements of issue 6, as one script for a lent machine (a few minutes on one H100):
#   bash experiments/bench/gpu.sh [out.jsonl]
# SD-v1.4's shapes with random weights (built offline, 2 GB cached), the small student, 512 px, bf16 mixed
# precision (fp16 frozen parts), batch 64. Appends one JSON line per run to the output file.
set -euo pipefail
out=${1:-experiments/bench/gpu-results.jsonl}
export HF_HUB_OFFLINE=1
common=(teacher=sd14_random arch=small bench.resolution=512 "bench.out=$out")
# the training default (no gradient checkpointing), then the paper's memory setting (with it), then the
# reference step beside the default; the first two from pre-encoded inputs, then encoding every step
python -m bksdm.bench "${common[@]}" bench.batch_size=64 bench.warmup_steps=3 bench.steps=10
python -m bksdm.bench "${common[@]}" bench.batch_size=64 bench.warmup_steps=3 bench.steps=10 \
  distill.gradient_checkpointing=true
python -m bksdm.bench "${common[@]}" bench.batch_size=64 bench.warmup_steps=3 bench.steps=10 \
  bench.pre_encoded=false
python -m bksdm.bench "${common[@]}" bench.batch_size=32 bench.warmup_steps=2 bench.steps=10 bench.mode=both
