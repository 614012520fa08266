#!/bin/bash
# The ablation sweep as WORKERS processes of THREADS threads each sharing one list of runs (on a 2-core
# CPU two one-thread runs side by side finish sooner than one two-thread run after another; on a GPU,
# several small runs share the card). Each worker claims the next run by creating its folder under
# $CLAIMS; a finished run (scored at step STEPS) is skipped and an unfinished one started afresh, so the
# script can be stopped and started again. Order: caption dropout, then seed, arch, loss. The same runs as
#   python -m bksdm.train -m experiment=$EXPERIMENT loss=... arch=... seed=... [OVERRIDES]
# into $SWEEP (the experiment's own caption dropout, or with DROPOUTS a list of them: dropout 0 into $SWEEP,
# and p into ${SWEEP}_caption_dropout<p> as distill.caption_dropout=<p>).
# Usage (these are the defaults: the 64 px world's sweep):
#   WORKERS=2 THREADS=1 DROPOUTS= SEEDS="0 1 2" ARCHS="small tiny base" \
#   LOSSES="task kd_out kd_full kd_full_normalized" OVERRIDES="" EXPERIMENT=miniworld_ablation \
#   SWEEP=outputs/ablation/miniworld STEPS=400 experiments/miniworld_ablation/run.sh
# The relational world's (issue 22; its teacher built first with python -m bksdm.miniworld world=scenes):
#   EXPERIMENT=miniworld_scenes_ablation SWEEP=outputs/ablation/miniworld_scenes STEPS=1000 \
#   LOSSES="task kd_out kd_full" experiments/miniworld_ablation/run.sh
# On one GPU (the 64 px world's 36 runs took 8.5 minutes on an H200 this way):
#   WORKERS=14 OVERRIDES="trainer.accelerator=gpu speed.tf32=false speed.compile=false"
set -u
cd "$(dirname "$0")/../.."
claims=${CLAIMS:-outputs/ablation/.claims}
base=${SWEEP:-outputs/ablation/miniworld}
rm -rf "$claims" && mkdir -p "$claims"   # claims of a stopped invocation
worker() {
  for dropout in ${DROPOUTS:-own}; do
    sweep=$base setting=""
    if [ "$dropout" != own ]; then
      setting=distill.caption_dropout=$dropout
      [ "$dropout" = 0 ] || sweep=${base}_caption_dropout$dropout
    fi
    for seed in ${SEEDS:-0 1 2}; do
      for arch in ${ARCHS:-small tiny base}; do
        for loss in ${LOSSES:-task kd_out kd_full kd_full_normalized}; do
          name=$loss-$arch-seed$seed
          if grep -qs "\"step\": ${STEPS:-400}," "$sweep/$name/eval/history.jsonl"; then continue; fi
          mkdir -p "$claims/$dropout" && mkdir "$claims/$dropout/$name" 2>/dev/null || continue
          rm -rf "${sweep:?}/$name"   # a stopped attempt: its eval history would be appended to
          echo "$(date +%T) worker $1 starts $name (caption dropout $dropout)"
          # shellcheck disable=SC2086  # OVERRIDES and setting are lists of words
          OMP_NUM_THREADS=${THREADS:-1} python -m bksdm.train -m experiment="${EXPERIMENT:-miniworld_ablation}" \
            loss="$loss" arch="$arch" seed="$seed" $setting hydra.sweep.dir="$sweep" ${OVERRIDES:-} \
            > "$claims/$dropout/$name/train.out" 2>&1
          status=$?
          echo "$(date +%T) worker $1 ends $name (exit $status; output in $claims/$dropout/$name/train.out)"
        done
      done
    done
  done
}
for w in $(seq 1 "${WORKERS:-2}"); do worker "$w" & done
wait
