"""Stage 1 and stage 2 on every convertible family beside Wan2.1 (SkyReels-V2, LTX-Video, HunyuanVideo,
CogVideoX; Wan2.2 shares Wan's class), on tiny configs: the recorder captures the teacher's attention
exactly (a joint text-video layer's with its text keys), a stage-1 student predicts what the converted
joint layer computes, a stage-1 run samples with the family's own pipeline and writes a checkpoint of that
family, and a stage-2 run trains and saves a model that loads back."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from safetensors.torch import save_file

from rehyat import ReHyAtConfig
from rehyat.models import convert, family_of, load_rehyat
from rehyat.models.architectures import architecture
from rehyat.settings import load_config
from rehyat.training.capture import AttentionCapture, AttentionRecorder
from rehyat.training.data import write_latent_dataset
from rehyat.training.distill import (
    DistillConfig,
    load_prompt_embeddings,
    load_teacher_pipeline,
    run_distillation,
)
from rehyat.training.finetune import (
    FinetuneConfig,
    finetune,
    flow_matching_loss,
    noise_generator,
    noise_schedule,
    v_prediction_loss,
)
from rehyat.training.students import BlockStudent

from conftest import rel_err

# name, the tiny architecture, its scheduler, a video of 4 latent frames of 4×4 tokens
FAMILIES = {
    "skyreels-v2": (
        "tiny-skyreels-v2",
        lambda: UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        dict(num_frames=13, height=64, width=64),
    ),
    "ltx-video": (
        "tiny-ltx-video",
        FlowMatchEulerDiscreteScheduler,
        dict(num_frames=25, height=128, width=128),
    ),
    "hunyuan-video": (
        "tiny-hunyuan-video",
        FlowMatchEulerDiscreteScheduler,
        dict(num_frames=13, height=64, width=64),
    ),
    "cogvideox": (
        "tiny-cogvideox",
        lambda: CogVideoXDDIMScheduler(prediction_type="v_prediction"),
        dict(num_frames=13, height=64, width=64),
    ),
}
JOINT = ("hunyuan-video", "cogvideox")
by_family = pytest.mark.parametrize("name", sorted(FAMILIES))
TEXT_TOKENS = 6


def _latents(name: str, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Latents of 4 frames of 4×4 tokens, prompt embeddings, and the family's other per-sample inputs
    (HunyuanVideo's pooled CLIP projection, and a mask whose second prompt has 2 padded tokens)."""
    arch = architecture(FAMILIES[name][0])
    gen = torch.Generator().manual_seed(seed)
    size = 4 if arch.family == "ltx-video" else 8  # 4×4 tokens (LTX-Video: patch 1, the others 2×2)
    latents = torch.randn(batch, arch.latent_channels, 4, size, size, generator=gen)
    prompt = torch.randn(batch, TEXT_TOKENS, arch.text_dim, generator=gen)
    conditioning = {}
    if name == "hunyuan-video":
        mask = torch.ones(batch, TEXT_TOKENS)
        mask[1:, -2:] = 0
        pooled = torch.randn(batch, arch.config["pooled_projection_dim"], generator=gen)
        conditioning = dict(pooled_prompt_embeds=pooled, prompt_attention_mask=mask)
    return latents, prompt, conditioning


