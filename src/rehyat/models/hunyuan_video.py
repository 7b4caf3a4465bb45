"""ReHyAt for HunyuanVideo in diffusers (``HunyuanVideoTransformer3DModel``).

What differs from Wan (docs/method.md §6, §6.1):

- joint text–video attention in two kinds of blocks: the dual-stream ``transformer_blocks[i].attn``
  (video projected by ``to_q``/``to_k``/``to_v``, text by ``add_q_proj``/... with their own RMSNorms and
  output projections) and the single-stream ``single_transformer_blocks[j].attn`` (one projection over
  [video ‖ text], no output projection). Block indices run over the dual-stream blocks, then the single
  ones. The text follows the video; padded text keys are masked (the ``encoder_attention_mask``);
- RoPE [T·S, D] from ``transformer.rope`` (``rope_axes_dim``: the leading ``rope_axes_dim[0]`` channels of
  a head rotated by the frame) on the video tokens only; while a converted call runs, a hook on the rope
  returns the tables of each chunk entry's absolute frames;
- the latent [B, C, F, H, W] is patched (``patch_size_t``, ``patch_size``, ``patch_size``); one latent
  frame holds 4 video frames. The image-to-video variant that replaces the first frame's tokens
  (``image_condition_type="token_replace"``) is not converted: every chunk would treat its own first
  frame as the image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from rehyat.models.adapter import ReHyAtRuntime
from rehyat.models.config import ReHyAtConfig
from rehyat.models.joint import JointAdapter, JointPlan, ReHyAtJointAttnProcessor, rotate, unrotate_leading
from rehyat.models.wan import WanAdapter

ROTARY_HOOK = "rehyat_joint_chunk_rotary"


class ReHyAtHunyuanVideoAttnProcessor(ReHyAtJointAttnProcessor):
    """ReHyAt for HunyuanVideo's attention (dual- and single-stream): q, k, v as diffusers'
    ``HunyuanVideoAttnProcessor2_0`` computes them (QK RMSNorm per head, RoPE on the video tokens)."""

    @staticmethod
    def project_joint(attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor, rotary_emb):
        heads = attn.heads
        if attn.add_q_proj is None:  # single-stream: one projection over [video ‖ text]
            video_tokens = hidden_states.shape[1]
            joint = torch.cat([hidden_states, encoder_hidden_states], dim=1)
            q, k, v = (proj(joint).unflatten(2, (heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
            q, k = attn.norm_q(q), attn.norm_k(k)
            (qv, qt), (kv, kt), (vv, vt) = (
                x.split([video_tokens, x.shape[1] - video_tokens], dim=1) for x in (q, k, v)
            )
        else:
            qv, kv, vv = (
                proj(hidden_states).unflatten(2, (heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v)
            )
            qv, kv = attn.norm_q(qv), attn.norm_k(kv)
            qt, kt, vt = (
                proj(encoder_hidden_states).unflatten(2, (heads, -1))
                for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            )
            qt, kt = attn.norm_added_q(qt), attn.norm_added_k(kt)
        if rotary_emb is not None:
            qv, kv = rotate(qv, rotary_emb), rotate(kv, rotary_emb)
        return qv, kv, vv, qt, kt, vt

    @staticmethod
    def text_mask(attention_mask: Tensor | None, video_tokens: int, text_tokens: int) -> Tensor | None:
        """HunyuanVideo's mask [E, 1, 1, N + L] (True = attend): its text columns."""
        if attention_mask is None:
            return None
        return attention_mask.reshape(attention_mask.shape[0], -1)[:, video_tokens:].bool()

    def joint_output(self, attn: nn.Module, video: Tensor, text: Tensor):
        if getattr(attn, "to_out", None) is not None:
            video = attn.to_out[1](attn.to_out[0](video))
        if getattr(attn, "to_add_out", None) is not None:
            text = attn.to_add_out(text)
        return video, text

    @staticmethod
    def rotate(x: Tensor, heads: int, rotary_emb) -> Tensor:
        """Video q or k [B, N, H·D] (after the per-head norm) → [B, N, H, D], rotated where HunyuanVideo does."""
        x = x.unflatten(2, (heads, -1))
        return x if rotary_emb is None else rotate(x, rotary_emb)

    def feature_input(self, config: ReHyAtConfig, x: Tensor, rotary_emb) -> Tensor:
        """``"full"``: x itself; ``"spatial"``: the frame rotation (the leading ``rope_axes_dim[0]``
        channels of a head) undone."""
        return feature_input(config, x, rotary_emb, self.runtime.joint.temporal_channels)


