"""The toy teacher pipeline on CPU: init, dataset, a few stage-2 steps, a loadable Wan folder."""

from __future__ import annotations

import torch

from rehyat.toy.teacher import CLIP, TOY_TEACHER_CONFIG, load_text_encoder, train_teacher, write_prompt_file
from rehyat.toy.world import ToyPrompt


def test_train_teacher_makes_a_wan_folder(tmp_path):
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    teacher = train_teacher(tmp_path, clips=4, steps=2, batch=2, lr=1e-3, seed=0, extra=["progress=false"])
    model = WanTransformer3DModel.from_pretrained(teacher / "transformer")
    init = WanTransformer3DModel.from_pretrained(tmp_path / "init" / "transformer")
    assert model.config.in_channels == 3 and model.config.num_layers == TOY_TEACHER_CONFIG["num_layers"]
    assert any(not torch.equal(p, init.state_dict()[n]) for n, p in model.state_dict().items())
    assert (teacher / "scheduler" / "scheduler_config.json").is_file()

    encoder = load_text_encoder(teacher)
    prompt = ToyPrompt("red", "circle", "left", "slow", "plain")
    path = write_prompt_file(encoder, [prompt], tmp_path / "prompts.safetensors")
    embeds = load_file(path)["prompt_embeds"]
    assert embeds.shape == (1, 16, TOY_TEACHER_CONFIG["text_dim"])
    with torch.no_grad():
        video = torch.zeros(1, 3, CLIP["num_frames"], CLIP["height"], CLIP["width"])
        out = model(video, torch.tensor([500.0]), embeds, return_dict=False)[0]
    assert out.shape == video.shape
