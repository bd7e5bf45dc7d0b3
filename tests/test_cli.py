"""The `vidgan` command line end to end (CPU): the tiny main job, data, sample, and every bad input ending
as one `error: ...` line with a non-zero exit and no traceback."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from cli_helpers import vidgan  # tests/cli_helpers.py

from vidgan_fast.data import load_videos

REPO = Path(__file__).resolve().parents[1]
# the tiny preset, cut to a few steps per phase so the main job takes seconds
QUICK = ["--preset", "tiny", "--steps", "4", "--log-every", "2"]
MAIN_JOB_STEPS = 30   # enough for G_F's eval-mode frames to differ (Pillow merges identical GIF frames)


pytestmark = pytest.mark.usefixtures("one_thread")    # tests/conftest.py


def assert_one_line_error(result, *fragments):
    """Non-zero exit, the last stderr line is the one `error: ...` line, no traceback anywhere."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`vidgan train all --preset tiny` (a few steps per phase): the project's main job."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = vidgan("train", "all", "--preset", "tiny", "--steps", MAIN_JOB_STEPS, "--out", out)
    assert "both phases done" in result.stdout
    return out


def test_main_job_writes_checkpoints_log_and_gif(tiny_run):
    assert (tiny_run / "frames.ckpt").exists() and (tiny_run / "video.ckpt").exists()
    gif = iio.imread(tiny_run / "samples" / "videos.gif", index=None)
    assert gif.shape[0] == 30                                   # one GIF frame per video frame
    assert (tiny_run / "samples" / "frames.png").exists() and (tiny_run / "samples" / "video_frames.png").exists()
    log = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    for phase in ("frames", "video"):          # one line per --log-every 10 steps (tiny), each counting its steps
        lines = [r for r in log if r["phase"] == phase]
        assert [(r["step"], r["steps"]) for r in lines] == [(10, 10), (20, 10), (30, 10)]
    assert all(r["it_s"] > 0 and "d_loss" in r for r in log)


def test_data_command(tmp_path):
    out = tmp_path / "balls.npy"
    result = vidgan("data", "--n", 8, "--out", out, "--seed", 3)
    assert "wrote 8 videos" in result.stdout
    videos = load_videos(out)
    assert videos.shape == (8, 30, 30, 30) and videos.dtype == np.uint8 and videos.max() > 0
    assert_one_line_error(vidgan("data", "--n", 8, "--out", out, ok=False), "already exists")


def test_sample_command(tiny_run, tmp_path):
    result = vidgan("sample", tiny_run / "video.ckpt", "--n", 4, "--out", tmp_path / "v")
    assert "videos.gif" in result.stdout
    gif = iio.imread(tmp_path / "v" / "videos.gif", index=None)
    assert gif.shape[0] == 30
    vidgan("sample", tiny_run / "frames.ckpt", "--n", 4, "--out", tmp_path / "f")
    png = iio.imread(tmp_path / "f" / "frames.png")
    assert png.ndim >= 2 and not (tmp_path / "f" / "videos.gif").exists()


def test_train_from_a_data_file_and_resume(tmp_path):
    data = tmp_path / "balls.npy"
    vidgan("data", "--n", 8, "--out", data)
    run = tmp_path / "run"
    args = ["--preset", "tiny", "--data", data, "--n-videos", 8, "--batch", 4, "--out", run]
    assert "phase 1 done: 2 steps" in vidgan("train", "frames", *args, "--steps", 2).stdout
    assert "phase 1 done: 3 steps" in vidgan("train", "frames", "--resume", "--out", run, "--steps", 3).stdout
    video = ["train", "video", "--preset", "tiny", "--data", data, "--n-videos", 8, "--batch", 2, "--out", run]
    assert "phase 2 done: 2 steps" in vidgan(*video, "--frames", run / "frames.ckpt", "--steps", 2).stdout


