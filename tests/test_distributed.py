"""Distributed training (torchrun, gloo, 2 CPU processes) against the same steps on one process.

Two torchrun launches, each a module fixture:
  * this file run as a worker script: the training steps of both phases in float64 for every loss combination
    (K=5 frame / K=3 video discriminators on 2 ranks: blocks of 3+2 and 2+1), a one-process checkpoint resumed
    on 2 ranks, a SIGTERM sent to one rank, one --fast step (banks), and a failure on one rank (it must end the
    group with one-line errors, no hang);
  * the CLI: `torchrun -m vidgan_fast train all ...`, compared file by file with the same run on one process,
    and its checkpoint resumed on one process.

Tolerances. float64 steps: the sums over discriminators are reordered (local sums, then an all-reduce), so
agreement is to rounding: rtol 1e-9, atol 1e-10 (weights are ~0.02, RMSprop steps ~lr; a parameter whose true
gradient is 0 moves by lr * rounding noise / eps ~ 1e-12). float32 runs: RMSprop's first step is
lr * g / (0.1|g| + 1e-8) ~ 10 lr sign(g) whatever |g| is, so a parameter whose true gradient is zero (the biases
just ahead of a train-mode batch norm: they cancel out) or tiny moves by +-10 lr on rounding noise alone, on one
process as on two. float32 comparisons therefore check the discriminators and their optimizer state, the losses
and the generator's train-mode output (within 2e-4 of its largest value); the exactness of every generator
parameter, gradient and optimizer state is the float64 test.
"""
import builtins
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vidgan_fast import checkpoint, distributed, train  # noqa: E402
from vidgan_fast import step as step_module  # noqa: E402
from vidgan_fast.checkpoint import load_checkpoint, saved_config  # noqa: E402
from vidgan_fast.config import preset  # noqa: E402
from vidgan_fast.errors import ConfigError, TrainingInterrupted, VidganError  # noqa: E402
from vidgan_fast.sample import write_samples  # noqa: E402
from vidgan_fast.step import Phase, build_frame_generator, build_state, build_video_generator  # noqa: E402

STEPS = 3
STEP_CASES = [("frames", "mean", False), ("frames", "sum", False), ("frames", "hypervolume", False),
              ("frames", "gman", False), ("video", "mean", False), ("video", "sum", False),
              ("video", "hypervolume", False), ("video", "gman", True)]      # True: --finetune-frames
# Sizes pinned here, not taken from the tiny preset, so that tuning the preset's sample quality cannot move
# these comparisons (the float32 ones are tolerance-calibrated on these widths and rates).
PINNED = dict(gf_widths=(32, 32, 16, 8), df_widths=(8, 16, 32), frames_lr=3e-4, video_lr=2e-4)
SMALL = dict(n_videos=16, frames_batch=4, video_batch=2, frames_k=5, video_k=3, log_every=1, checkpoint_every=2,
             **PINNED)
FAST_CFG = preset("tiny", **{**SMALL, "max_steps": 1, "fast": True, "fast_check": False})
CLI_OPTIONS = ["--preset", "tiny", "--steps", "3", "--n-videos", "16", "--frames-batch", "4", "--video-batch", "2",
               "--frames-k", "5", "--video-k", "3", "--loss", "hypervolume", "--log-every", "1",
               "--checkpoint-every", "2", "--sample-n", "4", "--gf-widths", "32,32,16,8", "--df-widths", "8,16,32",
               "--frames-lr", "3e-4", "--video-lr", "2e-4"]


pytestmark = pytest.mark.usefixtures("one_thread")    # tests/conftest.py


def small_cfg(**kw):
    return preset("tiny", **{**SMALL, **kw})


def cli_cfg():
    return small_cfg(max_steps=3, loss="hypervolume", sample_n=4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, cwd, timeout=150) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}   # TRITON_INTERPRET as conftest set it
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------- float64 steps

def float64_steps(phase: str, mode: str, finetune: bool, shard: bool):
    """STEPS d_step/g_step pairs of a fresh state, in float64; the state is sharded over the group if `shard`."""
    cfg = small_cfg(loss=mode, finetune_frames=finetune)
    frames = build_state(small_cfg(), "frames").generator.state_dict() if phase == "video" else None
    state = build_state(cfg, phase, frames)
    for module in (state.generator, state.discriminators, state.frame_generator):
        if module is not None:
            module.double()
    if shard:
        distributed.shard_state(state)
    source, n = train.open_source(cfg)
    batch = Phase.of(cfg, phase).batch
    losses = []
    for _ in range(STEPS):
        real = train.real_batch(state, source, n).double()
        z_d, z_g = torch.randn(batch, 100, dtype=torch.float64), torch.randn(batch, 100, dtype=torch.float64)
        losses.append((step_module.d_step(state, real, z_d), step_module.g_step(state, z_g)))
        state.batch_in_epoch += 1
    return state, torch.tensor(losses)


