#!/usr/bin/env bash
# One GPU call that makes the shipped toy student and the stage-1 robustness sweep side by side:
#   - `rehyat bench toy` for STUDENTS (default: the library default and two motion candidates) through
#     scripts/toybench_gpu.sh, merged with the committed table's other rows (REUSE);
#   - `rehyat bench stage1` (φ variants × learning rates × seeds) in the background on the same card.
# Writes $OUT/toybench/ (table + logs), $OUT/stage1/ (robustness table) and $OUT/<student>.tgz (the
# final EMA checkpoint of every student: φ + fine-tuned base weights).
# Extra arguments go to every `rehyat bench toy` (e.g. --set eval_prompts=128); REUSE= (empty) merges
# no earlier rows. Needs diffusers: carry the wheels in .whl (see the device README).
set -uo pipefail
OUT=${OUT:-runs}
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
SWEEP_PROCESSES=${SWEEP_PROCESSES:-6}
sweep=
if [ "${SWEEP:-1}" = 1 ]; then
  mkdir -p "$OUT/stage1"
  (
    OMP_NUM_THREADS=1 timeout "${LIMIT:-0}" python3 -m rehyat.cli bench stage1 --device cuda \
      --processes "$SWEEP_PROCESSES" --out "$OUT/stage1" --work /tmp/stage1_sweep > /tmp/stage1.log 2>&1 \
      || { echo "stage-1 sweep failed:"; tail -20 /tmp/stage1.log; }
  ) &
  sweep=$!
fi
# Each student's checkpoint is packed as soon as stage 2 writes it (its evaluation may still run) into
# $OUT/<student>.tgz: the final EMA checkpoint, stage 2's resolved config and metrics, stage 1's summary.
(
  packed=" "
  while :; do
    for done_file in /tmp/toybench/part*/*/finetune/final-ema/rehyat_config.json; do
      [ -f "$done_file" ] || continue
      finetune=$(dirname "$(dirname "$done_file")"); student=$(basename "$(dirname "$finetune")")
      [[ "$packed" == *" $student "* ]] && continue
      sleep 5
      cp "$(dirname "$finetune")/stage1.json" "$finetune/"
      tar -czf "$OUT/$student.tgz" -C "$finetune" final-ema config.json metrics.jsonl stage1.json
      packed="$packed$student "; echo "packed $finetune/final-ema"
    done
    sleep 5
  done
) &
packer=$!
ONLY=${STUDENTS:-"rehyat_nonneg_spatial rehyat_ns_distill rehyat_ns_to2"} WORK=/tmp/toybench \
  REUSE=${REUSE-bench/results/toybench.json} bash scripts/toybench_gpu.sh "$@"
status=$?
[ -n "$sweep" ] && wait "$sweep"
sleep 6; kill "$packer" 2>/dev/null
exit $status
