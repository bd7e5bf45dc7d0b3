"""Checkpoints: exact resume of both phases, atomic writes, and every unreadable-checkpoint error (CPU)."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vidgan_fast import checkpoint, train
from vidgan_fast.checkpoint import load_checkpoint, save_checkpoint
from vidgan_fast.config import preset
from vidgan_fast.errors import CheckpointError
from vidgan_fast.train import open_phase, train_phase

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(n_videos=8, frames_batch=4, video_batch=2, frames_epochs=3, video_epochs=2, log_every=1,
             checkpoint_every=100)


def small_cfg(**kw):
    return preset("tiny", **{**SMALL, **kw})


pytestmark = pytest.mark.usefixtures("one_thread")    # tests/conftest.py


def scramble_process_state():
    """What a fresh process would have: other RNG states, no cached epoch plans."""
    torch.manual_seed(12345)
    np.random.seed(54321)
    random.seed(999)
    train.epoch_plan.cache_clear()


def assert_identical(a, b, where="checkpoint"):
    """Recursive equality; tensors must be bit-identical (torch.equal)."""
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)):
            raise AssertionError(f"{where} differs")
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def comparable(ckpt):
    """Everything a run continues from (the config differs only in max_steps, which caps the run; the run id
    names the run, and two separate runs have two)."""
    return {k: v for k, v in ckpt.items() if k not in ("config", "run")}


def run(phase, out, cfg, frames=None, resume=False, overrides=None):
    return train_phase(open_phase(phase, out, cfg, resume, overrides, frames=frames), out, progress=False)


@pytest.fixture(scope="module")
def frames_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("phase1")
    run("frames", out, small_cfg(max_steps=2))
    return out / "frames.ckpt"


def test_exact_resume_phase1(tmp_path):
    cfg = small_cfg()                                          # 2 steps per epoch, 6 steps: crosses epochs
    run("frames", tmp_path / "straight", cfg)
    run("frames", tmp_path / "split", cfg.replace(max_steps=3))
    scramble_process_state()
    state = run("frames", tmp_path / "split", cfg, resume=True, overrides={"max_steps": 6})
    assert (state.step, state.epoch) == (6, 3)
    straight = load_checkpoint(tmp_path / "straight" / "frames.ckpt", "frames")
    split = load_checkpoint(tmp_path / "split" / "frames.ckpt", "frames")
    assert straight["step"] == 6 and straight["complete"]
    assert_identical(comparable(straight), comparable(split))
    assert straight["optimizers"]["generator"]["state"]          # optimizer state is really compared


@pytest.mark.parametrize("finetune", [False, True])
def test_exact_resume_phase2(tmp_path, frames_ckpt, finetune):
    cfg = small_cfg(finetune_frames=finetune)                  # 4 steps per epoch, 8 steps
    run("video", tmp_path / "straight", cfg, frames=frames_ckpt)
    run("video", tmp_path / "split", cfg.replace(max_steps=5), frames=frames_ckpt)
    scramble_process_state()
    run("video", tmp_path / "split", cfg, resume=True, overrides={"max_steps": 8})
    straight = load_checkpoint(tmp_path / "straight" / "video.ckpt", "video")
    split = load_checkpoint(tmp_path / "split" / "video.ckpt", "video")
    assert straight["step"] == 8
    assert_identical(comparable(straight), comparable(split))
    frozen = load_checkpoint(frames_ckpt)["generator"]
    same_gf = all(torch.equal(frozen[k], straight["frame_generator"][k]) for k in frozen)
    assert same_gf != finetune                                  # frozen unless fine-tuned
    assert (straight["optimizers"]["frame_generator"] is not None) == finetune


SLOW_RUN = """
import sys, time
from vidgan_fast import step as step_module, train
from vidgan_fast.config import preset
step = step_module.d_step
def slow_d_step(*a):
    time.sleep(0.05)
    return step(*a)
step_module.d_step = slow_d_step
cfg = preset("tiny", **eval(sys.argv[2]))
train.train_phase(train.open_phase("frames", sys.argv[1], cfg), sys.argv[1], progress=False)
"""


def test_sigint_saves_and_resume_is_exact(tmp_path):
    settings = dict(SMALL, frames_epochs=10)                   # 20 steps of >= 0.05 s
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(out), repr(settings)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "TrainingInterrupted" in err and "SIGINT at step" in err and "--resume" in err
    stopped = load_checkpoint(out / "frames.ckpt")["step"]
    assert 3 <= stopped < 20
    run("frames", out, small_cfg(frames_epochs=10), resume=True)
    run("frames", tmp_path / "straight", small_cfg(frames_epochs=10))
    assert_identical(comparable(load_checkpoint(out / "frames.ckpt")),
                     comparable(load_checkpoint(tmp_path / "straight" / "frames.ckpt")))


def test_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "frames.ckpt"
    save_checkpoint(path, {"phase": "frames", "x": torch.arange(3)})
    old = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(CheckpointError, match=r"cannot write .*frames.ckpt \(disk full\); the previous checkpoint is "
                                              r"unchanged"):
        save_checkpoint(path, {"phase": "frames", "x": torch.arange(4)})
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["frames.ckpt"]      # no temporary file left behind


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_truncated_checkpoint(tmp_path, frames_ckpt, keep):
    data = frames_ckpt.read_bytes()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match=r"bad.ckpt cannot be read: truncated, corrupt") as e:
        load_checkpoint(bad)
    assert "\n" not in str(e.value)


def test_foreign_checkpoints(tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), plain)           # a bare state dict
    with pytest.raises(CheckpointError, match="plain.ckpt is not a vidgan_fast checkpoint"):
        load_checkpoint(plain)
    other = tmp_path / "other.ckpt"
    torch.save({"format": "somebody.else", "version": 1}, other)
    with pytest.raises(CheckpointError, match="not a vidgan_fast checkpoint"):
        load_checkpoint(other)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(text)


def test_damaged_and_wrong_phase(tmp_path, frames_ckpt):
    with pytest.raises(CheckpointError, match=r"is a frames \(phase 1\) checkpoint; expected a video"):
        load_checkpoint(frames_ckpt, expected_phase="video")
    data = load_checkpoint(frames_ckpt)
    del data["optimizers"]
    damaged = tmp_path / "damaged.ckpt"
    torch.save(data, damaged)
    with pytest.raises(CheckpointError, match="damaged: it has no 'optimizers' entry"):
        load_checkpoint(damaged)


def test_mismatched_frame_generator_shapes(frames_ckpt):
    cfg = small_cfg(gf_widths=(16, 32, 16, 8))                  # the checkpoint has c0 = 32
    state_dict = load_checkpoint(frames_ckpt)["generator"]
    with pytest.raises(CheckpointError) as e:                  # checked before any model is built
        train.check_frame_generator(cfg, state_dict, frames_ckpt)
    assert "fc.weight has shape (128, 100) in the checkpoint, (64, 100) configured" in str(e.value)
    assert str(frames_ckpt) in str(e.value)


def test_rng_states_round_trip():
    device = torch.device("cpu")
    states = checkpoint.rng_states(device)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    scramble_process_state()
    checkpoint.restore_rng_states(states, device)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]
