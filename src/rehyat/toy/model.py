"""The toy model family: the Wan architecture of the toy teachers, the space their latents live in
(:class:`ToySpace`: pixels of the one-frame world, or the packed world: four frames to a latent frame),
the sampler shift, the bundled teacher folder, and loading a toy model (optionally with a ReHyAt
checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

# The bundled folders' paths live below the toy package (every model argument resolves them); re-exported.
from rehyat.models.folders import BUNDLED_STUDENT as BUNDLED_STUDENT
from rehyat.models.folders import BUNDLED_TEACHER, TOY_STUDENT, TOY_TEACHER
from rehyat.models.folders import bundled_student as bundled_student
from rehyat.models.folders import bundled_teacher as bundled_teacher
from rehyat.toy.latent import ToyLatent, latent_frames, video_frames
from rehyat.toy.text import ToyTextEncoder
from rehyat.toy.world import ONE_FRAME_WORLD, PACKED_WORLD, ToyPrompt, World, render, world_name

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
#: The packed world's teacher: the same Wan blocks on :class:`~rehyat.toy.latent.ToyLatent`'s 24 channels,
#: 2×2 latent patches (a token is 4 video frames × 4×4 px, 96 values), 4 heads × 48 (RoPE 16 + 16 + 16).
#: Wider than the pixel teacher: its tokens carry four times the values.
PACKED_TEACHER_CONFIG = {
    **TOY_TEACHER_CONFIG,
    "in_channels": 24,
    "out_channels": 24,
    "attention_head_dim": 48,
    "ffn_dim": 768,
}
#: Training clips: 16 frames of 24×24 px -> 16 latent frames of 12×12 = 144 tokens (patch 2×2). Smaller
#: frames make ToyBench's shape read-back fragile to soft samples; larger ones slow the CPU demo.
CLIP = {"num_frames": 16, "height": 24, "width": 24}
FLOW_SHIFT = 3.0
#: The file of a teacher folder that names its space (absent: the pixel space of the bundled teacher).
SPACE_FILE = "toy_world.json"
BUNDLED = BUNDLED_TEACHER


@dataclass(frozen=True)
class ToySpace:
    """What a toy model's latents are. ``packed``: the world's clips pass through a
    :class:`~rehyat.toy.latent.ToyLatent` of ``channels`` channels (four video frames to a latent frame);
    otherwise the latent is the clip itself (3 channels, one frame per latent frame). ``clip_frames`` is a
    training clip's length in latent frames; ``height`` × ``width`` the video frame in pixels."""

    name: str
    world: World
    packed: bool
    channels: int
    clip_frames: int
    height: int
    width: int

    @cached_property
    def packer(self) -> ToyLatent:
        """The packer of a packed space (its basis built once, not per clip)."""
        return ToyLatent(self.channels)

    @property
    def teacher_config(self) -> dict:
        return PACKED_TEACHER_CONFIG if self.packed else TOY_TEACHER_CONFIG

    def latent_shape(self, frames: int) -> tuple[int, int, int, int]:
        """[C, T, h, w] of a latent of ``frames`` latent frames."""
        if frames < 1:
            raise ValueError(f"need at least one latent frame, got {frames}")
        scale = 2 if self.packed else 1
        return (self.channels, frames, self.height // scale, self.width // scale)

    def video_frames(self, frames: int) -> int:
        """Video frames of ``frames`` latent frames (21 → 81 packed)."""
        return video_frames(frames) if self.packed else frames

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip of ``frames`` video frames (81 → 21 packed); ValueError if none fits."""
        return latent_frames(frames) if self.packed else frames

    def clip(self, prompt: ToyPrompt, frames: int, seed: int) -> Tensor:
        """The latent [C, T, h, w] of the world's clip of ``frames`` latent frames for ``prompt``."""
        video = render(
            prompt, self.video_frames(frames), self.height, self.width, seed=seed, world=self.world
        )
        return self.packer.encode(video) if self.packed else video

    def decode(self, latents: Tensor) -> Tensor:
        """Videos [B, 3, F, H, W] of latents [B, C, T, h, w] (the latents themselves in pixel space)."""
        return self.packer.decode(latents) if self.packed else latents


#: The bundled teacher's space: one-frame-world clips of 16 frames of 24×24 px, the latent the clip.
PIXEL = ToySpace("one-frame", ONE_FRAME_WORLD, False, 3, CLIP["num_frames"], CLIP["height"], CLIP["width"])
#: The packed world's space: its clips of 81 frames of 32×32 px, packed to 21 latent frames of 24
#: channels × 16×16 (64 tokens a frame with 2×2 patches), as Wan2.1 packs 81 frames into 21.
PACKED = ToySpace("packed", PACKED_WORLD, True, 24, 21, 32, 32)
SPACES = {space.name: space for space in (PIXEL, PACKED)}


def toy_space(teacher: str | Path) -> ToySpace:
    """The space of a teacher folder, from its ``toy_world.json`` (none: the pixel space)."""
    file = Path(teacher) / SPACE_FILE
    if not file.exists():
        return PIXEL
    try:
        name = json.loads(file.read_text()).get("world")
        name = world_name(name) if isinstance(name, str) else name
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{file} is not a JSON object with a 'world' name ({error})") from error
    if name not in SPACES:
        raise ValueError(f"{file} names world {name!r}; expected one of {', '.join(SPACES)}")
    return SPACES[name]


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


def init_teacher_folder(folder: Path, seed: int = 0, space: ToySpace = PIXEL) -> Path:
    """A Wan folder with the toy teacher's random initial weights for ``space``, its scheduler and text
    encoder, and (packed) the ``toy_world.json`` naming the space."""
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

    torch.manual_seed(seed)
    WanTransformer3DModel(**space.teacher_config).save_pretrained(folder / "transformer")
    if space is not PIXEL:
        (folder / SPACE_FILE).write_text(json.dumps({"world": space.name}) + "\n")
    UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT
    ).save_pretrained(folder / "scheduler")
    save_text_encoder(
        ToyTextEncoder(text_dim=TOY_TEACHER_CONFIG["text_dim"], seed=seed), folder / "text_encoder"
    )
    return folder


