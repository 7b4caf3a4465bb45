"""ReHyAt for CogVideoX in diffusers (``CogVideoXTransformer3DModel``: CogVideoX 1.0 2B/5B, 1.5).

What differs from Wan (docs/method.md §6, §6.1):

- joint text–video attention in ``transformer_blocks[i].attn1``: the text tokens come first, one
  projection over [text ‖ video], LayerNorm QK norm per head, RoPE on the video tokens only
  (:mod:`rehyat.models.joint` makes the text keys global and gives each chunk its own text copy);
- the latent is [B, F, C, H, W] (frames on axis 1), patched 2×2 and, in CogVideoX 1.5, 2 latent frames per
  token (``patch_size_t`` = 2); one latent frame holds 4 video frames;
- positions: 5B and 1.5 take RoPE tables from the pipeline (``image_rotary_emb`` [T·S, D], the leading
  D/4 channels of a head rotated by the frame); a chunk call gets the tables' rows of its tokens (absolute
  frames). 2B adds 3D sin-cos position embeddings in its patch embedding instead; while a converted call
  runs, a hook on ``patch_embed`` adds the rows of the whole video's embedding at each chunk's frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rehyat.models.adapter import Grid, ReHyAtRuntime, no_frames_error
from rehyat.models.config import ReHyAtConfig
from rehyat.models.joint import JointAdapter, JointPlan, ReHyAtJointAttnProcessor, rotate, unrotate_leading

POSITIONS_HOOK = "rehyat_joint_chunk_positions"


def temporal_channels(head_dim: int) -> int:
    """The leading channels of a head that CogVideoX's 3D RoPE rotates by the frame (``embed_dim // 4``)."""
    return head_dim // 4


class ReHyAtCogVideoXAttnProcessor(ReHyAtJointAttnProcessor):
    """ReHyAt for CogVideoX's ``attn1``: q, k, v as diffusers' ``CogVideoXAttnProcessor2_0`` computes them
    (one projection over [text ‖ video], QK LayerNorm per head, RoPE on the video tokens)."""

    @staticmethod
    def project_joint(attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor, rotary_emb):
        text_tokens = encoder_hidden_states.shape[1]
        joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(joint).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(joint), attn.to_k(joint), attn.to_v(joint)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        (qt, qv), (kt, kv), (vt, vv) = (
            x.split([text_tokens, x.shape[1] - text_tokens], dim=1) for x in (q, k, v)
        )
        if rotary_emb is not None:
            qv, kv = rotate(qv, rotary_emb), rotate(kv, rotary_emb)
        return qv, kv, vv, qt, kt, vt

    @staticmethod
    def rotate(x: Tensor, heads: int, rotary_emb) -> Tensor:
        """Video q or k [B, N, H·D] (after the per-head norm) → [B, N, H, D], rotated where CogVideoX does."""
        x = x.unflatten(2, (heads, -1))
        return x if rotary_emb is None else rotate(x, rotary_emb)

    @staticmethod
    def feature_input(config: ReHyAtConfig, x: Tensor, rotary_emb) -> Tensor:
        """``"full"`` or no RoPE (2B): x itself; ``"spatial"``: the frame rotation of x undone."""
        if config.feature_rotary == "full" or rotary_emb is None:
            return x
        return unrotate_leading(x, rotary_emb, temporal_channels(x.shape[-1]))

    def joint_output(self, attn: nn.Module, video: Tensor, text: Tensor):
        project = lambda x: attn.to_out[1](attn.to_out[0](x))  # noqa: E731 (token-wise, as on [text ‖ video])
        return project(video), project(text)


