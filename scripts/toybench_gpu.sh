#!/usr/bin/env bash
# The toy quality table on the GPUs of one machine. The toy students are tiny, so each trains in its
# own `rehyat bench toy` process, several per card, spread round-robin over the cards:
#   1. one process samples the teacher's videos once (the other processes copy them);
#   2. one process per student (half_blocks starts once the rehyat student's stage 1 is done: it takes
#      the best half of those feature maps);
#   3. a last run merges the per-student results and writes the table to $OUT (or ./runs)/toybench.
# Extra arguments go to every process (e.g. --set finetune_steps=400). Needs diffusers: where it is
# missing, carry wheels in .whl (see the device README).
set -uo pipefail
RUN=${OUT:-runs}/toybench
WORK=${WORK:-/tmp/toybench}
LIMIT=${LIMIT:-0}  # seconds per student process on a machine with a per-command cap (0: no cap)
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of this script with --quick
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}; GPUS=$(( GPUS > 0 ? GPUS : 1 ))
# ONLY="a b": train just these students (half_blocks only with rehyat first); REUSE=toybench.json: take
# the other rows of the table from an earlier run made with the same settings.
read -r -a STUDENTS <<< "${ONLY:-rehyat uniform_hybrid rehyat_nonneg causal_softmax teacher_finetuned \
  rehyat_to0 local linear bidirectional rehyat_to2 half_blocks rehyat_spatial rehyat_nonneg_spatial}"
if [[ " ${STUDENTS[*]} " == *" half_blocks "* && ${STUDENTS[0]} != rehyat ]]; then
  echo "half_blocks needs rehyat as the first student (it takes rehyat's stage 1)" >&2; exit 2
fi
# Many processes share the CPU: cap each one's BLAS/OpenMP threads, or they oversubscribe it.
THREADS=$(( $(nproc) / ${#STUDENTS[@]} )); THREADS=$(( THREADS > 0 ? THREADS : 1 ))
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
mkdir -p "$RUN"
rm -rf "$WORK"/part* "$WORK"/out* "$WORK/all" "$WORK/teacher" "$WORK/teacher_out"  # nothing stale
toy() { python3 -m rehyat.cli bench toy --device "$DEVICE" "$@"; }

toy --work "$WORK/teacher" --out "$WORK/teacher_out" "$@" --report-only > "$RUN/teacher.log" 2>&1 \
  || { tail -20 "$RUN/teacher.log"; exit 1; }
pids=()
for i in "${!STUDENTS[@]}"; do
  part="$WORK/part$i"
  mkdir -p "$part" && cp -r "$WORK/teacher/teacher" "$part/"
  student=${STUDENTS[$i]}
  (
    if [ "$student" = half_blocks ]; then  # wait for the rehyat student's stage 1 (part 0)
      until [ -f "$WORK/part0/rehyat/stage1.json" ]; do
        kill -0 "${pids[0]}" 2>/dev/null || { echo "the rehyat process ended without a stage 1"; exit 1; }
        sleep 5
      done
      mkdir -p "$part/rehyat/distill"
      cp -r "$WORK/part0/rehyat/stage1" "$part/rehyat/"
      cp "$WORK/part0/rehyat/distill/ranking.json" "$part/rehyat/distill/"
    fi
    CUDA_VISIBLE_DEVICES=$((i % GPUS)) timeout "$LIMIT" python3 -m rehyat.cli bench toy --device "$DEVICE" \
      --work "$part" --out "$WORK/out$i" "$@" --only "$student"
  ) > "$RUN/part$i.log" 2>&1 &
  pids+=($!)
done
failed=()
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed+=("${STUDENTS[$i]} (part$i.log)")
done
mkdir -p "$WORK/all" && cp -r "$WORK/teacher/teacher" "$WORK/all/"
for i in "${!STUDENTS[@]}"; do
  result="$WORK/part$i/${STUDENTS[$i]}/result.json"
  [ -f "$result" ] && mkdir -p "$WORK/all/${STUDENTS[$i]}" && cp "$result" "$WORK/all/${STUDENTS[$i]}/"
done
status=0
toy --work "$WORK/all" --out "$RUN" "$@" --report-only ${REUSE:+--reuse "$REUSE"} > "$RUN/merge.log" 2>&1 \
  || { failed+=("the merge (merge.log)"); }
tail -3 "$RUN/merge.log"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}" >&2
  status=1
fi
(cd "$RUN" && tar czf logs.tgz ./*.log && rm -f ./*.log) || status=1  # $OUT brings back at most 8 files
exit $status
