#!/usr/bin/env bash
# The issue-6 quality table on the GPUs of one machine: the toy students are tiny, so one
# `rehyat bench toy` process per group of students, several per card, spread round-robin over the cards
# (half_blocks reuses the rehyat student's stage 1, so they run together). A last run merges their
# per-student results and writes the table to $OUT (or ./runs)/toybench. Extra arguments go to every
# process (e.g. --set finetune_steps=400). Needs diffusers: where it is missing, carry wheels in .whl
# (see the device README).
set -uo pipefail
RUN=${OUT:-runs}/toybench
WORK=${WORK:-/tmp/toybench}
LIMIT=${LIMIT:-0}  # seconds per process on a machine with a per-command cap (0: no cap)
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
mkdir -p "$RUN"
# Longest first, so the round-robin puts the two longest on different cards.
GROUPS_=("rehyat half_blocks" "uniform_hybrid" "rehyat_nonneg" "causal_softmax" "teacher_finetuned"
  "rehyat_to0" "local" "linear" "bidirectional" "rehyat_to2")
for i in "${!GROUPS_[@]}"; do
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$((i % GPUS)) timeout "$LIMIT" python3 -m rehyat.cli bench toy --device cuda \
    --work "$WORK/part$i" --out "$WORK/out$i" "$@" --only ${GROUPS_[$i]} > "$RUN/part$i.log" 2>&1 &
done
wait
mkdir -p "$WORK/all"
for i in "${!GROUPS_[@]}"; do
  for result in "$WORK"/part$i/*/result.json; do
    [ -f "$result" ] || continue
    student=$(basename "$(dirname "$result")")
    mkdir -p "$WORK/all/$student" && cp "$result" "$WORK/all/$student/"
  done
done
python3 -m rehyat.cli bench toy --device cuda --work "$WORK/all" --out "$RUN" "$@" --report-only > "$RUN/merge.log" 2>&1
tail -3 "$RUN/merge.log"
(cd "$RUN" && tar czf logs.tgz part*.log && rm -f part*.log)  # $OUT brings back at most 8 files
