#!/bin/bash
# The ablation sweep as WORKERS processes of THREADS threads each sharing one list of runs (on a 2-core
# CPU two one-thread runs side by side finish sooner than one two-thread run after another; on a GPU,
# several small runs share the card). Each worker claims the next run by creating its folder under
# $CLAIMS; a finished run (scored at step 400) is skipped and an unfinished one started afresh, so the
# script can be stopped and started again. Order: caption dropout, then seed, arch, loss. The same runs as
#   python -m bksdm.train -m experiment=miniworld_ablation loss=... arch=... seed=... [OVERRIDES]
# into outputs/ablation/miniworld (caption dropout 0, the paper's setting) and
# outputs/ablation/miniworld_caption_dropout<p> (distill.caption_dropout=<p>).
# Usage (these are the defaults):
#   WORKERS=2 THREADS=1 DROPOUTS=0 SEEDS="0 1 2" ARCHS="small tiny base" \
#   LOSSES="task kd_out kd_full kd_full_normalized" OVERRIDES="" experiments/miniworld_ablation/run.sh
# On one GPU (the 36 runs took 8.5 minutes on an H200 this way):
#   WORKERS=14 OVERRIDES="trainer.accelerator=gpu speed.tf32=false speed.compile=false"
set -u
cd "$(dirname "$0")/../.."
claims=${CLAIMS:-outputs/ablation/.claims}
rm -rf "$claims" && mkdir -p "$claims"   # claims of a stopped invocation
worker() {
  for dropout in ${DROPOUTS:-0}; do
    sweep=outputs/ablation/miniworld
    [ "$dropout" = 0 ] || sweep=outputs/ablation/miniworld_caption_dropout$dropout
    for seed in ${SEEDS:-0 1 2}; do
      for arch in ${ARCHS:-small tiny base}; do
        for loss in ${LOSSES:-task kd_out kd_full kd_full_normalized}; do
          name=$loss-$arch-seed$seed
          if grep -qs '"step": 400,' "$sweep/$name/eval/history.jsonl"; then continue; fi
          mkdir -p "$claims/$dropout" && mkdir "$claims/$dropout/$name" 2>/dev/null || continue
          rm -rf "${sweep:?}/$name"   # a stopped attempt: its eval history would be appended to
          echo "$(date +%T) worker $1 starts $name (caption dropout $dropout)"
          # shellcheck disable=SC2086  # OVERRIDES is a list of words
          OMP_NUM_THREADS=${THREADS:-1} python -m bksdm.train -m experiment=miniworld_ablation \
            loss="$loss" arch="$arch" seed="$seed" distill.caption_dropout="$dropout" \
            hydra.sweep.dir="$sweep" ${OVERRIDES:-} > "$claims/$dropout/$name/train.out" 2>&1
          status=$?
          echo "$(date +%T) worker $1 ends $name (exit $status; output in $claims/$dropout/$name/train.out)"
        done
      done
    done
  done
}
for w in $(seq 1 "${WORKERS:-2}"); do worker "$w" & done
wait
