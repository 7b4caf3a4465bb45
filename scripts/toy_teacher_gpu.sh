#!/usr/bin/env bash
# Train the bundled toy teacher further on one GPU, two ways side by side (training flow shift 1 and 3,
# everything else equal), then ToyBench the bundled teacher and both continuations under several
# sampler settings. Writes the teachers, training logs and eval.jsonl to $OUT (or ./runs)/toy_teacher.
# Needs diffusers: where it is missing, carry wheels in .whl (see /work/.library/device/README.md).
set -euo pipefail
STEPS=${STEPS:-3500}
RUN=${OUT:-runs}/toy_teacher
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
BUNDLED=src/rehyat/toy/assets/teacher
mkdir -p "$RUN"
for SHIFT in 1 3; do
  timeout 460 python3 -m rehyat.cli toy teacher --init "$BUNDLED" --out /tmp/toy_shift$SHIFT \
    --clips 16384 --steps "$STEPS" --batch 64 --lr 2e-4 flow_shift=$SHIFT progress=false \
    checkpoint_every=500 > "$RUN/train_shift$SHIFT.log" 2>&1 &
done
wait || true
for SHIFT in 1 3; do
  if [ -d /tmp/toy_shift$SHIFT/teacher ]; then
    cp -r /tmp/toy_shift$SHIFT/teacher "$RUN/teacher_shift$SHIFT"
    cp /tmp/toy_shift$SHIFT/train/training_metrics.jsonl "$RUN/metrics_shift$SHIFT.jsonl" || true
  else  # cut off: keep the newest checkpoint to resume from
    cp -r /tmp/toy_shift$SHIFT/train/checkpoints "$RUN/checkpoints_shift$SHIFT" || true
  fi
done
for MODEL in "$BUNDLED" "$RUN"/teacher_shift*; do
  for SAMPLE_SHIFT in 1 3; do
    for GUIDANCE in 1 4; do
      python3 -m rehyat.cli toy eval --model "$MODEL" --device cuda --prompts 24 --steps 20 \
        --shift $SAMPLE_SHIFT --guidance $GUIDANCE >> "$RUN/eval.jsonl"
    done
  done
done
python3 - "$RUN/eval.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["model"].split("/")[-1], "shift", r["shift"], "cfg", r["guidance"], "adherence", round(r["adherence"], 1),
          "colour/shape/dir", round(r["colour_accuracy"]), round(r["shape_accuracy"]), round(r["direction_accuracy"]),
          "tc", round(r["temporal_consistency"], 1), "smooth", round(r["motion_smoothness"], 1))
PY
