#!/usr/bin/env bash
# The quality table on a toy teacher's own world (e.g. a packed-world teacher), in pieces that resume.
# Every row of ROWS trains in its own `rehyat bench toy --teacher $TEACHER --only ROW` process, PARALLEL
# at a time, spread over the machine's GPUs. As each row finishes, its result (and stage 1) joins
# $OUT/toybench_<world>/state.tgz; a piece starts a row only while ROW_S seconds are left before LIMIT, and
# ends with the table of every row so far ($OUT/toybench_<world>/toybench.{json,md,png}, logs.tgz). The
# next piece, given RESUME=<that state.tgz, brought back>, skips the finished rows: run pieces until the
# log says "rows left: none". Extra arguments go to every `rehyat bench toy` (e.g. --set eval_prompts=128);
# every piece of one table needs the same ones. Needs diffusers: where it is missing, carry wheels in .whl.
#   TEACHER=runs/teacher_packed/teacher [RESUME=runs/toybench_packed/state.tgz] bash scripts/toybench_world_gpu.sh
set -uo pipefail
: "${TEACHER:?set TEACHER to a toy teacher folder}"
OUT=${OUT:-runs}
WORK=${WORK:-/tmp/toybench_world}
LIMIT=${LIMIT:-540}     # seconds for the whole piece, the table included
ROW_S=${ROW_S:-330}     # seconds a row needs (stage 1, stage 2, sampling) beside the others
MERGE_S=${MERGE_S:-75}  # seconds kept for writing the table at the end
PARALLEL=${PARALLEL:-6}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run (with --quick)
RESUME=${RESUME:-}
read -r -a ROWS <<< "${ROWS:-rehyat uniform_hybrid local half_blocks rehyat_nonneg_spatial \
  rehyat_ns_tc1_to3 causal_softmax teacher_finetuned rehyat_to0 rehyat_to2 bidirectional linear \
  rehyat_ns_tc1_to3_mass rehyat_ns_tc1_to3_mass2}"
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}; GPUS=$(( GPUS > 0 ? GPUS : 1 ))
THREADS=$(( $(nproc) / PARALLEL )); THREADS=$(( THREADS > 0 ? THREADS : 1 ))
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
WORLD=$(python3 -c "import sys; from rehyat.toy.model import toy_space; print(toy_space(sys.argv[1]).name)" \
  "$TEACHER") || exit 2
RUN=$OUT/toybench_$WORLD
mkdir -p "$RUN"
rm -rf "$WORK" && mkdir -p "$WORK/all"
if [ -n "$RESUME" ]; then tar -xzf "$RESUME" -C "$WORK/all" || exit 2; fi
left() { echo $(( LIMIT - MERGE_S - SECONDS )); }

# The teacher's videos and scores, once (every row's process links them in).
timeout "$(left)" python3 -m rehyat.cli bench toy --device "$DEVICE" --teacher "$TEACHER" \
  --work "$WORK/teacher" --out "$WORK/teacher_out" "$@" --report-only > "$RUN/teacher.log" 2>&1 \
  || { tail -20 "$RUN/teacher.log"; exit 1; }
echo "teacher sampled ($SECONDS s)"

