"""Training steps of both phases (CPU, reference path, tiny widths): who learns, who stays frozen, NaN stops."""
import copy
import numpy as np
import pytest
import torch

from vidgan_fast import losses, train
from vidgan_fast.config import preset
from vidgan_fast.errors import TrainingError
from vidgan_fast.train import open_phase, real_batch, train_phase
from vidgan_fast.step import build_state, d_step, g_step

SMALL = dict(n_videos=8, frames_batch=4, video_batch=2, frames_epochs=1, video_epochs=1, log_every=1,
             checkpoint_every=100)


def small_cfg(**kw):
    return preset("tiny", **{**SMALL, **kw})


pytestmark = pytest.mark.usefixtures("one_thread")    # tests/conftest.py


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module, names=None):
    after = module.state_dict()
    return {k for k in before if (names is None or k in names) and not torch.equal(before[k], after[k])}


def param_names(module):
    return {k for k, _ in module.named_parameters()}


def optimizer_params(*opts):
    return {id(p) for opt in opts if opt is not None for group in opt.param_groups for p in group["params"]}


@pytest.fixture(scope="module")
def frames_state_dict():
    return build_state(small_cfg(), "frames").generator.state_dict()


def video_state(frames_state_dict, **kw):
    return build_state(small_cfg(**kw), "video", frames_state_dict)


def step_both(state):
    source, n = train.open_source(state.cfg)
    batch = state.phase.batch
    real = real_batch(state, source, n)
    return real, torch.randn(batch, 100), torch.randn(batch, 100)


def test_phase1_steps_update_only_their_side():
    state = build_state(small_cfg(), "frames")
    real, z_d, z_g = step_both(state)
    assert real.shape == (4, 1, 30, 30) and real.min() >= -1 and real.max() <= 1
    g0, d0 = snapshot(state.generator), snapshot(state.discriminators)
    d_step(state, real, z_d)
    assert changed(d0, state.discriminators, param_names(state.discriminators)) == param_names(state.discriminators)
    assert not changed(g0, state.generator, param_names(state.generator))
    g1, d1 = snapshot(state.generator), snapshot(state.discriminators)
    g_step(state, z_g)
    assert changed(g1, state.generator, param_names(state.generator)) == param_names(state.generator)
    assert not changed(d1, state.discriminators)
    assert all(p.requires_grad for p in state.discriminators.parameters())   # restored after the G step


def test_phase2_steps_keep_frame_generator_frozen(frames_state_dict):
    state = video_state(frames_state_dict)
    real, z_d, z_g = step_both(state)
    assert real.shape == (2, 1, 30, 30, 30)
    f0, g0, d0 = snapshot(state.frame_generator), snapshot(state.generator), snapshot(state.discriminators)
    d_step(state, real, z_d)
    g_step(state, z_g)
    assert changed(g0, state.generator, param_names(state.generator)) == param_names(state.generator)
    assert changed(d0, state.discriminators, param_names(state.discriminators)) == param_names(state.discriminators)
    assert not changed(f0, state.frame_generator)            # weights and batch-norm statistics
    assert not state.frame_generator.training
    assert not any(p.requires_grad for p in state.frame_generator.parameters())
    in_opts = optimizer_params(state.g_opt, state.d_opt, state.f_opt)
    assert state.f_opt is None and not in_opts & {id(p) for p in state.frame_generator.parameters()}
    for k, v in frames_state_dict.items():                  # G_F is the phase-1 generator
        assert torch.equal(state.frame_generator.state_dict()[k], v)


def test_finetune_updates_frame_generator(frames_state_dict):
    state = video_state(frames_state_dict, finetune_frames=True, finetune_lr=1e-4)
    real, z_d, z_g = step_both(state)
    f0 = snapshot(state.frame_generator)
    d_step(state, real, z_d)
    assert not changed(f0, state.frame_generator)            # the D step does not train G_F
    g_step(state, z_g)
    names = param_names(state.frame_generator)
    assert changed(f0, state.frame_generator, names) == names
    buffers = set(f0) - names                                 # batch norm stays in eval mode: stats unchanged
    assert buffers and not changed(f0, state.frame_generator, buffers)
    assert optimizer_params(state.f_opt) == {id(p) for p in state.frame_generator.parameters()}
    assert state.f_opt.param_groups[0]["lr"] == 1e-4


@pytest.mark.parametrize("phase", ["frames", "video"])
def test_projections_fixed_and_absent_from_optimizers(phase, frames_state_dict):
    state = build_state(small_cfg(), "frames") if phase == "frames" else video_state(frames_state_dict)
    projections = [d.projection for d in state.discriminators]
    before = [p.clone() for p in projections]
    assert not optimizer_params(state.g_opt, state.d_opt, state.f_opt) & {id(p) for p in projections}
    real, z_d, z_g = step_both(state)
    d_step(state, real, z_d)
    g_step(state, z_g)
    assert all(torch.equal(a, b) for a, b in zip(before, [d.projection for d in state.discriminators]))
    seeds = [d.seed for d in state.discriminators]
    assert len(set(seeds)) == len(seeds)                      # each discriminator its own projection