def is_bundled_teacher(teacher: str | Path) -> bool:
    """Whether ``teacher`` (a folder, or ``toy``) is the toy teacher shipped with the package."""
    return str(teacher) == TOY_TEACHER or Path(teacher).resolve() == BUNDLED_TEACHER.resolve()


def check_student(teacher: str | Path, rehyat: str | Path | None) -> None:
    """ValueError if ``rehyat`` is the shipped student (``"bundled"`` or its folder) and ``teacher`` is
    not the bundled teacher: its checkpoint holds the fine-tuned base weights of that teacher, so
    loading it on another folder would run the bundled model's weights, not the teacher's."""
    if rehyat is None or is_bundled_teacher(teacher):
        return
    if str(rehyat) == TOY_STUDENT or Path(rehyat).resolve() == BUNDLED_STUDENT.resolve():
        raise ValueError(
            f"the bundled student was trained on the bundled teacher, not on {teacher}: pass a ReHyAt "
            "checkpoint of that teacher, or none for the teacher alone"
        )


def load_toy_model(
    teacher: str | Path, rehyat: str | Path | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The teacher folder's transformer in eval mode; with ``rehyat`` (a ReHyAt checkpoint folder, or
    ``"bundled"`` for the shipped student, of the bundled teacher only: :func:`check_student`) converted
    and loaded from it."""
    from rehyat.models import load_rehyat
    from rehyat.models.folders import load_transformer

    check_student(teacher, rehyat)
    model = load_transformer(teacher, "toy teacher folder")  # local only: never a model-hub lookup
    if rehyat is not None:
        model = load_rehyat(model, bundled_student() if str(rehyat) == "bundled" else Path(rehyat))
    return model.to(device).eval()