@pytest.mark.parametrize("args, fragment", [
    (["train", "frames", "--preset", "tiny", "--batch", "-1"], "invalid --batch -1: must be a positive integer"),
    (["train", "frames", "--preset", "tiny", "--frames-batch", "-4"], "invalid --frames-batch -4"),
    (["train", "video", "--preset", "tiny", "--frames", "x.ckpt", "--video-k", "0"], "invalid --video-k 0"),
    (["train", "frames", "--preset", "tiny", "--k", "0"], "invalid --k 0"),
    (["train", "all", "--preset", "tiny", "--loss", "softmax"], "Invalid value for '--loss': 'softmax' is not one of"),
    (["train", "all", "--preset", "tiny", "--video-codes", "cube"], "Invalid value for '--video-codes'"),
    (["train", "all", "--preset", "tiny", "--frames-lr", "0"], "invalid --frames-lr 0.0"),
    (["train", "all", "--preset", "tiny", "--gf-widths", "32,32"], "invalid --gf-widths 32,32: needs exactly 4"),
    (["train", "all", "--preset", "tiny", "--gf-widths", "a,b"], "not a comma list of integers"),
    (["train", "all", "--preset", "tiny", "--frames-batch", "512"], "invalid --frames-batch 512: is larger than "
                                                                    "--n-videos 256"),
    (["train", "frames", "--preset", "tiny", "--batch", "512"], "invalid --batch 512: is larger than"),
    (["train", "all", "--preset", "huge"], "Invalid value for '--preset'"),
    (["train", "all", "--no-such-option"], "No such option"),
    (["train", "video", "--preset", "tiny"], "Missing option '--frames'"),
    (["sample", "x.ckpt", "--n", "0"], "Invalid value for '--n'"),
])
def test_impossible_options(args, fragment, tmp_path):
    result = vidgan(*args, "--out", tmp_path / "run", ok=False) if args[0] == "train" else vidgan(*args, ok=False)
    assert_one_line_error(result, fragment)
    assert result.exit_code == 2                    # the command line alone is wrong: a usage error
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("*.ckpt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(tmp_path):
    assert_one_line_error(vidgan("train", "frames", "--preset", "tiny", "--device", "cuda", "--out", tmp_path,
                                 ok=False), "no CUDA GPU")


def bad_checkpoints(tiny_run, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((tiny_run / "frames.ckpt").read_bytes()[:2000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), foreign)
    return {"missing": (tmp_path / "missing.ckpt", "does not exist"),
            "truncated": (truncated, "cannot be read: truncated, corrupt"),
            "foreign": (foreign, "is not a vidgan_fast checkpoint"),
            "wrong phase": (tiny_run / "video.ckpt", "expected a frames checkpoint")}


@pytest.mark.parametrize("case", ["missing", "truncated", "foreign", "wrong phase"])
def test_bad_checkpoints(case, tiny_run, tmp_path):
    path, fragment = bad_checkpoints(tiny_run, tmp_path)[case]
    assert_one_line_error(vidgan("train", "video", *QUICK, "--frames", path, "--out", tmp_path / "run", ok=False),
                          str(path.name), fragment)
    assert not (tmp_path / "run" / "video.ckpt").exists()
    if case != "wrong phase":
        assert_one_line_error(vidgan("sample", path, "--out", tmp_path / "s", ok=False), str(path.name), fragment)


def test_frame_generator_widths_come_from_the_frames_checkpoint(tiny_run, tmp_path):
    """Phase 2 builds G_F with the checkpoint's widths; --gf-widths given and different is one clear error."""
    error = assert_one_line_error(vidgan("train", "video", *QUICK, "--gf-widths", "16,16,8,8", "--frames",
                                         tiny_run / "frames.ckpt", "--out", tmp_path / "run", ok=False),
                                  "invalid --gf-widths 16,16,8,8", "holds a G_F of widths 32,32,16,64")
    assert "leave --gf-widths out" in error and not (tmp_path / "run").exists()
    narrow = tmp_path / "narrow"                # a phase-1 run whose widths differ from every preset's
    vidgan("train", "frames", *QUICK, "--steps", 1, "--gf-widths", "16,16,8,8", "--out", narrow)
    assert "phase 2 done: 1 steps" in vidgan("train", "video", *QUICK, "--steps", 1, "--frames",
                                             narrow / "frames.ckpt", "--out", narrow).stdout
    assert tuple(torch.load(narrow / "video.ckpt", weights_only=True)["config"]["gf_widths"]) == (16, 16, 8, 8)


def test_wrong_shape_data_file(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 10, 30, 30), np.uint8))
    assert_one_line_error(vidgan("train", "frames", *QUICK, "--data", bad, "--out", tmp_path / "run", ok=False),
                          "bad.npy has shape (4, 10, 30, 30)")
    not_npy = tmp_path / "junk.npy"
    not_npy.write_text("junk")
    assert_one_line_error(vidgan("train", "all", *QUICK, "--data", not_npy, "--out", tmp_path / "run", ok=False),
                          "junk.npy is not a readable .npy array")


