"""--fast training: fast steps equal reference steps (CPU, Triton interpreter), the fallback warning, checkpoint
interchange between the paths, and (GPU only) CUDA-graph replay equal to eager steps.

Tolerances: vidgan_fast.tolerance, as the CUDA-graph check applies it to whole steps (fast/graph_check.py): fp32
sums of n terms, n = 2 B x the pixels of a sample (the longest sum of a step, the first layer's weight gradient),
relative to the largest reference value of each loss and tensor. G_F's biases before a train-mode batch norm are
left out: their true gradient is 0, so theirs is rounding noise, which RMSprop turns into +-10 lr steps that
differ between any two summation orders (they have no effect on any output). The same holds for each
discriminator's logit bias at the start (its gradient from real and fake nearly cancels).
"""
from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch

from vidgan_fast import train
from vidgan_fast.config import preset
from vidgan_fast.fast import backend
from vidgan_fast.fast.bank import FrameDiscriminatorBank, VideoDiscriminatorBank
from vidgan_fast.execution import plan
from vidgan_fast.fast import graph_check
from vidgan_fast.fast.engine import FastPathUnavailable, is_fast, to_fast
from vidgan_fast.fast.frozen_generator import FrozenFrameGenerator
from vidgan_fast.tolerance import relative_error
from vidgan_fast.models import DiscriminatorList
from vidgan_fast.step import EagerSteps, Phase, build_frame_generator, build_state, d_step, g_step

SMALL = dict(frames_k=3, video_k=2, frames_batch=5, video_batch=3, gf_widths=(16, 16, 8, 8), df_widths=(4, 8, 8),
             gv_hidden=(16, 32), gv_lstm=8, dv_widths=(4, 4, 8), n_videos=16)
STEPS = 2


def small_cfg(**kw):
    return preset("tiny", **{**SMALL, **kw})


def fresh(cfg, phase):
    """A new state of `phase`; phase 2 gets the same G_F weights every time (drawn from seed 123)."""
    gf = None
    if phase == "video":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            gf = build_frame_generator(cfg).state_dict()
    return build_state(cfg, phase, gf)


def real_and_noise(cfg, phase, step):
    batch = Phase.of(cfg, phase).batch
    gen = torch.Generator().manual_seed(100 + step)
    shape = (batch, 1, 30, 30) if phase == "frames" else (batch, 1, 30, 30, 30)
    return (torch.rand(shape, generator=gen) * 2 - 1, torch.randn(batch, 100, generator=gen),
            torch.randn(batch, 100, generator=gen))


BEFORE_BATCH_NORM = {"fc.bias", "up1.bias", "up2.bias", "up3.bias"}     # models.FrameGenerator


def step_tolerance(state):
    """Both runs are fp32, each within the policy's bound of the fp64 result, so they differ by up to twice it."""
    return 2 * graph_check.step_tolerance(state, tf32=False)


def discriminator_gradients(state) -> dict:
    """The reference state's discriminator gradients (checkpoint keys), to tell signal from rounding noise."""
    return {f"{i}.{name}": p.grad.detach().clone() for i, d in enumerate(state.discriminators)
            for name, p in d.named_parameters() if p.grad is not None}


def generator_gradients(state) -> dict:
    """The reference state's generator gradients (checkpoint keys), likewise."""
    return {name: p.grad.detach().clone() for name, p in state.generator.named_parameters() if p.grad is not None}


NOISE_FRACTION = 0.05


def assert_states_close(a, b, gradients=None, generator_grads=None):
    """a and b within twice the policy bound. With `gradients` (the RMS over a's D steps of each discriminator
    gradient), weight elements whose gradient was under NOISE_FRACTION of their tensor's largest are left out: RMSprop
    divides each element's gradient by its own RMS, so rounding that the policy bounds relative to the largest
    gradient becomes, for an element 1/f smaller, an error 1/f larger in its update (measured: the logit weight
    whose gradient was 1.5% of the largest moved 1.0x the bound apart)."""
    pa, pb, tol = train.checkpoint_payload(a, False), train.checkpoint_payload(b, False), step_tolerance(b)
    for part in ("generator", "discriminators"):
        assert pa[part].keys() == pb[part].keys()
        for key in pa[part]:
            if a.phase.name == "frames" and part == "generator" and key in BEFORE_BATCH_NORM:
                continue
            if part == "discriminators" and key.endswith("conv4.bias"):
                continue        # the logit's bias: d/db = mean(sigmoid(real) - 1) + mean(sigmoid(fake)) ~ 0 at init
            x, y = pb[part][key].float(), pa[part][key].float()
            grads = gradients if part == "discriminators" else generator_grads
            if grads is not None and key in grads:
                g = grads[key].abs()
                noise = (g > 0) & (g < NOISE_FRACTION * g.max())
                assert noise.sum() < 0.5 * (g > 0).sum(), f"{key}: most live elements are noise-dominated"
                x = torch.where(noise, y, x)      # the same scale (max |y| over the whole tensor), noise left out
            err = relative_error(x, y)
            assert err <= tol, f"{part}.{key}: relative error {err:.3g} > {tol:.3g}"


