#!/usr/bin/env bash
# Stage 2 throughput and memory on N GPUs (default 2): FSDP2, bf16 autocast, gradient checkpointing,
# Wan2.1-T2V-1.3B architecture with random weights, 81 frames at 480×832 (latent 16×21×60×104, 32,760
# tokens), UMT5-sized prompt embeddings (512×4096), micro-batch 1 per GPU. Prints the per-step metrics
# (loss, samples/s, peak GiB on rank 0) and writes them to $OUT (or ./runs) as metrics.jsonl.
# Needs diffusers: where it is missing, carry wheels in .whl (see /work/.library/device/README.md).
set -euo pipefail
GPUS=${GPUS:-2}
STEPS=${STEPS:-8}
RUN=${OUT:-runs}/finetune_fsdp
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
DATA=/tmp/rehyat_bench_latents
rm -rf "$DATA" "$RUN"
python3 - "$DATA" "$((GPUS * 2))" <<'PY'
import sys, torch
from rehyat.training.data import write_latent_dataset
gen = torch.Generator().manual_seed(0)
samples = ((torch.randn(16, 21, 60, 104, generator=gen), torch.randn(512, 4096, generator=gen))
           for _ in range(int(sys.argv[2])))
write_latent_dataset(sys.argv[1], samples, shard_size=4)
PY
python3 -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m rehyat.cli finetune --set \
  output_dir="$RUN" data.path="$DATA" model.architecture=wan2.1-t2v-1.3b strategy=fsdp \
  mixed_precision=bf16 model.gradient_checkpointing=true steps="$STEPS" save=false progress=false \
  "$@"
python3 - "$RUN" <<'PY'
import sys
from rehyat.training.metrics import read_metrics
rows = read_metrics(sys.argv[1])
for r in rows:
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "time"})
steady = rows[2:] or rows
print(f"steady samples/s (steps 3+): {sum(r['samples_per_s'] for r in steady) / len(steady):.3f}; "
      f"peak rank-0 GPU memory: {max(r['peak_gib'] for r in rows):.2f} GiB")
PY