def test_nan_loss(tmp_path):
    out = tmp_path / "run"
    result = vidgan("train", "frames", *QUICK, "--lr", "1e30", "--out", out, ok=False)
    assert_one_line_error(result, "loss is ", "at step 1 (phase 1", "nothing was saved")
    assert not (out / "frames.ckpt").exists()


def test_nan_loss_on_resume_keeps_the_checkpoint(tiny_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(tiny_run / "frames.ckpt", out / "frames.ckpt")
    before = (out / "frames.ckpt").read_bytes()
    result = vidgan("train", "frames", "--resume", "--out", out, "--frames-lr", "1e30", "--steps", "40", ok=False)
    assert_one_line_error(result, "loss is ", f"at step {MAIN_JOB_STEPS + 1} (phase 1", f"(step {MAIN_JOB_STEPS}) is kept")
    assert (out / "frames.ckpt").read_bytes() == before


@pytest.mark.parametrize("command", [["train", "frames"], ["train", "all"], ["train", "video"]])
def test_existing_checkpoint_is_not_overwritten(command, tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.ckpt")}
    extra = ["--frames", out / "frames.ckpt"] if command[-1] == "video" else []
    assert_one_line_error(vidgan(*command, *QUICK, *extra, "--out", out, ok=False), "already holds", "--resume")
    assert {p.name: p.read_bytes() for p in out.glob("*.ckpt")} == before


def test_resume_with_nothing_to_resume(tmp_path):
    assert_one_line_error(vidgan("train", "all", "--resume", "--out", tmp_path, ok=False), "nothing to resume")


def test_python_m_entry_point_reports_one_line(tmp_path):
    """The real process: exit status and stderr of `python -m vidgan_fast` on a bad option."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vidgan_fast", "train", "frames", "--preset", "tiny", "--k", "0"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2                 # a value out of its range: a usage error
    assert proc.stderr == "error: invalid --k 0: must be a positive integer\n"
    help_text = subprocess.run([sys.executable, "-m", "vidgan_fast", "train", "all", "--help"], capture_output=True,
                               text=True, cwd=tmp_path, env=env, timeout=120)
    assert help_text.returncode == 0 and "--frames-batch" in help_text.stdout and "--steps" in help_text.stdout


def test_sigterm_in_phase2_then_resume_matches_a_straight_run(tmp_path):
    """The real process: SIGTERM mid phase 2 saves and exits non-zero; `train all --resume` then ends with
    exactly the checkpoints of an uninterrupted run."""
    args = ["train", "all", "--preset", "tiny", "--steps", "24", "--log-every", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "vidgan_fast", *args, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = out / "log.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None and \
            (not log.exists() or log.read_text().count('"phase": "video"') < 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err          # 128 + SIGTERM, as the shell reports a process it terminated
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("error: interrupted by SIGTERM at step ") and "of phase 2" in last and "--resume" in last
    assert "Traceback" not in err and not (out / "samples").exists()
    vidgan("train", "all", "--resume", "--out", out)
    vidgan(*args, "--out", tmp_path / "straight")
    for name in ("frames.ckpt", "video.ckpt"):
        a = torch.load(out / name, weights_only=True)
        b = torch.load(tmp_path / "straight" / name, weights_only=True)
        assert a["step"] == b["step"] == 24
        for part in ("generator", "discriminators", "frame_generator"):
            for key, value in (a[part] or {}).items():
                assert torch.equal(value, b[part][key]), f"{name} {part}.{key}"
    assert (out / "samples" / "videos.gif").exists()
