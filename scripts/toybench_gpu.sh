#!/usr/bin/env bash
# The issue-6 quality table on one GPU: the toy students are tiny, so six `rehyat bench toy` processes
# share the card (disjoint students; half_blocks reuses the rehyat student's stage 1, so they run
# together), then a last run merges their per-student results and writes the table to $OUT (or
# ./runs)/toybench. Needs diffusers: where it is missing, carry wheels in .whl (see the device README).
set -uo pipefail
RUN=${OUT:-runs}/toybench
WORK=${WORK:-/tmp/toybench}
LIMIT=${LIMIT:-0}  # seconds per process on a machine with a per-command cap (0: no cap)
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
mkdir -p "$RUN"
GROUPS_=("rehyat half_blocks" "rehyat_nonneg teacher_finetuned" "rehyat_to0 bidirectional" "local linear" "uniform_hybrid" "rehyat_to2 causal_softmax")
for i in "${!GROUPS_[@]}"; do
  # shellcheck disable=SC2086
  timeout "$LIMIT" python3 -m rehyat.cli bench toy --device cuda --work "$WORK/part$i" --out "$WORK/out$i" "$@" \
    --only ${GROUPS_[$i]} > "$RUN/part$i.log" 2>&1 &
done
wait
mkdir -p "$WORK/all"
for i in "${!GROUPS_[@]}"; do
  for done in "$WORK"/part$i/*/result.json; do
    [ -f "$done" ] || continue
    student=$(basename "$(dirname "$done")")
    mkdir -p "$WORK/all/$student" && cp "$done" "$WORK/all/$student/"
  done
done
python3 -m rehyat.cli bench toy --device cuda --work "$WORK/all" --out "$RUN" "$@" --report-only > "$RUN/merge.log" 2>&1
tail -3 "$RUN/merge.log"
tar czf "$RUN/work.tgz" -C "$WORK" --exclude='finetune_data' --exclude='checkpoints' --exclude='final*' --exclude='stage1' . || true