def feature_input(config: ReHyAtConfig, x: Tensor, rotary_emb, temporal_channels: int) -> Tensor:
    """What φ reads of a video q or k [B, N, H, D] of HunyuanVideo whose RoPE rotates the leading
    ``temporal_channels`` channels of a head by the frame (the processor's and the stage-1 students')."""
    if config.feature_rotary == "full" or rotary_emb is None:
        return x
    return unrotate_leading(x, rotary_emb, temporal_channels)


def rotary_at_frames(
    module: nn.Module, start: Tensor, frames: int, rows: int, cols: int
) -> tuple[Tensor, Tensor]:
    """The (cos, sin) tables ``HunyuanVideoRotaryPosEmbed`` makes for post-patch frames
    [start, start + frames) of a rows × cols grid, ``start`` a 0-d tensor: diffusers' computation with
    the frame positions offset (its ``get_1d_rotary_pos_embed`` per axis)."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    axes = [start.float() + torch.arange(frames, device=start.device, dtype=torch.float32)]
    axes += [torch.arange(size, device=start.device, dtype=torch.float32) for size in (rows, cols)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
    freqs = [
        get_1d_rotary_pos_embed(module.rope_dim[i], grid[i].reshape(-1), module.theta, use_real=True)
        for i in range(3)
    ]
    return torch.cat([f[0] for f in freqs], dim=1), torch.cat([f[1] for f in freqs], dim=1)


def _rotary_hook(plan: JointPlan):
    """On ``transformer.rope``: while a converted call runs, the tables of each chunk entry's absolute
    frames ([n·B, Tc·S, D] for n entries, [Tc·S, D] for one), the rows of the whole video's tables."""
    from diffusers.hooks import ModelHook

    class AbsoluteFramesRotaryHook(ModelHook):
        def new_forward(self, module: nn.Module, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
            if plan.starts is None:
                return self.fn_ref.original_forward(hidden_states)
            entries, _, frames, height, width = hidden_states.shape
            chunk = frames // module.patch_size_t
            if len(plan.starts) == 1 and plan.start is not None:  # one chunk, its position a tensor
                rows, cols = height // module.patch_size, width // module.patch_size
                return rotary_at_frames(module, plan.start, chunk, rows, cols)
            total = max(plan.starts) + chunk
            shape = (1, 0, total * module.patch_size_t, height, width)  # the rope reads only the shape
            tables = self.fn_ref.original_forward(hidden_states.new_empty(shape))
            tokens = (height // module.patch_size) * (width // module.patch_size)
            if len(plan.starts) == 1:
                start = plan.starts[0]
                return tuple(t[start * tokens : (start + chunk) * tokens] for t in tables)
            per_entry = entries // len(plan.starts)
            return tuple(
                torch.stack([t[s * tokens : (s + chunk) * tokens] for s in plan.starts]).repeat_interleave(
                    per_entry, dim=0
                )
                for t in tables
            )

    return AbsoluteFramesRotaryHook()


@dataclass(frozen=True)
class HunyuanVideoAdapter(JointAdapter):
    """HunyuanVideo: dual- then single-stream blocks, latent [B, C, F, H, W], tokens [video ‖ text] with the
    padded text masked, RoPE from ``transformer.rope`` at the chunk's absolute frames; timesteps [B]."""

    def check_model(self, transformer: nn.Module) -> None:
        super().check_model(transformer)
        if transformer.config.image_condition_type == "token_replace":
            raise ValueError(
                "HunyuanVideo with image_condition_type='token_replace' modulates the first frame's tokens "
                "apart; ReHyAt converts the text-to-video and latent_concat models"
            )

    def compile_reason(self, transformer: nn.Module) -> str | None:
        """None: a chunk call's RoPE tables come from its position as a tensor (:func:`rotary_at_frames`)."""
        return None

    def install(self, transformer: nn.Module, runtime: ReHyAtRuntime) -> None:
        from diffusers.hooks import HookRegistry

        super().install(transformer, runtime)
        runtime.joint.temporal_channels = transformer.config.rope_axes_dim[0]
        HookRegistry.check_if_exists_or_initialize(transformer.rope).register_hook(
            _rotary_hook(runtime.joint), ROTARY_HOOK
        )

    def blocks(self, transformer: nn.Module) -> list[nn.Module]:
        return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    def attention_path(self, index: int, transformer: nn.Module | None = None) -> str:
        dual = len(transformer.transformer_blocks) if transformer is not None else None
        if dual is None or index < dual:
            return f"transformer_blocks.{index}.attn"
        return f"single_transformer_blocks.{index - dual}.attn"

    def feed_forwards(self, transformer: nn.Module) -> list[nn.Module]:
        return [block.ff for block in transformer.transformer_blocks]

    def patch_size(self, transformer: nn.Module) -> tuple[int, int, int]:
        config = transformer.config
        return config.patch_size_t, config.patch_size, config.patch_size

    # The latent [B, C, F, H, W] is laid out, patched and put together as Wan's.
    grid = WanAdapter.grid
    frame_axis = WanAdapter.frame_axis
    empty_output = WanAdapter.empty_output

    def text_dim(self, transformer: nn.Module) -> int:
        return transformer.config.text_embed_dim

    def normalize_latents(self, vae: nn.Module, latents: Tensor) -> Tensor:
        """z · scaling_factor: HunyuanVideoPipeline divides by the VAE's ``scaling_factor`` before decoding."""
        return latents * vae.config.scaling_factor

    def feature_input(self, transformer: nn.Module) -> Callable[[ReHyAtConfig, Tensor, object], Tensor]:
        return partial(feature_input, temporal_channels=transformer.config.rope_axes_dim[0])

    #: The guidance embedding's input in training (x 1000 as HunyuanVideoPipeline scales it): 1.0, the
    #: conditional velocity that flow matching on data regresses (the pipeline's default 6.0 asks the
    #: guidance-distilled model for a CFG-6 velocity, which no data sample has).
    training_guidance: float = 1.0

    def denoiser_inputs(
        self,
        transformer: nn.Module,
        latents: Tensor,
        timestep: Tensor,
        prompt_embeds: Tensor,
        pooled_prompt_embeds: Tensor | None = None,
        prompt_attention_mask: Tensor | None = None,
    ) -> dict:
        """The call of HunyuanVideoPipeline: the latent [B, C, F, H, W] as it is, the Llama prompt with its
        mask (every token where none is given), the pooled CLIP projection [B, P] (required: it conditions
        every block), the guidance embedding at :attr:`training_guidance`."""
        width = transformer.config.pooled_projection_dim
        if pooled_prompt_embeds is None:
            raise ValueError(
                f"HunyuanVideo's forward needs pooled_prompt_embeds [B, {width}] (its pooled CLIP projection) "
                "beside the prompt embeddings: give them with each sample"
            )
        if pooled_prompt_embeds.shape != (latents.shape[0], width):
            raise ValueError(
                f"pooled_prompt_embeds must be [B, {width}] = [{latents.shape[0]}, {width}], got "
                f"{list(pooled_prompt_embeds.shape)}"
            )
        if prompt_attention_mask is None:
            prompt_attention_mask = prompt_embeds.new_ones(prompt_embeds.shape[:2])
        guidance = torch.full_like(timestep, self.training_guidance * 1000.0, dtype=prompt_embeds.dtype)
        return dict(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=prompt_embeds,
            encoder_attention_mask=prompt_attention_mask,
            pooled_projections=pooled_prompt_embeds,
            guidance=guidance if transformer.config.guidance_embeds else None,
        )

    def pipeline_prompt_arguments(
        self,
        prompt_embeds: Tensor,
        negative_prompt_embeds: Tensor | None,
        prompt_mask: Tensor | None = None,
        negative_prompt_mask: Tensor | None = None,
        pooled_prompt_embeds: Tensor | None = None,
    ) -> dict:
        """HunyuanVideoPipeline's precomputed prompt: the embeddings, their mask (every token where none is
        given) and the pooled CLIP projection it needs beside them. No negative prompt: the pipeline
        samples with its embedded guidance, and its true CFG needs negative pooled projections too."""
        if pooled_prompt_embeds is None:
            raise ValueError(
                "HunyuanVideoPipeline needs pooled_prompt_embeds (its CLIP projection) beside precomputed "
                "prompt_embeds"
            )
        return dict(
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_embeds.new_ones(prompt_embeds.shape[:2])
            if prompt_mask is None
            else prompt_mask,
            pooled_prompt_embeds=pooled_prompt_embeds,
        )


HUNYUAN_VIDEO = HunyuanVideoAdapter(
    name="hunyuan-video",
    class_names=("HunyuanVideoTransformer3DModel",),
    processor=ReHyAtHunyuanVideoAttnProcessor,
    temporal_compression=4,
    blocks_attr="transformer_blocks",
    attention_attr="attn",
    ffn_attr="ff",
    pipeline_class="HunyuanVideoPipeline",
    text_encoder_class="LlamaModel",
    batch_arguments=(
        "hidden_states",
        "timestep",
        "encoder_hidden_states",
        "encoder_attention_mask",
        "pooled_projections",
        "guidance",
    ),
)