save() {  # a finished row into the state: its result, stage-1 summary, and (rehyat) the stage 1 half_blocks takes
  local row=$1 from=$WORK/part_$1/$1 to=$WORK/all/$1
  mkdir -p "$to" && cp "$from/result.json" "$to/"
  [ -f "$from/stage1.json" ] && cp "$from/stage1.json" "$to/"
  if [ "$row" = rehyat ]; then
    cp -r "$from/stage1" "$to/" && mkdir -p "$to/distill" && cp "$from/distill/ranking.json" "$to/distill/"
  fi
  tar -czf "$RUN/state.tgz.partial" -C "$WORK/all" --exclude=./teacher . && mv "$RUN/state.tgz.partial" "$RUN/state.tgz"
}
rehyat_stage1() {  # where the rehyat row's stage 1 is, if anywhere yet
  for dir in "$WORK/all/rehyat" "$WORK/part_rehyat/rehyat"; do
    [ -f "$dir/stage1.json" ] && [ -f "$dir/distill/ranking.json" ] && { echo "$dir"; return; }
  done
}
launch() {  # launch ROW ARGS...
  local row=$1 part=$WORK/part_$1
  shift
  rm -rf "$part" && mkdir -p "$part" && cp -al "$WORK/teacher/teacher" "$part/"
  if [ "$row" = half_blocks ]; then
    local source; source=$(rehyat_stage1)
    mkdir -p "$part/rehyat/distill" && cp -r "$source/stage1" "$part/rehyat/"
    cp "$source/distill/ranking.json" "$part/rehyat/distill/"
  fi
  CUDA_VISIBLE_DEVICES=$(( launched % GPUS )) timeout "$(left)" python3 -m rehyat.cli bench toy \
    --device "$DEVICE" --teacher "$TEACHER" --work "$part" --out "$WORK/out_$row" "$@" --only "$row" \
    > "$RUN/$row.log" 2>&1 &
  pid_of[$row]=$!; started[$row]=$SECONDS; launched=$(( launched + 1 ))
  echo "$row: started ($SECONDS s)"
}

declare -A pid_of=() started=()
pending=() done_rows=() failed=() launched=0
for row in "${ROWS[@]}"; do
  if [ -f "$WORK/all/$row/result.json" ]; then done_rows+=("$row"); else pending+=("$row"); fi
done
echo "rows done earlier: ${done_rows[*]:-none}"
while [ ${#pending[@]} -gt 0 ] || [ ${#pid_of[@]} -gt 0 ]; do
  for row in "${!pid_of[@]}"; do
    kill -0 "${pid_of[$row]}" 2>/dev/null && continue
    wait "${pid_of[$row]}"; status=$?; unset "pid_of[$row]"
    if [ $status = 0 ] && [ -f "$WORK/part_$row/$row/result.json" ]; then
      save "$row"; done_rows+=("$row"); echo "$row: done ($(( SECONDS - started[$row] )) s)"
    else
      failed+=("$row"); echo "$row: stopped with status $status (see $row.log in logs.tgz)"
    fi
  done
  waiting=()
  for row in "${pending[@]}"; do
    if [ ${#pid_of[@]} -ge "$PARALLEL" ] || [ "$(left)" -lt "$ROW_S" ]; then waiting+=("$row"); continue; fi
    if [ "$row" = half_blocks ] && [ -z "$(rehyat_stage1)" ]; then
      if [[ -z "${pid_of[rehyat]:-}" && " ${pending[*]} " != *" rehyat "* ]]; then
        failed+=("$row"); echo "half_blocks: needs the rehyat row's stage 1, which this run has not"; continue
      fi
      waiting+=("$row"); continue
    fi
    launch "$row" "$@"
  done
  pending=("${waiting[@]}")
  if [ ${#pid_of[@]} = 0 ] && [ ${#pending[@]} -gt 0 ] && [ "$(left)" -lt "$ROW_S" ]; then break; fi
  sleep 5
done
left_rows=("${pending[@]}")
for row in "${failed[@]}"; do [ -f "$WORK/all/$row/result.json" ] || left_rows+=("$row"); done

cp -al "$WORK/teacher/teacher" "$WORK/all/"
status=0
timeout $(( LIMIT - SECONDS > 30 ? LIMIT - SECONDS : 30 )) python3 -m rehyat.cli bench toy --device "$DEVICE" \
  --teacher "$TEACHER" --work "$WORK/all" --out "$RUN" "$@" --report-only > "$RUN/merge.log" 2>&1 \
  || { echo "the table failed (merge.log)"; status=1; }
[ -f "$RUN/state.tgz" ] || tar -czf "$RUN/state.tgz" -C "$WORK/all" --exclude=./teacher .
echo "rows done: ${done_rows[*]:-none}"
echo "rows left: ${left_rows[*]:-none}"
[ ${#left_rows[@]} -gt 0 ] && echo "next piece: RESUME=<$RUN/state.tgz brought back> with the same arguments"
(cd "$RUN" && tar czf logs.tgz ./*.log && rm -f ./*.log) || status=1  # $OUT brings back at most 8 files
echo "piece took $SECONDS s"
exit $status