@pytest.mark.parametrize("loss", losses.COMBINATIONS)
def test_every_loss_combination_trains(loss):
    state = build_state(small_cfg(loss=loss), "frames")
    real, z_d, z_g = step_both(state)
    d_step(state, real, z_d)
    g0 = snapshot(state.generator)
    value = g_step(state, z_g)
    assert torch.isfinite(value)
    assert changed(g0, state.generator, param_names(state.generator))


def test_epoch_plan_is_a_permutation_and_deterministic():
    order, frame_of = train.epoch_plan(3, 1, 2, 50)
    assert sorted(order.tolist()) == list(range(50)) and frame_of.min() >= 0 and frame_of.max() < 30
    again = train.epoch_plan.__wrapped__(3, 1, 2, 50)
    assert np.array_equal(order, again[0]) and np.array_equal(frame_of, again[1])
    assert not np.array_equal(order, train.epoch_plan(3, 1, 3, 50)[0])


def test_train_phase_logs_and_checkpoints(tmp_path):
    cfg = small_cfg(frames_epochs=2, checkpoint_every=3)        # 2 steps per epoch, 4 steps
    state = train_phase(open_phase("frames", tmp_path, cfg), tmp_path, progress=False)
    assert (state.step, state.epoch, state.batch_in_epoch) == (4, 2, 0)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"phase": "frames"' in lines[0] and '"d_loss"' in lines[0]
    assert (tmp_path / "frames.ckpt").exists()


def test_train_phase_runs_on_cpu_threads_and_restores_them(tmp_path, monkeypatch):
    from vidgan_fast import step as step_module
    seen, real_step = [], step_module.EagerSteps.step

    def step(self, real):
        seen.append(torch.get_num_threads())
        return real_step(self, real)
    monkeypatch.setattr(step_module.EagerSteps, "step", step)
    before = torch.get_num_threads()
    threads = 1 if before > 1 else 2
    train_phase(open_phase("frames", tmp_path, small_cfg(frames_epochs=1, cpu_threads=threads)), tmp_path,
                progress=False)
    assert seen == [threads, threads] and torch.get_num_threads() == before
    assert preset("small").cpu_threads == 1 and preset("paper").cpu_threads == 0


def nan_losses(after_calls):
    """A discriminator_losses that returns NaN from call number `after_calls` on."""
    real_fn, calls = losses.discriminator_losses, [0]

    def fn(real, fake):
        calls[0] += 1
        out = real_fn(real, fake)
        return out * float("nan") if calls[0] > after_calls else out
    return fn


def test_nan_loss_stops_without_overwriting(tmp_path, monkeypatch):
    cfg = small_cfg(frames_epochs=4, checkpoint_every=2)
    train_phase(open_phase("frames", tmp_path, cfg.replace(max_steps=2)), tmp_path, progress=False)
    ckpt = tmp_path / "frames.ckpt"
    good = ckpt.read_bytes()
    monkeypatch.setattr(losses, "discriminator_losses", nan_losses(after_calls=1))
    state = open_phase("frames", tmp_path, cfg, resume=True, overrides={"max_steps": 6})
    with pytest.raises(TrainingError, match=r"loss is NaN at step 4 \(phase 1 discriminator loss\)"):
        train_phase(state, tmp_path, progress=False)
    assert ckpt.read_bytes() == good                           # the step-4 checkpoint was not written


def test_nan_loss_in_a_new_run_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(losses, "discriminator_losses", nan_losses(after_calls=0))
    with pytest.raises(TrainingError, match=r"loss is NaN at step 1 .*nothing was saved"):
        train_phase(open_phase("frames", tmp_path, small_cfg(checkpoint_every=1)), tmp_path, progress=False)
    assert not (tmp_path / "frames.ckpt").exists()


def test_new_run_refuses_a_folder_with_a_checkpoint(tmp_path):
    (tmp_path / "frames.ckpt").write_bytes(b"precious")
    with pytest.raises(TrainingError, match="already holds frames.ckpt; pass --resume"):
        open_phase("frames", tmp_path, small_cfg())
    assert (tmp_path / "frames.ckpt").read_bytes() == b"precious"


def test_d_step_runs_the_discriminators_once_on_real_and_fake():
    """One pass over the [2B] batch (real first), and the same losses and weight gradients as two passes, in fp64
    (the discriminators hold no batch statistics: only the summation order of the weight gradients differs)."""
    state = build_state(small_cfg(), "frames")
    state.generator.double(), state.discriminators.double()
    real, z_d, _ = step_both(state)
    real, z_d = real.double(), z_d.double()
    seen = []
    state.discriminators.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    twin = copy.deepcopy(state)
    d_step(state, real, z_d)
    assert seen == [2 * len(real)]
    with torch.no_grad():
        fake = twin.generate(z_d)
    twin.d_opt.zero_grad()
    two_pass = losses.discriminator_losses(twin.discriminators(real), twin.discriminators(fake))
    two_pass.sum().backward()
    twin.d_opt.step()
    for (name, a), b in zip(state.discriminators.named_parameters(), twin.discriminators.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15, msg=name)
