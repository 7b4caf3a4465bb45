#!/usr/bin/env bash
# rehyat bench model --family F for the non-Wan families on one GPU, within LIMIT seconds in all (default
# 530: under 9 minutes, the wheels' install included): one whole DiT forward at the family's published
# size with random weights, original vs converted parallel vs recurrent, and the parity rows (recurrent vs
# parallel, one chunk vs original). Families in order, each cut off at its own share of what is left:
#   ltx-video      LTX-Video 2B at 512x704, 21 41 81 latent frames (Triton and PyTorch backends)
#   hunyuan-video  HunyuanVideo 13B at 544x960 (its 540p; 720x1280 does not fit the time), 7 13 frames,
#                  one timed call per row (its forwards take seconds)
#   cogvideox      CogVideoX-5B at 480x720, 7 13 frames (13 = the pipeline's 49 video frames), if time is left
# The joint text-video families (HunyuanVideo, CogVideoX) step on the Triton kernels (the text as cached keys).
# A family cut off keeps what it measured: the results JSON is saved after each measurement and rendered.
# Writes to $OUT (or ./runs/bench_families): bench_families.log (versions, GPU, each family's exit), and per
# family model_<family>.md and model_<family>.tgz (its .json/.md/.png and the run's log; tar -xzf it
# into bench/results) -- 7 files at most.
#   FAMILIES="ltx-video hunyuan-video cogvideox" (default), LIMIT=530; one family alone gets all of LIMIT
#   SIZE=tiny DEVICE=cpu: a dry run of the whole script on a CPU (tiny configs, 2 and 3 latent frames).
# Needs diffusers: where it is missing, carry wheels in .whl (see /work/.library/device/README.md).
set -euo pipefail
START=$(date +%s)
FAMILIES=${FAMILIES:-ltx-video hunyuan-video cogvideox}
LIMIT=${LIMIT:-530}
SIZE=${SIZE:-published}
DEVICE=${DEVICE:-cuda}
RUN=${OUT:-runs/bench_families}
WORK=${WORK:-/tmp/bench_families}
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
rm -rf "$WORK"
mkdir -p "$RUN" "$WORK"
LOG=$RUN/bench_families.log
{
  echo "bench_families_gpu.sh: SIZE=$SIZE DEVICE=$DEVICE LIMIT=$LIMIT FAMILIES=$FAMILIES"
  git rev-parse HEAD 2>/dev/null || true
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
  if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi
} > "$LOG" 2>&1

# Each family's arguments and its share of the time (seconds) at most.
args_for() {
  case $SIZE:$1 in
    tiny:hunyuan-video) echo "--frames 2 3 --set height=128 width=64 reps=1" ;;  # the same settings, tiny
    tiny:*) echo "--frames 2 3" ;;
    *:ltx-video) echo "--frames 21 41 81" ;;
    *:hunyuan-video) echo "--frames 7 13 --set height=544 width=960 reps=1" ;;
    *:cogvideox) echo "--frames 7 13" ;;
    *) echo "" ;;
  esac
}
share_for() {
  case $1 in
    ltx-video) echo 170 ;;
    hunyuan-video) echo 270 ;;
    *) echo 150 ;;
  esac
}

for family in $FAMILIES; do
  stem=model_${family//-/_}
  out=$WORK/$family
  mkdir -p "$out"
  left=$(( LIMIT - ($(date +%s) - START) - 15 ))  # 15 s kept for rendering and packing
  share=$(share_for "$family")
  if [ "$(wc -w <<< "$FAMILIES")" -eq 1 ]; then share=$left; fi  # one family: all the time there is
  budget=$(( left < share ? left : share ))
  if [ "$budget" -lt 45 ]; then
    echo "$family: skipped, ${left} s left" | tee -a "$LOG"
    continue
  fi
  status=0
  # shellcheck disable=SC2046  # the family's arguments split into words on purpose
  timeout "$budget" python3 -m rehyat.cli bench model --family "$family" --size "$SIZE" --device "$DEVICE" \
    --quick --out "$out" $(args_for "$family") > "$out/$family.log" 2>&1 || status=$?
  echo "$family: exit $status after $(( $(date +%s) - START )) s in all (124: cut off at ${budget} s)" | tee -a "$LOG"
  if [ "$status" -ne 0 ]; then
    tail -n 20 "$out/$family.log" | tee -a "$LOG"
    if [ -f "$out/$stem.json" ]; then  # render what was measured before the cut
      python3 -m rehyat.cli bench model --family "$family" --render-only --out "$out" >> "$LOG" 2>&1 || true
    fi
  fi
  if [ -f "$out/$stem.md" ]; then cp "$out/$stem.md" "$RUN/$stem.md"; fi
  tar -czf "$RUN/$stem.tgz" -C "$out" .
done
echo "done after $(( $(date +%s) - START )) s" | tee -a "$LOG"
ls -l "$RUN"
