#!/usr/bin/env bash
# Train a toy teacher on every GPU of this machine (DDP through torchrun, BATCH clips per GPU and step)
# for STEPS steps or until LIMIT seconds have passed; the teacher is the newest checkpoint's EMA (a run
# cut off loses at most CKPT_EVERY steps, default 100: about 20 s of the packed world's on one H100).
# Then ToyBench it (and INIT, if any, unless EVAL_INIT=0; PROMPTS=0: no evaluation) on PROMPTS prompts, with
# direction accuracy per speed.
#   WORLD=one-frame (default): from the weights in INIT (default: the bundled teacher), one video frame per latent frame.
#   WORLD=packed INIT=none: from random weights, on the packed world (4 video frames to a latent frame).
#   RESUME=DIR: a folder holding a checkpoint (step-N/ and latest, as this script returns them) to go
#   on from, with the same settings (same STEPS: the run's config must not change); or RESUME=FILE.tar.xz,
#   that folder's contents packed (tar -cJf FILE.tar.xz -C DIR .: 40 of its 44 MB, what keeps the working
#   tree, the wheels and the packed world's checkpoint under a device call's 64 MiB).
#   Extra arguments are more `--set` overrides of the training config, e.g. the last piece's cooldown:
#   STEPS=<where to end> ... bash scripts/toy_teacher_gpu.sh optim.decay_start=<the step to start it>
#   (the learning rate then falls linearly toward 0, reached at STEPS; both may change on resume);
#   profile.start=N profile.steps=5 appends the profiler's table of those steps' ops to train.log.
#   COMPILE=0: eager blocks (default 1: torch.compile'd, model.compile=true; a run that fails compiled
#   goes on eagerly from its last checkpoint, within the same LIMIT).
# WORK is wiped first; the dataset is rendered again (deterministic from the seed).
# Writes to $OUT (or ./runs)/toy_teacher: train.log (the GPU's clocks at its end), training_config.json,
# training_metrics.jsonl, eval.jsonl, teacher.tgz (the teacher folder) and the newest checkpoint as
# ckpt.tar.part-* (15 MB pieces: cat them | tar -x) — 8 files, what a device call brings back at most.
# Needs diffusers: where it is missing, carry wheels in .whl (see /work/.library/device/README.md).
set -euo pipefail
WORLD=${WORLD:-one-frame}
STEPS=${STEPS:-10000}
LIMIT=${LIMIT:-420}
BATCH=${BATCH:-64}
LR=${LR:-3e-4}
CLIPS=${CLIPS:-32768}
PROMPTS=${PROMPTS:-256}
EVAL_INIT=${EVAL_INIT:-1}
INIT=${INIT:-src/rehyat/toy/assets/teacher}
RESUME=${RESUME:-}
CKPT_EVERY=${CKPT_EVERY:-100}
EXTRA=("$@")
COMPILE=${COMPILE:-1}  # torch.compile the blocks (model.compile); a failed compiled run goes on eagerly
RUN=${OUT:-runs}/toy_teacher
WORK=${WORK:-/tmp/toy_teacher}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of the script on one CPU process
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
GPUS=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")
rm -rf "$WORK"
mkdir -p "$RUN" "$WORK/train/checkpoints"
if [ -f "$RESUME" ]; then tar -xJf "$RESUME" -C "$WORK/train/checkpoints"
elif [ -n "$RESUME" ]; then cp -r "$RESUME"/. "$WORK/train/checkpoints/"; fi
INIT_ARGS=(--world "$WORLD")
if [ "$INIT" != none ]; then INIT_ARGS+=(--init "$INIT"); fi
START=$(date +%s)
status=0
train() {  # $1: model.compile; the time left of LIMIT (none left: 124, as if cut off)
  local left=$(( LIMIT - ($(date +%s) - START) ))
  if [ "$left" -le 0 ]; then return 124; fi
  timeout "$left" python3 -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m rehyat.cli \
    toy teacher "${INIT_ARGS[@]}" --out "$WORK" --clips "$CLIPS" --steps "$STEPS" --batch "$BATCH" \
    --lr "$LR" --set progress=false checkpoint_every="$CKPT_EVERY" model.compile="$1" ${EXTRA[@]+"${EXTRA[@]}"} >> "$RUN/train.log" 2>&1
}
: > "$RUN/train.log"
# The GPU's clocks, power, temperature and utilisation every 20 s while it trains (appended to train.log):
# the clip rate differs between lent machines, and this tells throttling (low clocks) from a starved GPU.
SMI_PID=
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,name,utilization.gpu,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv -l 20 > "$WORK/gpu.csv" 2>&1 & SMI_PID=$!
fi
if [ "$COMPILE" = 1 ]; then train true || status=$?; else train false || status=$?; fi
if [ "$COMPILE" = 1 ] && [ "$status" -ne 0 ] && [ "$status" -ne 124 ]; then
  # A compile failure must not cost the call: go on eagerly from the last checkpoint, if any.
  tail -n 30 "$RUN/train.log"
  echo "compiled training failed (exit $status): continuing eagerly" | tee -a "$RUN/train.log"
  status=0
  train false || status=$?
fi
if [ -n "$SMI_PID" ]; then
  kill "$SMI_PID" 2> /dev/null || true
  { echo "GPU while training (nvidia-smi every 20 s):"; cat "$WORK/gpu.csv"; } >> "$RUN/train.log"
fi
for table in "$WORK"/train/profile/*.txt; do  # with the extra argument profile.start=N (the trainer's profiler)
  if [ -f "$table" ]; then { echo "profile $(basename "$table"):"; cat "$table"; } >> "$RUN/train.log"; fi
done
echo "training: exit $status after $(( $(date +%s) - START )) s on $GPUS GPUs (124: cut off at LIMIT)"
if [ "$status" -ne 0 ] && [ "$status" -ne 124 ]; then tail -n 30 "$RUN/train.log"; exit "$status"; fi
python3 -m rehyat.cli toy teacher --out "$WORK" --assemble-only
cp "$WORK/train/config.json" "$RUN/training_config.json"
cp "$WORK/train/metrics.jsonl" "$RUN/training_metrics.jsonl"
tail -n 1 "$RUN/training_metrics.jsonl"
LATEST=$(cat "$WORK/train/checkpoints/latest")
tar -cf - -C "$WORK/train/checkpoints" latest "$LATEST" | split -b 15M - "$RUN/ckpt.tar.part-"
tar -czf "$RUN/teacher.tgz" -C "$WORK" teacher
MODELS=("$WORK/teacher")
if [ "$INIT" != none ] && [ "$EVAL_INIT" = 1 ]; then MODELS+=("$INIT"); fi
if [ "$PROMPTS" = 0 ]; then MODELS=(); fi
: > "$RUN/eval.jsonl"
for model in ${MODELS[@]+"${MODELS[@]}"}; do for guidance in 1 4; do
  python3 -m rehyat.cli toy eval --model "$model" --prompts "$PROMPTS" --guidance "$guidance" \
    --device "$DEVICE" --batch 128 >> "$RUN/eval.jsonl"
done; done
python3 - "$RUN/eval.jsonl" <<'PY'
import json, sys
keys = ("adherence", "shape_accuracy", "direction_accuracy", "direction_slow", "direction_fast",
        "speed_accuracy", "temporal_consistency", "size_drift", "motion_smoothness")
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["model"], "cfg", r["guidance"], {k: round(r[k], 3 if k == "size_drift" else 1) for k in keys if k in r})
PY
