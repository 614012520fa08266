#!/bin/bash
# The ablation sweep as WORKERS one-thread processes sharing one list of runs (on a 2-core CPU two
# one-thread runs side by side finish sooner than one two-thread run after another). Each worker claims
# the next run by creating its folder under $CLAIMS; a finished run (scored at step 400) is skipped and
# an unfinished one started afresh, so the script can be stopped and started again. Seed by seed: every
# arch x loss with seed 0, then seed 1, ... The same runs as
#   python -m bksdm.train -m experiment=miniworld_ablation loss=... arch=... seed=...
# Usage: WORKERS=2 SEEDS="0 1 2" ARCHS="small tiny base" LOSSES="task kd_out kd_full kd_full_normalized" \
#        experiments/miniworld_ablation/run.sh            (these are the defaults)
set -u
cd "$(dirname "$0")/../.."
sweep=outputs/ablation/miniworld
claims=${CLAIMS:-$sweep/.claims}
rm -rf "$claims" && mkdir -p "$claims"   # claims of a stopped invocation
worker() {
  for seed in ${SEEDS:-0 1 2}; do
    for arch in ${ARCHS:-small tiny base}; do
      for loss in ${LOSSES:-task kd_out kd_full kd_full_normalized}; do
        name=$loss-$arch-seed$seed
        if grep -qs '"step": 400,' "$sweep/$name/eval/history.jsonl"; then continue; fi
        mkdir "$claims/$name" 2>/dev/null || continue
        rm -rf "${sweep:?}/$name"   # a stopped attempt: its eval history would be appended to
        echo "$(date +%T) worker $1 starts $name"
        OMP_NUM_THREADS=1 python -m bksdm.train -m experiment=miniworld_ablation loss=$loss arch=$arch \
          seed=$seed > "$claims/$name/train.out" 2>&1
        status=$?
        echo "$(date +%T) worker $1 ends $name (exit $status; output in $claims/$name/train.out)"
      done
    done
  done
}
for w in $(seq 1 "${WORKERS:-2}"); do worker "$w" & done
wait