def _teacher_attention(capture: AttentionCapture) -> torch.Tensor:
    """Softmax of the captured queries over the captured keys and, for a joint layer, the text keys
    (padded ones masked): what the teacher's layer computes for those rows."""
    k, v, mask = capture.k, capture.v, None
    if capture.global_k is not None:
        k, v = torch.cat([k, capture.global_k], dim=1), torch.cat([v, capture.global_v], dim=1)
        if capture.global_mask is not None:
            video = capture.global_mask.new_ones(capture.k.shape[:2])
            mask = torch.cat([video, capture.global_mask], dim=1)[:, None, None, :]
    q, k, v = (x.transpose(1, 2) for x in (capture.q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


@by_family
def test_recorder_captures_the_teachers_attention_exactly(name):
    torch.manual_seed(0)
    model = architecture(FAMILIES[name][0]).build()
    family = family_of(model)
    latents, prompt, conditioning = _latents(name, batch=2)
    inputs = family.denoiser_inputs(model, latents, torch.tensor([500.0, 300.0]), prompt, **conditioning)
    with torch.no_grad():
        reference = model(**inputs, return_dict=False)[0]
        recorder = AttentionRecorder(model, [0, 1])  # HunyuanVideo: a dual- and a single-stream block
        with recorder.installed():
            recorder.active = True
            out = model(**inputs, return_dict=False)[0]
    assert torch.equal(out, reference)
    for (capture,) in recorder.take().values():
        assert capture.frame_tokens == 16 and capture.frames == 4
        # q and k carry the family's RoPE where it applies it: softmax over them is the teacher's output
        assert rel_err(_teacher_attention(capture), capture.y) <= 1e-5
        assert (capture.global_k is not None) == (name in JOINT)
        if name == "hunyuan-video":
            assert capture.global_mask.sum(dim=1).tolist() == [6, 4]  # the padded text keys are out


@pytest.mark.parametrize("name", JOINT)
def test_stage1_student_predicts_what_the_converted_joint_layer_computes(name):
    """Block 0 of the converted model gets the teacher's inputs (every chunk's text copy is still the
    embedded prompt), so the video rows its processor computes are the student's prediction on the
    teacher's capture of block 0, with the same φ."""
    torch.manual_seed(0)
    model = architecture(FAMILIES[name][0]).build()
    family = family_of(model)
    latents, prompt, conditioning = _latents(name, batch=2)
    inputs = family.denoiser_inputs(model, latents, torch.tensor([500.0, 300.0]), prompt, **conditioning)
    recorder = AttentionRecorder(model, [0])
    with torch.no_grad(), recorder.installed():
        recorder.active = True
        model(**inputs, return_dict=False)
    (capture,) = recorder.take()[0]
    config = ReHyAtConfig(chunk_frames=2, overlap_frames=1, feature_init="random")
    student = BlockStudent("rehyat", config, 2, capture.q.shape[-1], feature_input=recorder.feature_input)
    predicted = student.predict(capture).flatten(2)
    student.train_step(capture)  # a trained φ, not the converted model's own initial one

    converted = convert(copy.deepcopy(model), config)
    attn = family.attention(converted, 0)
    attn.load_state_dict({**attn.state_dict(), **student.feature_map_state()})
    rows = []  # the video rows' input of the output projection, per chunk entry (chunk-major)
    hook = attn.to_out[0].register_forward_pre_hook(lambda _m, args: rows.append(args[0]))
    with torch.no_grad():
        converted(**inputs, return_dict=False)
    hook.remove()
    video = rows[0].unflatten(0, (2, 2)).transpose(0, 1).flatten(1, 2)  # 2 chunk entries of 2 frames
    assert rel_err(student.predict(capture).flatten(2), video) <= 1e-5
    assert rel_err(predicted, video) > 1e-4  # the step changed φ, and the converted layer follows it


@by_family
def test_stage1_run_samples_with_the_familys_pipeline(name, tmp_path):
    arch_name, scheduler, video = FAMILIES[name]
    torch.manual_seed(0)
    arch = architecture(arch_name)
    arch.build().save_pretrained(tmp_path / "teacher" / "transformer")
    scheduler().save_pretrained(tmp_path / "teacher" / "scheduler")
    prompts = tmp_path / "prompts.safetensors"
    tensors = {"prompt_embeds": torch.randn(2, TEXT_TOKENS, arch.text_dim)}
    if name == "hunyuan-video":  # HunyuanVideoPipeline takes its pooled CLIP projections beside them
        tensors["pooled_prompt_embeds"] = torch.randn(2, arch.config["pooled_projection_dim"])
    save_file(tensors, prompts)
    config = DistillConfig(
        model=str(tmp_path / "teacher"),
        prompts=str(prompts),
        out=str(tmp_path / "run"),
        variants=None if name in JOINT else ["rehyat", "untrained"],
        dtype="fp32",
        device="cpu",
        num_inference_steps=2,
        capture_steps=[0],
        guidance_scale=1.0,
        heldout=1,
        **video,
    )
    report = run_distillation(config)
    assert sorted(report["ranking"]) == [0, 1]
    assert report["blocks"][0]["captures_heldout"] == 1  # one capture step, no CFG
    assert sorted(report["blocks"][0]["heldout"]) == ["rehyat", "untrained"]  # joint: every variant served
    saved = json.loads((tmp_path / "run" / "rehyat" / "rehyat_config.json").read_text())
    assert arch.class_name in json.dumps(saved)
    student = load_rehyat(arch.build(), tmp_path / "run" / "rehyat")
    assert family_of(student).name == name
    if name == "ltx-video":  # Wan's 4k + 1 frames is not enough for its VAE's stride of 8
        with pytest.raises(ValueError, match="num_frames must be 8k \\+ 1 for LTXVideoTransformer3DModel"):
            run_distillation(DistillConfig(**{**config.__dict__, "num_frames": 29}))
    if name in JOINT:  # refused before the teacher samples: nothing is written
        for change, match in (
            ({"variants": ["rehyat", "local"]}, "text keys"),
            ({"blocks": [0]}, "every block"),
        ):
            with pytest.raises(ValueError, match=match):
                run_distillation(DistillConfig(**{**config.__dict__, "out": str(tmp_path / "no"), **change}))
        assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("name", JOINT)
def test_stage1_encodes_text_prompts_with_the_familys_encoders(name, tmp_path):
    """A saved pipeline folder's text encoders (HunyuanVideo's Llama and CLIP, CogVideoX's T5) encode a
    prompt file into the arguments the pipeline takes, and a run samples with them."""
    from generation.tiny_pipeline import tiny_family_pipeline

    tiny_family_pipeline(name).save_pretrained(tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("a cat on the moon\na dog\n")
    pipe = load_teacher_pipeline(tmp_path / "model", torch.float32, torch.device("cpu"), need_text=True)
    arguments = load_prompt_embeddings(pipe, tmp_path / "prompts.txt", "blurry", torch.device("cpu"))
    shapes = {key: tuple(value.shape) for key, value in arguments.items()}
    if name == "hunyuan-video":  # 256 tokens after the template's 95, the mask, the pooled CLIP output
        assert shapes == {
            "prompt_embeds": (2, 256, 16),
            "prompt_attention_mask": (2, 256),
            "pooled_prompt_embeds": (2, 8),
        }
        tokens = arguments["prompt_attention_mask"].sum(dim=1)
        assert 0 < tokens[1] < tokens[0]  # the shorter prompt attends fewer tokens, and some
    else:
        assert shapes == {"prompt_embeds": (2, 226, 16), "negative_prompt_embeds": (2, 226, 16)}
    config = DistillConfig(
        model=str(tmp_path / "model"),
        prompts=str(tmp_path / "prompts.txt"),
        out=str(tmp_path / "run"),
        dtype="fp32",
        device="cpu",
        num_inference_steps=1,
        capture_steps=[0],
        guidance_scale=1.0,
        heldout=1,
        num_frames=9,
        height=64,
        width=64,
    )
    assert run_distillation(config)["blocks"][0]["captures_heldout"] == 1


@by_family
def test_stage2_run_trains_and_saves_a_model_of_the_family(name, tmp_path):
    latents, prompt, conditioning = _latents(name, batch=2, seed=1)
    samples = [(latents[i], prompt[i], {k: v[i] for k, v in conditioning.items()}) for i in range(2)]
    data = write_latent_dataset(tmp_path / "data", samples)
    overrides = {
        "output_dir": tmp_path / "run",
        "data.path": data,
        "model.architecture": FAMILIES[name][0],
        "model.rehyat": '{"chunk_frames": 2, "feature_init": "random"}',
        "steps": 1,
        "mixed_precision": "no",
        "progress": "false",
    }

    def config(**changes):
        values = {**overrides, **changes}
        return load_config(FinetuneConfig, None, [f"{k}={v}" for k, v in values.items()])

    if name in JOINT:  # the folded chunk entries are not recomputed by diffusers' checkpointing
        with pytest.raises(ValueError, match=r"model\.gradient_checkpointing=true is not served"):
            finetune(config())
        assert not (tmp_path / "run").exists()
        overrides["model.gradient_checkpointing"] = "false"
    if name == "hunyuan-video":  # its pooled CLIP projections condition every block
        bare = write_latent_dataset(tmp_path / "bare", list(zip(latents, prompt, strict=True)))
        with pytest.raises(ValueError, match="needs pooled_prompt_embeds"):
            finetune(config(**{"data.path": bare}))
    result = finetune(config())
    trained = load_rehyat(architecture(FAMILIES[name][0]).build(), tmp_path / "run" / "final")
    state = trained.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in result.model.state_dict().items())
    torch.manual_seed(0)  # the run's base weights
    initial = architecture(FAMILIES[name][0]).build().state_dict()
    assert any(not torch.equal(v, state[k]) for k, v in initial.items())  # the step trained the model
    # stage 2 calls the model as the family's pipeline does: LTX-Video's latent is packed into tokens,
    # CogVideoX's has its frames first
    family = family_of(trained)
    inputs = family.denoiser_inputs(trained, latents, torch.full((2,), 500.0), prompt, **conditioning)
    assert inputs["hidden_states"].dim() == (3 if name == "ltx-video" else 5)
    assert torch.equal(family.denoiser_output(trained, inputs["hidden_states"], latents), latents)
    schedule = noise_schedule(config().model, trained)  # CogVideoX's v-prediction DDPM, the others flow
    assert (schedule is not None) == (name == "cogvideox")
    with torch.no_grad():
        gen = noise_generator(0, 0, 0)
        call = dict(family=family, conditioning=conditioning)
        if schedule is None:
            loss = flow_matching_loss(trained, latents, prompt, gen, 3.0, **call)
        else:
            loss = v_prediction_loss(trained, latents, prompt, gen, schedule, **call)
    assert torch.isfinite(loss) and loss > 0


def test_v_prediction_loss_builds_the_ddpm_inputs_and_velocity_target():
    """CogVideoX's objective: x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε at an integer t, target v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0."""
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction")
    latents, prompts, alphas = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 5, 8), scheduler.alphas_cumprod
    seen = {}

    def model(noisy, timestep, context, return_dict):
        seen.update(noisy=noisy, timestep=timestep, context=context)
        return (torch.zeros_like(noisy),)

    loss = v_prediction_loss(model, latents, prompts, noise_generator(0, 1, 0), alphas)
    gen = noise_generator(0, 1, 0)
    t = (torch.rand(2, generator=gen) * 1000).long()
    noise = torch.randn(latents.shape, generator=gen)
    a = alphas[t].float().view(2, 1, 1, 1, 1)
    assert torch.equal(seen["timestep"], t) and seen["context"] is prompts
    assert torch.allclose(seen["noisy"], a.sqrt() * latents + (1 - a).sqrt() * noise)
    assert torch.isclose(loss, (a.sqrt() * noise - (1 - a).sqrt() * latents).square().mean())
    # The same as diffusers' own scheduler makes them (its add_noise and get_velocity).
    assert torch.allclose(seen["noisy"], scheduler.add_noise(latents, noise, t), atol=1e-6)
    velocity = scheduler.get_velocity(latents, noise, t)
    assert torch.allclose(loss, velocity.square().mean(), rtol=1e-5)


def test_cogvideox_trains_on_its_pipeline_folders_scheduler(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from rehyat.training.finetune import ModelSection

    model = architecture("tiny-cogvideox").build()
    model.save_pretrained(tmp_path / "cog" / "transformer")
    own = CogVideoXDDIMScheduler(
        prediction_type="v_prediction", snr_shift_scale=1.0, rescale_betas_zero_snr=True
    )
    own.save_pretrained(tmp_path / "cog" / "scheduler")
    default = noise_schedule(ModelSection(architecture="tiny-cogvideox"), model)
    assert not torch.equal(own.alphas_cumprod, default)
    for path in (tmp_path / "cog", tmp_path / "cog" / "transformer"):  # the folder or its transformer/
        assert torch.equal(noise_schedule(ModelSection(path=str(path)), model), own.alphas_cumprod)
    FlowMatchEulerDiscreteScheduler().save_pretrained(tmp_path / "flow" / "scheduler")
    model.save_pretrained(tmp_path / "flow" / "transformer")
    with pytest.raises(ValueError, match="prediction_type 'v_prediction'"):
        noise_schedule(ModelSection(path=str(tmp_path / "flow")), model)
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="as its pipeline folder"):
        noise_schedule(ModelSection(path=str(tmp_path / "bare")), model)
    assert noise_schedule(ModelSection(architecture="tiny"), architecture("tiny").build()) is None