def step_result(state, losses) -> dict | None:
    """What the comparison needs, in one-process layout (collective under torchrun; None on ranks > 0)."""
    payload = {"optimizers": {"discriminators": state.d_opt.state_dict()},
               "discriminators": state.discriminators.state_dict()}
    if distributed.active():
        payload = distributed.gather_payload(state, payload)
        if payload is None:
            return None
    trained = [state.generator] + ([state.frame_generator] if state.f_opt is not None else [])
    return {"losses": losses,
            "generator": {k: v.clone() for m in trained for k, v in m.state_dict().items()},
            "grads": [p.grad.clone() for m in trained for p in m.parameters()],
            "g_square_avg": [s["square_avg"].clone() for opt in (state.g_opt, state.f_opt) if opt is not None
                             for s in opt.state_dict()["state"].values()],
            "discriminators": payload["discriminators"],
            "d_opt": payload["optimizers"]["discriminators"]}


# ----------------------------------------------------------------------------------------------- the worker

def worker(out: Path) -> None:
    """Runs under torchrun (this file as a script). Rank 0 writes the results; rank 1 must write nothing."""
    torch.set_num_threads(1)
    me = int(os.environ["RANK"])
    written = []
    if me:
        real_open = builtins.open

        def spy_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax") and str(file) != os.devnull:
                written.append(str(file))
            return real_open(file, mode, *args, **kwargs)
        builtins.open = spy_open
        distributed.save_checkpoint_file = checkpoint.save_checkpoint = lambda path, payload: written.append(path)
    try:
        with distributed.launched():
            results = {case: step_result(*float64_steps(*case, shard=True)) for case in STEP_CASES}
            if distributed.is_main():
                torch.save(results, out / "steps.pt")
            # a one-process checkpoint (written by the test at step 2) resumed on two processes, to step 4
            state = train.open_phase("frames", out / "resume", None, resume=True, overrides={"max_steps": 4})
            train.train_phase(state, out / "resume", progress=False)
            # SIGTERM to rank 1 during step 2: both ranks stop after step 2 and rank 0 saves
            real_d_step = step_module.d_step

            def d_step_then_signal(state, real, z):
                if me == 1 and state.step == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                return real_d_step(state, real, z)
            step_module.d_step = d_step_then_signal
            try:
                train.train_phase(train.open_phase("frames", out / "stop", small_cfg(max_steps=5)), out / "stop",
                                  progress=False)
            except TrainingInterrupted as e:
                print(f"rank {me} interrupted: {e}", file=sys.stderr, flush=True)
            step_module.d_step = real_d_step
            # --fast: each rank's block becomes a discriminator bank (Triton interpreter on the CPU)
            train.train_phase(train.open_phase("frames", out / "fast", FAST_CFG), out / "fast", progress=False)
            print(f"rank {me} wrote: {written}", file=sys.stderr, flush=True)
            # a failure on rank 1 at its second generator step: rank 0 waits in a collective and must not hang
            real_g_step = step_module.g_step

            def failing_g_step(state, z):
                if me == 1 and state.step == 1:
                    raise VidganError("injected failure")
                return real_g_step(state, z)
            step_module.g_step = failing_g_step
            train.train_phase(train.open_phase("frames", out / "fail", small_cfg(max_steps=5)), out / "fail",
                              progress=False)
    except VidganError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_worker")
    state = train.open_phase("frames", out / "resume", small_cfg(max_steps=2))
    train.train_phase(state, out / "resume", progress=False)
    start = time.perf_counter()
    done = torchrun([Path(__file__).resolve(), out], cwd=out)
    return done, out, time.perf_counter() - start


