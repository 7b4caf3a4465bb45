"""ReHyAt checkpoint folders under concurrent readers and writers: a load sees exactly one save (never
one save's config with another's φ), and two saves to one folder take turns instead of destroying it."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import torch
from diffusers import WanTransformer3DModel
from tiny_wan import tiny_wan

from rehyat import ReHyAtConfig, convert_wan, load_rehyat, save_rehyat
from rehyat.models import checkpoint, rehyat_runtime

CONFIG_A = ReHyAtConfig(chunk_frames=2, overlap_frames=1, feature_init="random")
CONFIG_B = ReHyAtConfig(chunk_frames=3, overlap_frames=1, feature_init="random")


@pytest.fixture
def two_saves(tmp_path):
    """A base model folder and two converted models of it that differ in config and in φ."""
    tiny_wan().save_pretrained(tmp_path / "base")
    nets = {}
    for name, config, seed in (("a", CONFIG_A, 1), ("b", CONFIG_B, 2)):
        torch.manual_seed(seed)
        nets[name] = convert_wan(WanTransformer3DModel.from_pretrained(tmp_path / "base").eval(), config)
    return tmp_path, nets


def _phi(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".rehyat_phi_" in k}


def _which(model, nets) -> str:
    """'a' or 'b' when config and φ come from one save, 'mixed' otherwise."""
    config, phi = rehyat_runtime(model).config, _phi(model)
    for name, net in nets.items():
        same_phi = all(torch.equal(v, phi[k]) for k, v in _phi(net).items())
        if config == rehyat_runtime(net).config and same_phi:
            return name
    return "mixed"


def _fresh(root):
    return WanTransformer3DModel.from_pretrained(root / "base").eval()


def test_a_save_between_reading_the_json_and_the_weights_is_never_mixed(two_saves, monkeypatch):
    """Another process swaps in save B after the load read A's rehyat_config.json: the load must come
    back with B whole (or A whole), never A's config with B's φ."""
    root, nets = two_saves
    folder = save_rehyat(nets["a"], root / "ckpt")
    real = checkpoint._load_tensors
    raced = []

    def save_b_first(*args, **kwargs):
        if not raced:
            raced.append(True)
            save_rehyat(nets["b"], folder)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "_load_tensors", save_b_first)
    model = load_rehyat(_fresh(root), folder)
    assert raced and _which(model, nets) == "b"


def test_a_swap_after_the_json_was_seen_but_before_it_was_read_is_read_again(two_saves, monkeypatch):
    """The JSON exists when the load checks it, then a save swaps the folder (old aside, new in) before
    the load opens it: the load reads the new folder whole instead of failing on the vanished file."""
    root, nets = two_saves
    folder = save_rehyat(nets["a"], root / "ckpt")
    staged = save_rehyat(nets["b"], root / "staged")
    real = checkpoint.read_json_object
    swaps = []

    def swap_while_reading(path, *args, **kwargs):
        if swaps:
            return real(path, *args, **kwargs)
        swaps.append(True)
        folder.rename(root / "aside")
        try:
            return real(path, *args, **kwargs)
        finally:
            staged.rename(folder)
            shutil.rmtree(root / "aside")

    monkeypatch.setattr(checkpoint, "read_json_object", swap_while_reading)
    model = load_rehyat(_fresh(root), folder)
    assert swaps and _which(model, nets) == "b"


def test_a_second_save_waits_for_the_first(two_saves, monkeypatch):
    """A save that starts while another is writing the same folder waits for it, then replaces it:
    the folder ends as the second save, whole, with nothing left beside it."""
    root, nets = two_saves
    folder = save_rehyat(nets["a"], root / "ckpt")
    real = checkpoint.atomic_write_json
    second = threading.Thread(target=save_rehyat, args=(nets["b"], folder))
    blocked = []

    def start_the_second_save(*args, **kwargs):
        if not second.is_alive() and not blocked:
            second.start()
            second.join(1.0)
            blocked.append(second.is_alive())
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_write_json", start_the_second_save)
    save_rehyat(nets["a"], folder)
    second.join(10)
    assert blocked == [True]
    assert _which(load_rehyat(_fresh(root), folder), nets) == "b"
    assert sorted(p.name for p in root.iterdir()) == ["base", "ckpt"]


def test_loads_during_a_stream_of_saves_see_one_save_each(two_saves):
    """Two writer threads save A and B into one folder over and over while this thread loads it: every
    load is A or B whole, and the folder is intact at the end."""
    root, nets = two_saves
    folder = save_rehyat(nets["a"], root / "ckpt")
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(net):
        try:
            while not stop.is_set():
                save_rehyat(net, folder)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(nets[n],)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    seen = {"a": 0, "b": 0, "mixed": 0}
    start = time.monotonic()
    try:  # at least 2 s and 5 loads (a loaded machine loads slowly), at most 60 s
        while time.monotonic() - start < 2.0 or (sum(seen.values()) < 5 and time.monotonic() - start < 60):
            seen[_which(load_rehyat(_fresh(root), folder), nets)] += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, errors
    assert seen["mixed"] == 0, seen
    assert seen["a"] + seen["b"] >= 5, seen
    assert _which(load_rehyat(_fresh(root), folder), nets) in ("a", "b")
    assert sorted(p.name for p in root.iterdir()) == ["base", "ckpt"]


def test_weights_of_another_save_are_a_clear_error(two_saves):
    """A folder whose φ file was copied in from another checkpoint is refused, naming the file, and the
    model is left as it was."""
    root, nets = two_saves
    folder = save_rehyat(nets["a"], root / "ckpt")
    other = save_rehyat(nets["b"], root / "other")
    shutil.copy(other / "rehyat.safetensors", folder / "rehyat.safetensors")
    model = _fresh(root)
    with pytest.raises(checkpoint.ReHyAtCheckpointError, match=r"rehyat\.safetensors is from save .*mixes"):
        load_rehyat(model, folder)
    assert rehyat_runtime(model) is None
