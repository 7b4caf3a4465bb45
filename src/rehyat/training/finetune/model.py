"""Building the stage-2 models: the base transformer (a folder of any convertible family, or a named
architecture with random weights), the converted student, the frozen teacher for ``teacher_weight``, the
noise schedule of a family that does not sample by flow matching (CogVideoX), and the final weights saved
through a fresh CPU model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rehyat.models import ReHyAtConfig, convert, family_of, load_rehyat, rehyat_runtime, save_rehyat
from rehyat.models.architectures import ARCHITECTURES as _ARCHITECTURES
from rehyat.models.checkpoint import read_json_object
from rehyat.training import distributed
from rehyat.training.data import LatentDataset
from rehyat.training.finetune.run_config import FinetuneConfig, ModelSection

ARCHITECTURES = tuple(_ARCHITECTURES)


def load_base_transformer(section: ModelSection) -> nn.Module:
    """The base transformer in fp32: from a local folder (any convertible family, by its config's
    class), or random for ``architecture``."""
    from rehyat.models.architectures import architecture
    from rehyat.models.folders import load_transformer

    if (section.path is None) == (section.architecture is None):
        raise ValueError("set exactly one of model.path (a local Wan folder) and model.architecture")
    if section.architecture is not None:
        if section.architecture not in ARCHITECTURES:
            raise ValueError(
                f"model.architecture must be one of {ARCHITECTURES}, got {section.architecture!r}"
            )
        return architecture(section.architecture).build().train()
    return load_transformer(section.path, torch_dtype=torch.float32)


def build_model(section: ModelSection, seed: int) -> nn.Module:
    """Base transformer converted to ReHyAt, from a ReHyAt checkpoint or freshly with ``section.rehyat``
    (or left as it is with ``convert=False``)."""
    from rehyat.models.folders import rehyat_folder

    torch.manual_seed(seed)  # random architectures and fresh φ are identical on every rank
    model = load_base_transformer(section)
    if not section.convert:
        if section.rehyat is not None or section.rehyat_checkpoint is not None:
            raise ValueError("model.convert=false trains the plain model: leave model.rehyat* unset")
        return model
    if section.rehyat_checkpoint is not None:
        if section.rehyat is not None:
            raise ValueError("set model.rehyat_checkpoint or model.rehyat, not both")
        return load_rehyat(model, rehyat_folder(section.rehyat_checkpoint))
    return convert(model, section.rehyat or ReHyAtConfig())


def compile_blocks(model: nn.Module) -> None:
    """``torch.compile`` the transformer blocks in place (their state-dict names stay): diffusers'
    ``compile_repeated_blocks`` where the class lists its ``_repeated_blocks``, else each block of the
    model's family (CogVideoX lists none)."""
    if getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks()
        return
    for block in family_of(model).blocks(model):
        block.compile()


def build_teacher(cfg: FinetuneConfig, device: torch.device) -> nn.Module:
    """The original, unconverted model for ``teacher_weight``, frozen. It stays in fp32 (autocast runs
    it in bf16 where the student runs in bf16): casting it would also cast the modules diffusers keeps
    in fp32 (RoPE, time embedding, norms), and the teacher would no longer be the student's start."""
    torch.manual_seed(cfg.seed)  # a random architecture gets the same weights as the student's base
    return load_base_transformer(cfg.model).requires_grad_(False).eval().to(device)


def check_data_fits(dataset: LatentDataset, model: nn.Module) -> None:
    """A ValueError unless the dataset's latent channels and prompt width are what ``model`` takes, and
    its conditioning tensors are the other inputs its family's forward takes (HunyuanVideo's pooled CLIP
    projections; none for the other families): the first sample's forward arguments are built once."""
    family = family_of(model)
    takes = family.latent_channels(model), family.text_dim(model)
    channels, text_dim = dataset.latent_shape[0], dataset.prompt_shape[1]
    if (channels, text_dim) != takes:
        raise ValueError(
            f"dataset {dataset.path} has {channels}-channel latents and {text_dim}-dim prompt embeddings; "
            f"the model takes {takes[0]} and {takes[1]}"
        )
    latents, prompt_embeds = dataset.batch([0])
    conditioning = dataset.conditioning([0])
    try:
        family.denoiser_inputs(model, latents, torch.zeros(1), prompt_embeds, **conditioning)
    except TypeError as error:
        raise ValueError(
            f"dataset {dataset.path} holds conditioning {sorted(conditioning)}, which "
            f"{type(model).__name__}'s forward does not take ({error})"
        ) from None
    except ValueError as error:
        raise ValueError(f"dataset {dataset.path}: {error}") from None


def noise_schedule(section: ModelSection, model: nn.Module) -> Tensor | None:
    """ᾱ_t [T] of the v-prediction DDPM scheduler a CogVideoX model samples with, which stage 2 trains it
    on (:func:`~rehyat.training.finetune.loss.v_prediction_loss`): the scheduler of the pipeline folder
    ``model.path`` (or of the pipeline folder around it, for its ``transformer/``); for a random
    ``model.architecture``, ``CogVideoXDDIMScheduler``'s with v-prediction. None for the families that
    sample by flow matching."""
    from diffusers import CogVideoXDDIMScheduler

    from rehyat.models.cogvideox import CogVideoXAdapter
    from rehyat.models.folders import transformer_folder

    if not isinstance(family_of(model), CogVideoXAdapter):
        return None
    if section.path is None:
        return CogVideoXDDIMScheduler(prediction_type="v_prediction").alphas_cumprod
    scheduler = transformer_folder(section.path, "model.path").parent / "scheduler"
    config_file = scheduler / "scheduler_config.json"
    if not config_file.is_file():
        raise ValueError(
            f"{config_file} does not exist: CogVideoX trains on its scheduler's noise schedule "
            "(v-prediction), so give model.path as its pipeline folder (or that folder's transformer/)"
        )
    config = read_json_object(config_file)
    if config.get("prediction_type") != "v_prediction" or config.get("_class_name") not in (
        "CogVideoXDDIMScheduler",
        "CogVideoXDPMScheduler",
    ):
        raise ValueError(
            f"{config_file}: CogVideoX trains on a CogVideoXDDIMScheduler or CogVideoXDPMScheduler with "
            f"prediction_type 'v_prediction', got {config.get('_class_name')} with "
            f"{config.get('prediction_type')!r}"
        )
    return CogVideoXDDIMScheduler.from_pretrained(scheduler, local_files_only=True).alphas_cumprod


def save_final_weights(section: ModelSection, seed: int, state: dict[str, Tensor], folder: Path) -> None:
    """Save full weights through a fresh CPU model: a ReHyAt checkpoint with base weights, or a plain
    diffusers transformer folder (``save_pretrained``) when the model is not converted."""
    model = build_model(section, seed)
    model.load_state_dict(state)
    if section.convert:
        save_rehyat(model, folder, include_base_weights=True)
    else:
        model.save_pretrained(folder)


def rehyat_config_of(model: nn.Module) -> dict[str, Any] | None:
    """The ReHyAt config ``model`` (or its DDP/FSDP wrapper) was converted with, as a dict; None if plain."""
    runtime = rehyat_runtime(distributed.unwrap(model))
    return None if runtime is None else runtime.config.to_dict()