def close64(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("case", STEP_CASES, ids=[f"{p}-{m}{'-finetune' if f else ''}" for p, m, f in STEP_CASES])
def test_float64_steps_match_one_process(worker_run, case):
    done, out, _ = worker_run
    assert (out / "steps.pt").exists(), done.stderr[-3000:]
    two = torch.load(out / "steps.pt", weights_only=False)[case]
    one = step_result(*float64_steps(*case, shard=False))
    close64(two["losses"], one["losses"], "losses (d, g) per step")
    assert list(two["generator"]) == list(one["generator"])
    for name in one["generator"]:
        close64(two["generator"][name], one["generator"][name], f"generator {name}")
    scale = max(g.abs().max() for g in one["grads"])
    for i, (a, b) in enumerate(zip(two["grads"], one["grads"])):   # a sum-vs-mean slip would show here
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * scale, msg=lambda m: f"gradient {i}: {m}")
    for a, b in zip(two["g_square_avg"], one["g_square_avg"]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-20)
    assert list(two["discriminators"]) == list(one["discriminators"])          # '0.'..'K-1.', same order
    for name in one["discriminators"]:
        close64(two["discriminators"][name], one["discriminators"][name], f"discriminators {name}")
    assert two["d_opt"]["param_groups"] == one["d_opt"]["param_groups"]
    assert sorted(two["d_opt"]["state"]) == sorted(one["d_opt"]["state"])
    for i, s in one["d_opt"]["state"].items():
        torch.testing.assert_close(two["d_opt"]["state"][i], s, rtol=1e-8, atol=1e-20)


def test_one_process_checkpoint_resumes_on_two(worker_run, tmp_path):
    done, out, _ = worker_run
    two = load_checkpoint(out / "resume" / "frames.ckpt")
    assert two["step"] == 4, done.stderr[-3000:]
    one = train.open_phase("frames", tmp_path, small_cfg(max_steps=4))
    train.train_phase(one, tmp_path, progress=False)
    assert_close_fp32(two, load_checkpoint(tmp_path / "frames.ckpt"))


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(worker_run):
    done, out, _ = worker_run
    for me in (0, 1):
        assert f"rank {me} interrupted: SIGTERM at step 2 of phase 1" in done.stderr, done.stderr[-3000:]
    ckpt = load_checkpoint(out / "stop" / "frames.ckpt")
    assert ckpt["step"] == 2 and not ckpt["complete"]


def test_only_rank_zero_writes(worker_run):
    done, _, _ = worker_run
    assert "rank 1 wrote: []" in done.stderr, done.stderr[-3000:]


def test_a_failure_on_one_rank_ends_the_group_with_one_line_errors(worker_run):
    done, out, seconds = worker_run
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert "error: rank 1: injected failure" in errors, done.stderr[-3000:]
    assert any(line.startswith("error: stopped: another process of the group failed") for line in errors), errors
    assert seconds < 100                       # no rank waited for a collective's timeout


def test_fast_banks_are_sharded_and_gathered_to_the_reference_layout(worker_run, tmp_path):
    """One step with --fast on 2 ranks (banks of 3 and 2) against one step with --fast on one process (a bank of
    5), float32. Measured: weights within 3e-7, square_avg = 0.01 g^2 within 3e-3 relative (tiny gradients)."""
    done, out, _ = worker_run
    two = load_checkpoint(out / "fast" / "frames.ckpt")
    train.train_phase(train.open_phase("frames", tmp_path, FAST_CFG), tmp_path, progress=False)
    one = load_checkpoint(tmp_path / "frames.ckpt")
    assert list(two["discriminators"]) == list(one["discriminators"])
    torch.testing.assert_close(two["discriminators"], one["discriminators"], rtol=1e-4, atol=1e-5)
    d_two, d_one = two["optimizers"]["discriminators"], one["optimizers"]["discriminators"]
    assert d_two["param_groups"] == d_one["param_groups"]
    torch.testing.assert_close(d_two["state"], d_one["state"], rtol=2e-2, atol=1e-14)


# ----------------------------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_cli")
    done = torchrun(["-m", "vidgan_fast", "train", "all", *CLI_OPTIONS, "--out", root / "two"], cwd=root)
    one, cfg = root / "one", cli_cfg()          # train_all on one process, except that phase 2 renders through
    train.train_phase(train.open_phase("frames", one, cfg), one, progress=False)  # the 2-process G_F (its
    train.train_phase(train.open_phase("video", one, cfg, frames=root / "two" / "frames.ckpt"), one,  # dead
                      progress=False)           # biases are rounding-decided, see the module docstring)
    for phase in ("frames", "video"):
        write_samples(one / f"{phase}.ckpt", one / "samples", n=cfg.sample_n, seed=cfg.seed)
    return done, root


