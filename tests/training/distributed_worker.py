"""One rank of the 2-process CPU test (launched by torchrun): fine-tune with DDP, then with FSDP, and
write what this rank trained on and its full weights to ``<output_dir>/rank-<r>.*``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from rehyat.settings import load_config
from rehyat.training import distributed
from rehyat.training.finetune import FinetuneConfig, finetune

if __name__ == "__main__":
    for strategy in ("ddp", "fsdp"):
        cfg = load_config(FinetuneConfig, None, [*sys.argv[1:], f"strategy={strategy}"])
        cfg.output_dir = str(Path(cfg.output_dir) / strategy)
        result = finetune(cfg)
        state = distributed.unwrap(result.model).state_dict()
        full = {
            k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu() for k, v in state.items()
        }
        rank = distributed.init_distributed().rank
        save_file(full, result.output_dir / f"rank-{rank}.safetensors")
        (result.output_dir / f"rank-{rank}.json").write_text(json.dumps(result.samples_seen))
    distributed.shutdown()