def assert_gradients_close(what, fast: dict, ref: dict, tol: float):
    for key, g in ref.items():
        err = relative_error(fast[key], g)
        assert err <= tol, f"{what} {key}: gradient relative error {err:.3g} > {tol:.3g}"


def bank_gradients(state) -> dict:
    """The fast state's discriminator gradients in the reference's checkpoint keys."""
    bank = state.discriminators
    return {f"{k}.{suffix}": bank.get_parameter(name).grad[k] for k in range(bank.k)
            for name, suffix in bank.stacked_parameter_names() if bank.get_parameter(name).grad is not None}


def as_fp64(state):
    """The state's modules in fp64, in place (the optimizers hold the same, converted parameters)."""
    for module in (state.generator, state.discriminators, state.renderer):
        if module is not None:
            module.double()
    return state


@pytest.mark.parametrize("phase", ["frames", "video"])
def test_fast_steps_equal_reference_steps(phase):
    """STEPS steps of phase 1 (the second one on the optimizer state of the first), one of phase 2 (its 3-D banks
    and frozen G_F under the interpreter take 30 s a step), the fast state, the fp32 reference and an fp64 run of the
    reference side by side. Each step's computation on the same weights: before every D and every G step the fast
    state and the fp32 reference take the fp64 run's weights (RMSprop's first steps turn the rounding of near-zero
    gradients into whole updates, so runs drift apart by more than any fp32 bound, and a G step's gradient flows
    through the D step's new weights). Then the losses and every gradient of the step: the fast one is as close to
    fp64 as the fp32 reference is (within 4x), or within the fp32 policy bound, whichever is larger (the batch norms
    of G_V and G_F amplify rounding, for both fp32 runs alike). The optimizers: tests/test_rmsprop.py, test_bank.py."""
    cfg = small_cfg()
    ref, fast, ref64 = fresh(cfg, phase), to_fast(fresh(cfg, phase)), as_fp64(fresh(cfg, phase))
    assert is_fast(fast) and isinstance(fast.discriminators, (FrameDiscriminatorBank, VideoDiscriminatorBank))
    fast.discriminators.fuse_optimizer(None)    # every gradient is returned, to be compared (the fused step: below)
    if phase == "video":
        assert isinstance(fast.renderer, FrozenFrameGenerator)
    tol = step_tolerance(ref) / 2
    skip = {f"{k}.conv4.bias" for k in range(cfg.frames_k if phase == "frames" else cfg.video_k)}  # ~0 at init
    skip |= BEFORE_BATCH_NORM if phase == "frames" else set()      # true gradient 0: rounding noise only

    def same_weights():
        discs, gen = ref64.discriminators.state_dict(), ref64.generator.state_dict()
        fast.discriminators.load_reference_state_dict(discs)
        for state in (ref, fast):
            state.generator.load_state_dict(gen)
        ref.discriminators.load_state_dict(discs)

    def close(what, fast_value, ref_value, value64):
        err, err_ref = relative_error(fast_value, value64), relative_error(ref_value, value64)
        assert err <= max(tol, 4 * err_ref), f"{what}: relative error {err:.3g} (fp32 reference {err_ref:.3g})"

    for step in range(STEPS if phase == "frames" else 1):
        real, z_d, z_g = real_and_noise(cfg, phase, step)
        same_weights()
        losses = [d_step(s, x, z) for s, x, z in ((fast, real, z_d), (ref, real, z_d),
                                                  (ref64, real.double(), z_d.double()))]
        close(f"D loss {step}", *losses)
        grads = bank_gradients(fast), discriminator_gradients(ref), discriminator_gradients(ref64)
        for key in grads[2]:
            if key not in skip:
                close(f"D step {step} {key}", grads[0][key], grads[1][key], grads[2][key])
        same_weights()
        losses = [g_step(s, z) for s, z in ((fast, z_g), (ref, z_g), (ref64, z_g.double()))]
        close(f"G loss {step}", *losses)
        grads = generator_gradients(fast), generator_gradients(ref), generator_gradients(ref64)
        for key in grads[2]:
            if key not in skip:
                close(f"G step {step} {key}", grads[0][key], grads[1][key], grads[2][key])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_weight_steps_in_the_backward_equal_the_optimizer_step(precision):
    """The fast D step applies RMSprop to conv1..conv3's weights in the bank's backward, in the weight-gradient
    launches (fast/bank.py fuse_optimizer): those weights get no .grad and FusedRMSprop.step() updates the rest.
    Two D steps of it equal, bitwise (the same kernel math on the same fp32 gradients), two D steps of a bank
    whose backward returns every gradient for FusedRMSprop.step(): losses, weights, bf16 copies, square averages
    and step counters."""
    cfg = small_cfg()
    fused, separate = (to_fast(fresh(cfg, "frames"), precision) for _ in range(2))
    separate.discriminators.fuse_optimizer(None)
    for step in range(2):
        real, z_d, _ = real_and_noise(cfg, "frames", step)
        assert torch.equal(d_step(fused, real, z_d), d_step(separate, real, z_d))
    bank = fused.discriminators
    assert [n for n, p in bank.named_parameters() if p.grad is None] == [f"conv{i}_weight" for i in (1, 2, 3)]
    assert all(p.grad is not None for p in separate.discriminators.parameters())
    for (name, a), b in zip([*bank.named_parameters(), *bank.named_buffers()],
                            [*separate.discriminators.parameters(), *separate.discriminators.buffers()]):
        assert torch.equal(a, b), name
    assert len(bank.stored_weights()) == (4 if precision == "bf16" else 0)
    states = [[opt.state[p][key] for p in opt.param_groups[0]["params"] for key in ("step", "square_avg")]
              for opt in (fused.d_opt, separate.d_opt)]
    assert len(states[0]) == 16 and all(torch.equal(a, b) for a, b in zip(*states))
    assert all(s["step"].item() == 2 for s in fused.d_opt.state.values())


