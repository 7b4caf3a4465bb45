#!/usr/bin/env bash
# The recurrent form's whole-model speed on one GPU, within LIMIT seconds in all (default 540): Wan2.1-1.3B
# size with random weights, 480x832, bf16; scripts/profile_recurrent_compile.py's rows (parallel eager and
# compiled; recurrent eager, compiled and CUDA-graphed) at FRAMES latent frames for each CHUNKS_PER_CALL,
# Tc=CHUNK To=OVERLAP. The profile writes its JSON and markdown after every row, so a run cut off at LIMIT
# keeps what it measured. Then, if time is left, `rehyat bench model` with the best chunks per call for
# the memory rows (original vs recurrent peak at 21 and 81 latent frames).
# Writes to $OUT (or ./runs/recurrent_speed): recurrent_speed.log, recurrent_compile.{json,md},
# model.{json,md,png} when the bench ran.
#   FRAMES="21 81" CHUNKS_PER_CALL="1 3" CHUNK=3 OVERLAP=1 LIMIT=540
#   ROWS="parallel_compiled recurrent_graphed": only these rows of the profile (underscores for spaces;
#   default all five), e.g. to reach the graphed row's profile within LIMIT.
#   PROFILER=1: a torch.profiler table of every row at the first frame count (in recurrent_compile.md).
#   TINY=1: a dry run on a CPU (tiny Wan, compiler backend "eager", 6 and 9 latent frames).
# Needs diffusers: where it is missing, carry wheels in .whl (see /work/.library/device/README.md).
set -euo pipefail
START=$(date +%s)
FRAMES=${FRAMES:-21 81}
CHUNKS_PER_CALL=${CHUNKS_PER_CALL:-1 3}
CHUNK=${CHUNK:-3}
OVERLAP=${OVERLAP:-1}
LIMIT=${LIMIT:-540}
TINY=${TINY:-0}
PROFILER=${PROFILER:-0}
RUN=${OUT:-runs/recurrent_speed}
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
mkdir -p "$RUN"
LOG="$RUN/recurrent_speed.log"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
} > "$LOG" 2>&1
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
PROFILE=(--frames $FRAMES --chunks-per-call $CHUNKS_PER_CALL --chunk-frames "$CHUNK" --overlap-frames "$OVERLAP")
if [ "$TINY" = 1 ]; then PROFILE=(--tiny --frames 6 9 --backend eager --reps 2 --chunks-per-call $CHUNKS_PER_CALL); fi
if [ "$PROFILER" = 1 ]; then PROFILE+=(--profile); fi
if [ -n "${ROWS:-}" ]; then PROFILE+=(--rows); for row in $ROWS; do PROFILE+=("${row//_/ }"); done; fi
status=0
timeout "$(left)" python3 scripts/profile_recurrent_compile.py "${PROFILE[@]}" --out "$RUN/recurrent_compile" \
  >> "$LOG" 2>&1 || status=$?
echo "profile: exit $status after $(( $(date +%s) - START )) s (124: cut off at LIMIT)" | tee -a "$LOG"
BEST=$(python3 - "$RUN/recurrent_compile.json" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["results"] if r["row"] == "recurrent eager" and "ms" in r]
longest = max((r["latent_frames"] for r in rows), default=None)
best = min((r for r in rows if r["latent_frames"] == longest), key=lambda r: r["ms"], default=None)
print(best["chunks_per_call"] if best else 1)
PY
)
if [ "$(left)" -gt 60 ]; then
  BENCH=(--set "chunks_per_call=$BEST" "frames=[21, 81]" "rows=[\"original\", \"recurrent\"]" reps=3 skip_parity=true)
  if [ "$TINY" = 1 ]; then BENCH=(--size tiny --device cpu --set "chunks_per_call=$BEST" "frames=[2, 3]" reps=1); fi
  status=0
  timeout "$(left)" python3 -m rehyat.cli bench model "${BENCH[@]}" --out "$RUN" >> "$LOG" 2>&1 || status=$?
  echo "bench model (chunks_per_call=$BEST): exit $status" | tee -a "$LOG"
fi
tail -n 40 "$RUN/recurrent_compile.md"