def assert_close_fp32(two: dict, one: dict) -> None:
    """Two float32 checkpoints of the same run, one written by 2 processes (see the module docstring)."""
    assert two.keys() == one.keys()
    for key in ("phase", "config", "step", "epoch", "batch_in_epoch", "complete"):
        assert two[key] == one[key], key
    assert list(two["discriminators"]) == list(one["discriminators"])
    torch.testing.assert_close(two["discriminators"], one["discriminators"], rtol=1e-4, atol=1e-6)
    d_two, d_one = two["optimizers"]["discriminators"], one["optimizers"]["discriminators"]
    assert d_two["param_groups"] == d_one["param_groups"] and d_two["state"].keys() == d_one["state"].keys()
    torch.testing.assert_close(d_two["state"], d_one["state"], rtol=1e-3, atol=1e-12)
    for key in ("d_loss", "g_loss"):
        assert two["losses"][key] == pytest.approx(one["losses"][key], rel=1e-4)
    assert two["generator"].keys() == one["generator"].keys()
    out_two, out_one = generator_output(two), generator_output(one)     # measured: within 3e-5 of max |output|
    torch.testing.assert_close(out_two, out_one, rtol=0, atol=2e-4 * out_one.abs().max().item())


def generator_output(ckpt: dict) -> torch.Tensor:
    """The generator's train-mode output on fixed noise (what the discriminators see during training)."""
    cfg = saved_config(ckpt, "ckpt")
    torch.manual_seed(123)
    z = torch.randn(4, 100)
    if ckpt["phase"] == "frames":
        g = build_frame_generator(cfg)
        g.load_state_dict(ckpt["generator"])
        return g.train()(z).detach()
    g, f = build_video_generator(cfg), build_frame_generator(cfg)
    g.load_state_dict(ckpt["generator"])
    f.load_state_dict(ckpt["frame_generator"])
    return g.train()(z, f.eval()).detach()


def test_cli_under_torchrun_matches_one_process(cli_run):
    done, root = cli_run
    assert done.returncode == 0, done.stderr[-3000:]
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))      # noqa: E731
    assert files(root / "two") == files(root / "one")                   # the same files, no per-rank extras
    assert done.stdout.count("both phases done") == 1                   # rank 1's stdout is quiet
    for phase in ("frames", "video"):
        assert_close_fp32(load_checkpoint(root / "two" / f"{phase}.ckpt"),
                          load_checkpoint(root / "one" / f"{phase}.ckpt"))
    logs = [[json.loads(line) for line in open(root / d / "log.jsonl")] for d in ("two", "one")]
    assert [(r["phase"], r["step"]) for r in logs[0]] == [(r["phase"], r["step"]) for r in logs[1]]
    for a, b in zip(*logs):
        assert (a["d_loss"], a["g_loss"]) == pytest.approx((b["d_loss"], b["g_loss"]), rel=1e-4)


def test_two_process_checkpoint_resumes_on_one_process(cli_run, tmp_path):
    _, root = cli_run
    for name in ("two", "one"):
        shutil.copy(root / name / "frames.ckpt", tmp_path / f"{name}.ckpt")
        (tmp_path / name).mkdir()
        shutil.copy(root / name / "frames.ckpt", tmp_path / name / "frames.ckpt")
        state = train.open_phase("frames", tmp_path / name, None, resume=True, overrides={"max_steps": 5})
        assert len(state.discriminators) == 5
        train.train_phase(state, tmp_path / name, progress=False)
    assert_close_fp32(load_checkpoint(tmp_path / "two" / "frames.ckpt"),
                      load_checkpoint(tmp_path / "one" / "frames.ckpt"))


# ----------------------------------------------------------------------------------------------- sharding

def test_shard_ranges_are_contiguous_and_balanced():
    assert distributed.shard_ranges(5, 2) == [range(0, 3), range(3, 5)]
    assert distributed.shard_ranges(192, 4) == [range(48 * r, 48 * (r + 1)) for r in range(4)]
    assert [len(r) for r in distributed.shard_ranges(7, 3)] == [3, 2, 2]
    with pytest.raises(ConfigError, match="need at least 4 discriminators"):
        distributed.shard_ranges(3, 4)


def test_one_process_is_untouched():
    state = build_state(small_cfg(), "frames")
    distributed.prepare(state)                       # no process group: nothing changes
    assert isinstance(state.discriminators, torch.nn.ModuleList) and not distributed.active()
    assert distributed.is_main() and distributed.launch_env() is None


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
