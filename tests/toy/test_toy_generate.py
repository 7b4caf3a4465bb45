"""`rehyat toy generate`: one video from a prompt with the shipped student (or the teacher), at tiny size."""

from __future__ import annotations

import imageio.v3 as iio
import pytest
import torch

from rehyat.cli import main
from rehyat.toy.generate import generate_toy_video

PROMPT = "a red circle moving right quickly on a striped background"


def test_the_shipped_student_writes_a_gif_of_the_asked_frames(tmp_path, capsys):
    out = tmp_path / "videos" / "student.gif"  # a missing folder is created
    argv = ["toy", "generate", "--prompt", PROMPT, "--frames", "3", "--steps", "1", "--out", str(out)]
    assert main(argv) == 0
    frames = iio.imread(out)
    assert frames.shape == (3, 96, 96, 3)  # 24×24 px frames, upscaled 4×
    assert "shipped ReHyAt student (recurrent)" in capsys.readouterr().out


def test_the_teacher_writes_an_mp4(tmp_path, capsys):
    out = tmp_path / "teacher.mp4"
    argv = ["toy", "generate", "--prompt", PROMPT, "--teacher", "--frames", "2", "--steps", "1"]
    assert main([*argv, "--scale", "2", "--seed", "5", "--out", str(out)]) == 0
    assert iio.imread(out).shape == (2, 48, 48, 3)
    assert "the teacher (full attention, parallel)" in capsys.readouterr().out


def test_the_recurrent_and_parallel_forms_give_the_same_video():
    settings = {"frames": 3, "steps": 1, "guidance_scale": 1.0, "seed": 1}
    recurrent = generate_toy_video(PROMPT, recurrent=True, **settings)
    parallel = generate_toy_video(PROMPT, recurrent=False, **settings)
    assert recurrent.shape == (3, 3, 24, 24)
    torch.testing.assert_close(recurrent, parallel, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--prompt", "a red blob"], "cannot parse toy prompt"),
        (["--prompt", PROMPT, "--frames", "0"], "--frames must be >= 1"),
        (["--prompt", PROMPT, "--out", "video.avi"], "--out: output must end in .mp4 or .gif"),
        (["--prompt", PROMPT, "--teacher", "--rehyat", "bundled"], "--teacher samples the teacher alone"),
        (["--prompt", PROMPT, "--steps", "0"], "--steps must be >= 1"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, extra, match):
    assert main(["toy", "generate", *extra]) == 2
    assert match in capsys.readouterr().err


@pytest.fixture(scope="module")
def my_teacher(tmp_path_factory):
    """A toy teacher folder of its own (random weights): the bundled student was not trained on it."""
    from rehyat.toy.model import init_teacher_folder

    return init_teacher_folder(tmp_path_factory.mktemp("my") / "teacher", seed=1)


def test_a_teacher_of_ones_own_is_sampled_alone_not_the_bundled_student(my_teacher):
    settings = {"frames": 2, "steps": 1, "guidance_scale": 1.0, "seed": 1, "recurrent": False}
    default = generate_toy_video(PROMPT, teacher=my_teacher, **settings)
    alone = generate_toy_video(PROMPT, teacher=my_teacher, rehyat=None, **settings)
    torch.testing.assert_close(default, alone, atol=0, rtol=0)  # its own weights, no student on top
    # Its recurrent form needs a student of its own: one line saying so, before any model loads.
    with pytest.raises(ValueError, match="has no bundled student: pass rehyat") as error:
        generate_toy_video(PROMPT, teacher=my_teacher, frames=2, steps=1)
    assert "\n" not in str(error.value)


def test_the_bundled_student_on_another_teacher_is_refused(my_teacher):
    from rehyat.toy.model import bundled_student, load_toy_model

    for student in ("bundled", bundled_student()):
        with pytest.raises(ValueError, match="trained on the bundled teacher") as error:
            generate_toy_video(PROMPT, teacher=my_teacher, rehyat=student, frames=2, steps=1)
        assert "\n" not in str(error.value)
        with pytest.raises(ValueError, match="trained on the bundled teacher"):
            load_toy_model(my_teacher, student)


def test_a_model_of_ones_own_without_a_student_or_teacher_flag_is_an_error(tmp_path, capsys):
    out = tmp_path / "toy.gif"
    argv = ["toy", "generate", "--prompt", PROMPT, "--model", str(tmp_path), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"--model {tmp_path} has no bundled student: pass --rehyat DIR or --teacher" in err
    assert "\n" not in err and not out.exists()
