"""2-process CPU (gloo) fine-tune with DDP and FSDP through torchrun, against a 1-process run that
splits the same global batch into 2 accumulation steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from finetune_helpers import tiny_config, tiny_dataset, tiny_overrides
from safetensors.torch import load_file

from rehyat.training.finetune import finetune
from rehyat.training.metrics import read_metrics

WORKER = Path(__file__).with_name("distributed_worker.py")


def test_two_ranks_train_on_different_samples_and_match_one_process(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*launch, str(WORKER), *tiny_overrides(run, data, steps=3)],
        capture_output=True,
        text=True,
        timeout=180,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]

    finetune(tiny_config(tmp_path / "single", data, steps=3, grad_accumulation=2))
    single = load_file(tmp_path / "single" / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    for strategy in ("ddp", "fsdp"):
        out = run / strategy
        samples = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
        assert len(samples[0]) == 3 and not set(samples[0]) & set(samples[1])  # disjoint shards
        ranks = [load_file(out / f"rank-{r}.safetensors") for r in range(2)]
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # replicas agree
        final = load_file(out / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(final[k], ranks[0][k]) for k in final)
        # the same global batch and noise as one process with 2 accumulation steps: equal up to rounding
        assert all(torch.allclose(final[k], single[k], rtol=1e-4, atol=1e-6) for k in final)
        losses = [r["loss"] for r in read_metrics(out)]
        reference = [r["loss"] for r in read_metrics(tmp_path / "single")]
        assert torch.allclose(torch.tensor(losses), torch.tensor(reference), rtol=1e-5)