def test_to_fast_leaves_the_random_streams_alone():
    """--fast must draw the same noise as the reference path from the same seed."""
    state = fresh(small_cfg(), "frames")
    before = torch.get_rng_state()
    to_fast(state)
    assert torch.equal(torch.get_rng_state(), before)


def test_fallback_warns_once_and_runs_the_reference_path(monkeypatch):
    """The one --fast decision (execution.plan): where Triton cannot run, one warning and the reference steps;
    to_fast itself refuses (FastPathUnavailable) and changes nothing."""
    monkeypatch.setattr(backend, "interpreting", lambda: False)
    backend._warned.clear()
    state = fresh(small_cfg(fast=True), "frames")
    with pytest.raises(FastPathUnavailable, match="no CUDA GPU"):
        to_fast(state)
    with pytest.warns(RuntimeWarning, match="--fast: running the PyTorch reference path instead: no CUDA GPU"):
        run = plan(state, None)
    assert not run.fast and not run.graphs and isinstance(run.steps, EagerSteps)
    assert isinstance(state.discriminators, DiscriminatorList) and not is_fast(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # the second time: no new warning
        plan(fresh(small_cfg(fast=True), "frames"), None)


@pytest.mark.parametrize("phase", ["frames", "video"])
def test_checkpoints_interchange_between_paths(phase):
    """A fast checkpoint loads on the reference path and back, weights and optimizer states unchanged. The
    optimizer state comes from a fast step in phase 1 and, in phase 2, from a reference step before to_fast (a
    fast phase-2 step under the interpreter takes 30 s; what is checked here is the layout conversion)."""
    cfg = small_cfg()
    real, z_d, z_g = real_and_noise(cfg, phase, 0)
    if phase == "frames":
        fast = to_fast(fresh(cfg, phase))
        d_step(fast, real, z_d), g_step(fast, z_g)
    else:
        ref = fresh(cfg, phase)
        d_step(ref, real, z_d), g_step(ref, z_g)
        fast = to_fast(ref)
    saved = copy.deepcopy(train.checkpoint_payload(fast, False))
    as_ref = train.state_from_checkpoint(saved, "fast.ckpt")
    assert isinstance(as_ref.discriminators, DiscriminatorList)
    again = train.checkpoint_payload(as_ref, False)
    back = train.checkpoint_payload(to_fast(train.state_from_checkpoint(again, "ref.ckpt")), False)
    for payload in (again, back):
        for part in ("generator", "discriminators"):
            for key, value in saved[part].items():
                assert torch.equal(payload[part][key], value), f"{part}.{key}"
        for name in ("generator", "discriminators"):
            a, b = saved["optimizers"][name]["state"], payload["optimizers"][name]["state"]
            assert a.keys() == b.keys()
            for i in a:
                for key in a[i]:
                    assert torch.equal(a[i][key].cpu(), b[i][key].cpu()), f"{name} state {i} {key}"


def assert_switch_continues_the_run(first, switch):
    """1 step of `first`, then `switch(first)` and 1 step of the state it returns == 2 reference steps (within the fp32
    tolerance, elements whose gradient is rounding noise left out: assert_states_close)."""
    cfg = small_cfg()
    straight, gradients = fresh(cfg, "frames"), None
    for step in range(2):
        real, z_d, z_g = real_and_noise(cfg, "frames", step)
        d_step(straight, real, z_d)
        now = discriminator_gradients(straight)
        gradients = now if gradients is None else {k: g.hypot(now[k]) for k, g in gradients.items()}
        g_step(straight, z_g)
        first = switch(first) if step == 1 else first
        d_step(first, real, z_d), g_step(first, z_g)
    assert_states_close(straight, first, gradients)


def test_fast_then_reference_continues_the_same_run():
    """1 fast step, checkpoint, 1 reference step == 2 reference steps."""
    assert_switch_continues_the_run(to_fast(fresh(small_cfg(), "frames")), lambda fast: train.state_from_checkpoint(
        copy.deepcopy(train.checkpoint_payload(fast, False)), "fast.ckpt"))


def test_reference_then_fast_continues_the_same_run():
    """1 reference step, to_fast (the optimizer state converted into the bank's channels-last layout), 1 fast step
    == 2 reference steps: what --fast --resume of a reference checkpoint runs."""
    def switch(ref):
        fast = to_fast(ref)
        for p in fast.discriminators.parameters():
            assert fast.d_opt.state[p]["square_avg"].stride() == p.stride()
        return fast
    assert_switch_continues_the_run(fresh(small_cfg(), "frames"), switch)


def test_cli_fast_phase1_under_the_interpreter(tmp_path):
    from click.testing import CliRunner

    from vidgan_fast.cli import main
    result = CliRunner().invoke(main, ["train", "frames", "--preset", "tiny", "--fast", "--steps", "2",
                                       "--frames-k", "2", "--frames-batch", "4", "--df-widths", "4,8,8",
                                       "--gf-widths", "16,16,8,8", "--n-videos", "8", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    ckpt = torch.load(tmp_path / "frames.ckpt", weights_only=True)
    assert ckpt["config"]["fast"] is True and "0.conv1.weight" in ckpt["discriminators"]


def test_cli_fast_without_a_gpu_warns_in_one_line_and_trains(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from vidgan_fast.cli import main
    monkeypatch.setattr(backend, "interpreting", lambda: False)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)    # restored after the test
    backend._warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # print warnings as a user's terminal would (pytest otherwise records them instead)
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        result = CliRunner().invoke(main, ["train", "frames", "--preset", "tiny", "--fast", "--steps", "2",
                                           "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "--fast" in line]
    assert lines == ["warning: --fast: running the PyTorch reference path instead: no CUDA GPU (set TRITON_INTERPRET=1 "
                     "to run the Triton kernels on the CPU through the interpreter)"]
    assert (tmp_path / "frames.ckpt").exists()


def test_cli_fast_refuses_to_train_when_an_op_disagrees(tmp_path, monkeypatch):
    """`vidgan train --fast` checks its ops first: a kernel that is off stops it with one line, nothing saved."""
    from click.testing import CliRunner

    from vidgan_fast.cli import main
    from vidgan_fast.kernels import projection
    original = projection.project_forward
    monkeypatch.setattr(projection, "project_forward", lambda *a, **kw: original(*a, **kw) + 1e-3)
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(main, ["train", "frames", "--preset", "tiny", "--fast", "--steps", "2",
                                       "--device", "cpu", "--out", str(tmp_path)])     # no 'device: ...' line
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("error: fast path check failed: "
                                                                         "project_frames forward")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.gpu
@pytest.mark.parametrize("phase", ["frames", "video"])
def test_graph_replay_equals_eager_steps(phase):
    """3 replays vs 3 eager steps (same batches and noise): losses, parameters, BN buffers and every optimizer
    state tensor, at tiny sizes (`vidgan check --device cuda --paper-size` does the paper's). The CPU twin of this
    test, with a stand-in graph, is tests/test_graphs.py."""
    from vidgan_fast.fast.graph_check import check_graphed_steps
    worst, rel, tol, passed, note = check_graphed_steps(phase, "cuda", steps=3)
    assert "optimizer state" in note and passed, f"{note}: max abs {worst:.3g}, relative {rel:.3g} > {tol}"