def cogvideox_rotary(transformer: nn.Module, frames: int, height: int, width: int, device=None):
    """The RoPE tables ``CogVideoXPipeline`` passes for a latent of ``frames`` latent frames and
    height × width latent pixels ([T·S, D] cos, sin), or None for a model without RoPE (2B)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    config = transformer.config
    if not config.use_rotary_positional_embeddings:
        return None
    p, p_t = config.patch_size, config.patch_size_t
    grid = (height // p, width // p)
    base = (config.sample_height // p, config.sample_width // p)
    if p_t is None:
        crops = get_resize_crop_region_for_grid(grid, base[1], base[0])
        return get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim,
            crops_coords=crops,
            grid_size=grid,
            temporal_size=frames,
            device=device,
        )
    return get_3d_rotary_pos_embed(
        embed_dim=config.attention_head_dim,
        crops_coords=None,
        grid_size=grid,
        temporal_size=(frames + p_t - 1) // p_t,
        grid_type="slice",
        max_size=base,
        device=device,
    )


def _positions_hook(plan: JointPlan):
    """On ``patch_embed`` of a CogVideoX with position embeddings (2B): while a converted call runs, the
    embedding of each chunk entry's tokens at its absolute frames (the rows of the whole video's)."""
    from diffusers.hooks import ModelHook

    class AbsolutePositionsHook(ModelHook):
        def new_forward(self, module: nn.Module, text_embeds: Tensor, image_embeds: Tensor) -> Tensor:
            if plan.starts is None:
                return self.fn_ref.original_forward(text_embeds, image_embeds)
            # diffusers' patch embedding without its positions (CogVideoX 1.0: a 2D convolution per frame).
            text = module.text_proj(text_embeds)
            batch, frames, channels, height, width = image_embeds.shape
            image = module.proj(image_embeds.reshape(-1, channels, height, width))
            image = image.view(batch, frames, *image.shape[1:]).flatten(3).transpose(2, 3).flatten(1, 2)
            embeds = torch.cat([text, image], dim=1).contiguous()
            # The whole video's embedding, chosen as diffusers chooses it for the whole call.
            whole_frames = (plan.frames - 1) * module.temporal_compression_ratio + 1
            if module.use_learned_positional_embeddings and (
                module.sample_width != width or module.sample_height != height
            ):
                return self.fn_ref.original_forward(text_embeds, image_embeds)  # diffusers' own error
            if (module.sample_height, module.sample_width, module.sample_frames) != (
                height,
                width,
                whole_frames,
            ):
                whole = module._get_positional_embeddings(height, width, whole_frames, device=embeds.device)
            else:
                whole = module.pos_embedding
            text_rows, tokens = (
                module.max_text_seq_length,
                (height // module.patch_size) * (width // module.patch_size),
            )
            entries = [
                torch.cat(
                    [
                        whole[0, :text_rows],
                        whole[0, text_rows + s * tokens : text_rows + (s + frames) * tokens],
                    ]
                )
                for s in plan.starts
            ]
            positions = torch.stack(entries).repeat_interleave(batch // len(plan.starts), dim=0)
            return embeds + positions.to(dtype=embeds.dtype)

    return AbsolutePositionsHook()


@dataclass(frozen=True)
class CogVideoXAdapter(JointAdapter):
    """CogVideoX: latent [B, F, C, H, W], tokens [text ‖ video], RoPE tables (or 2B's position embeddings)
    at the chunk's absolute frames; timesteps [B]."""

    def check_model(self, transformer: nn.Module) -> None:
        super().check_model(transformer)
        config = transformer.config
        if not config.use_rotary_positional_embeddings and config.patch_size_t is not None:
            raise ValueError("CogVideoX with position embeddings and a temporal patch is not converted")

    def compile_reason(self, transformer: nn.Module) -> str | None:
        """5B and 1.5 take their RoPE tables as inputs, cut per chunk outside the compiled forward (one
        graph per chunk shape); 2B adds the whole video's position embeddings at each chunk's frames."""
        if transformer.config.use_rotary_positional_embeddings:
            return None
        return "the 2B layout adds the whole video's position embeddings at each chunk's frames"

    def install(self, transformer: nn.Module, runtime: ReHyAtRuntime) -> None:
        super().install(transformer, runtime)
        embed = transformer.patch_embed
        if embed.use_positional_embeddings or embed.use_learned_positional_embeddings:
            from diffusers.hooks import HookRegistry

            HookRegistry.check_if_exists_or_initialize(embed).register_hook(
                _positions_hook(runtime.joint), POSITIONS_HOOK
            )

    def patch_size(self, transformer: nn.Module) -> tuple[int, int, int]:
        config = transformer.config
        return config.patch_size_t or 1, config.patch_size, config.patch_size

    def grid(self, transformer: nn.Module, call: dict) -> Grid:
        hidden_states = call.get("hidden_states")
        if not isinstance(hidden_states, Tensor) or hidden_states.dim() != 5:
            raise ValueError("ReHyAt expects CogVideoX's hidden_states [B, F, C, H, W] as the first input")
        p_t, p, _ = self.patch_size(transformer)
        _, frames, _, height, width = hidden_states.shape
        if frames // p_t == 0:
            raise no_frames_error(frames, p_t)
        if frames % p_t:
            raise ValueError(
                f"CogVideoX 1.5 patches {p_t} latent frames per token; got {frames} latent frames"
            )
        return frames // p_t, height // p, width // p

    def frame_axis(self, transformer: nn.Module, grid: Grid) -> tuple[int, int]:
        return 1, self.patch_size(transformer)[0]

    def empty_output(self, transformer: nn.Module, call: dict) -> Tensor:
        hidden_states = call["hidden_states"]
        _, frames, _, height, width = hidden_states.shape
        channels = transformer.proj_out.out_features // math.prod(self.patch_size(transformer))
        return hidden_states.new_empty(0, frames, channels, height, width)

    def text_dim(self, transformer: nn.Module) -> int:
        return transformer.config.text_embed_dim

    def normalize_latents(self, vae: nn.Module, latents: Tensor) -> Tensor:
        """z · scaling_factor, as CogVideoXVideoToVideoPipeline scales encoded videos (CogVideoXPipeline
        divides by it before decoding); the latent stays [B, C, F, H, W], :meth:`denoiser_inputs` puts
        the frames first."""
        return latents * vae.config.scaling_factor

    def denoiser_inputs(
        self, transformer: nn.Module, latents: Tensor, timestep: Tensor, prompt_embeds: Tensor
    ) -> dict:
        """The latent as CogVideoXPipeline passes it ([B, F, C, H, W]) with its RoPE tables."""
        _, _, frames, height, width = latents.shape
        return dict(
            hidden_states=latents.transpose(1, 2),
            encoder_hidden_states=prompt_embeds,
            timestep=timestep,
            image_rotary_emb=cogvideox_rotary(transformer, frames, height, width, device=latents.device),
        )

    def denoiser_output(self, transformer: nn.Module, output: Tensor, latents: Tensor) -> Tensor:
        return output.transpose(1, 2)

    def chunk_call(self, transformer: nn.Module, call: dict, start: int, stop: int, grid: Grid) -> dict:
        chunk = super().chunk_call(transformer, call, start, stop, grid)
        rotary = call.get("image_rotary_emb")
        if rotary is not None:
            tokens = grid[1] * grid[2]
            chunk["image_rotary_emb"] = tuple(t[start * tokens : stop * tokens] for t in rotary)
        return chunk

    def fold_argument(self, name: str, values: list, batch: int):
        if name == "image_rotary_emb" and values[0] is not None:  # per entry: [n·B, Tc·S, D]
            return tuple(
                torch.stack(tables).repeat_interleave(batch, dim=0) for tables in zip(*values, strict=True)
            )
        return super().fold_argument(name, values, batch)


COGVIDEOX = CogVideoXAdapter(
    name="cogvideox",
    class_names=("CogVideoXTransformer3DModel",),
    processor=ReHyAtCogVideoXAttnProcessor,
    temporal_compression=4,
    blocks_attr="transformer_blocks",
    ffn_attr="ff",
    pipeline_class="CogVideoXPipeline",
    text_encoder_class="T5EncoderModel",
    batch_arguments=("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs"),
)
