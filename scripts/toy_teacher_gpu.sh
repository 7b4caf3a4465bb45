#!/usr/bin/env bash
# Train the toy teacher on every GPU of this machine (DDP through torchrun, BATCH clips per GPU and step)
# on the current toy world, from the weights in INIT (default: the bundled teacher), for STEPS steps or
# until LIMIT seconds have passed; the teacher is the newest checkpoint's EMA (a run cut off loses at
# most 250 steps). WORK is wiped first, so no state of an earlier run is resumed. Then
# ToyBench the new and the INIT teacher on PROMPTS prompts, with direction accuracy per speed.
# Writes to $OUT (or ./runs)/toy_teacher: teacher.tgz, train.log, training_config.json,
# training_metrics.jsonl and eval.jsonl.
# Needs diffusers: where it is missing, carry wheels in .whl (see /work/.library/device/README.md).
set -euo pipefail
STEPS=${STEPS:-10000}
LIMIT=${LIMIT:-420}
BATCH=${BATCH:-64}
LR=${LR:-3e-4}
CLIPS=${CLIPS:-32768}
PROMPTS=${PROMPTS:-256}
INIT=${INIT:-src/rehyat/toy/assets/teacher}
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
mkdir -p "$RUN"
START=$(date +%s)
status=0
timeout "$LIMIT" python3 -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m rehyat.cli \
  toy teacher --init "$INIT" --out "$WORK" --clips "$CLIPS" --steps "$STEPS" --batch "$BATCH" --lr "$LR" \
  --set progress=false checkpoint_every=250 "$@" > "$RUN/train.log" 2>&1 || status=$?
echo "training: exit $status after $(( $(date +%s) - START )) s on $GPUS GPUs (124: cut off at LIMIT)"
if [ "$status" -ne 0 ] && [ "$status" -ne 124 ]; then tail -n 30 "$RUN/train.log"; exit "$status"; fi
python3 -m rehyat.cli toy teacher --out "$WORK" --assemble-only
cp "$WORK/train/config.json" "$RUN/training_config.json"
cp "$WORK/train/metrics.jsonl" "$RUN/training_metrics.jsonl"
tail -n 1 "$RUN/training_metrics.jsonl"
tar -czf "$RUN/teacher.tgz" -C "$WORK" teacher
python3 - "$WORK/teacher" "$INIT" "$PROMPTS" "$DEVICE" > "$RUN/eval.jsonl" <<'PY'
import collections, json, sys, torch
from rehyat.toy.evaluate import load_toy_model, sample_videos, toy_prompts
from rehyat.toy.teacher import load_text_encoder, prompt_embeddings
from rehyat.toy.toybench import evaluate_videos
prompts = toy_prompts(int(sys.argv[3]), 3)
for model_dir in sys.argv[1:3]:
    model = load_toy_model(model_dir, None, torch.device(sys.argv[4]))
    embeds = prompt_embeddings(load_text_encoder(model_dir), prompts)
    for guidance in (1.0, 4.0):
        videos = sample_videos(model, embeds, frames=16, steps=20, guidance_scale=guidance, first_seed=1000,
                               recurrent=False, batch_size=128)
        result = evaluate_videos(videos, prompts)
        hits = collections.defaultdict(list)
        for prompt, clip in zip(prompts, result.pop("per_clip")):
            hits[f"direction_{prompt.speed}"].append(clip["hits"]["direction"])
            hits[f"shape_{prompt.shape}"].append(clip["hits"]["shape"])
        result.update({k: 100 * sum(v) / len(v) for k, v in hits.items()})
        print(json.dumps({"model": model_dir, "guidance": guidance, **result}), flush=True)
PY
python3 - "$RUN/eval.jsonl" <<'PY'
import json, sys
keys = ("adherence", "shape_accuracy", "direction_accuracy", "direction_slow", "direction_fast",
        "speed_accuracy", "temporal_consistency", "size_drift", "motion_smoothness")
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["model"], "cfg", r["guidance"], {k: round(r[k], 3 if k == "size_drift" else 1) for k in keys})
PY
