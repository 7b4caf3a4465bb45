"""The toy model family: the pixel-space Wan architecture of the toy teacher, its clip size and sampler
shift, the bundled teacher folder, and loading a toy model (optionally with a ReHyAt checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rehyat.toy.text import ToyTextEncoder
from rehyat.toy.world import ToyPrompt

#: Pixel-space Wan: 3 channels in and out, 2×2 patches, 4 blocks of 4 heads × 32 (RoPE splits 32 into
#: 12 + 10 + 10), text width = the toy text encoder's.
TOY_TEACHER_CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 3,
    "out_channels": 3,
    "text_dim": 64,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
#: Training clips: 16 frames of 24×24 px -> 16 latent frames of 12×12 = 144 tokens (patch 2×2). Smaller
#: frames make ToyBench's shape read-back fragile to soft samples; larger ones slow the CPU demo.
CLIP = {"num_frames": 16, "height": 24, "width": 24}
FLOW_SHIFT = 3.0
BUNDLED = Path(__file__).parent / "assets" / "teacher"
BUNDLED_STUDENT = Path(__file__).parent / "assets" / "student"


def bundled_teacher() -> Path:
    """The folder of the teacher shipped with the package."""
    if not (BUNDLED / "transformer" / "config.json").is_file():
        raise ValueError(f"the bundled toy teacher is missing from {BUNDLED}")
    return BUNDLED


def save_text_encoder(encoder: ToyTextEncoder, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(encoder.config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, folder / "model.safetensors")


def load_text_encoder(teacher: str | Path) -> ToyTextEncoder:
    """The toy text encoder of a teacher folder (``text_encoder/config.json`` + ``model.safetensors``)."""
    folder = Path(teacher) / "text_encoder"
    if not (folder / "config.json").is_file():
        raise ValueError(f"{teacher} has no toy text encoder (text_encoder/config.json)")
    encoder = ToyTextEncoder(**json.loads((folder / "config.json").read_text()))
    encoder.load_state_dict(load_file(folder / "model.safetensors"))
    return encoder.eval()


@torch.no_grad()
def prompt_embeddings(encoder: ToyTextEncoder, prompts: list[ToyPrompt] | list[str]) -> Tensor:
    """[P, L, text_dim] embeddings of toy prompts (objects or their text)."""
    texts = [p.text if isinstance(p, ToyPrompt) else p for p in prompts]
    return encoder(texts)


def write_prompt_file(encoder: ToyTextEncoder, prompts: list[ToyPrompt], path: Path) -> Path:
    """Prompt embeddings as the ``.safetensors`` prompt file ``rehyat distill`` reads (zero negative)."""
    positive = prompt_embeddings(encoder, prompts)
    save_file({"prompt_embeds": positive, "negative_prompt_embeds": torch.zeros_like(positive[:1])}, path)
    (path.with_suffix(".txt")).write_text("".join(p.text + "\n" for p in prompts))
    return path


def init_teacher_folder(folder: Path, seed: int = 0) -> Path:
    """A Wan folder with the toy teacher's random initial weights, its scheduler and text encoder."""
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

    torch.manual_seed(seed)
    WanTransformer3DModel(**TOY_TEACHER_CONFIG).save_pretrained(folder / "transformer")
    UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT
    ).save_pretrained(folder / "scheduler")
    save_text_encoder(
        ToyTextEncoder(text_dim=TOY_TEACHER_CONFIG["text_dim"], seed=seed), folder / "text_encoder"
    )
    return folder


def bundled_student() -> Path:
    """The folder of the ReHyAt student shipped with the package: a ReHyAt checkpoint (φ and the
    fine-tuned base weights) of the bundled teacher, trained with the full recipe (its ``TRAINING.md``)."""
    if not (BUNDLED_STUDENT / "rehyat_config.json").is_file():
        raise ValueError(f"the bundled toy student is missing from {BUNDLED_STUDENT}")
    return BUNDLED_STUDENT


def load_toy_model(
    teacher: str | Path, rehyat: str | Path | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The teacher folder's transformer in eval mode; with ``rehyat`` (a ReHyAt checkpoint folder, or
    ``"bundled"`` for the shipped student) converted and loaded from it."""
    from diffusers import WanTransformer3DModel

    from rehyat.models import load_rehyat

    model = WanTransformer3DModel.from_pretrained(Path(teacher) / "transformer")
    if rehyat is not None:
        model = load_rehyat(model, bundled_student() if str(rehyat) == "bundled" else Path(rehyat))
    return model.to(device).eval()
