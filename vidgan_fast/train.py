"""The two training phases (reference path), nanoGPT style: the whole step is readable in d_step / g_step.

Phase 1 ("frames"): G_F against K frame discriminators, on one random frame per video per epoch.
Phase 2 ("video"):  G_V against K video discriminators; G_F comes from a phase-1 checkpoint, frozen (eval mode,
                    no gradients, in no optimizer) unless cfg.finetune_frames.

The steps only assume that `state.discriminators` maps x -> logits [K, B] and has .parameters(), and that
`state.renderer` maps codes -> frames: `--fast` (fast/engine.py) swaps those modules for a Triton bank and
the folded Triton G_F, and replays the two steps as CUDA graphs on a GPU (fast/graphs.py); the loop stays.

    state = open_phase("frames", "runs/x", cfg)     # new run (refused if runs/x/frames.ckpt exists)
    train_phase(state, "runs/x")                    # log.jsonl, frames.ckpt (atomic), SIGINT/SIGTERM -> save
    train_all(cfg, "runs/x")                        # both phases, then samples: the main job
"""
from __future__ import annotations

import contextlib
import functools
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import distributed, losses
from .checkpoint import frame_generator_of, load_checkpoint, load_matching, restore_rng_states, rng_states
from .config import TrainConfig, check_batch
from .data import VideoSource, load_videos, to_model_range
from .errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from .loop import LossLog, cut_log, new_run_id
from .models import (FrameGenerator, VideoGenerator, calibrate_codes, frame_discriminators,
                     video_discriminators)
from .profiling import nvtx_range

Z_DIM = 100
FRAMES = 30
PHASE_NUMBER = {"frames": 1, "video": 2}


def phase_settings(cfg: TrainConfig, phase: str) -> tuple[int, int, float, int]:
    """(K, batch, lr, epochs) of a phase."""
    if phase == "frames":
        return cfg.frames_k, cfg.frames_batch, cfg.frames_lr, cfg.frames_epochs
    return cfg.video_k, cfg.video_batch, cfg.video_lr, cfg.video_epochs


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"invalid --device {name}: no CUDA GPU is available on this machine (or this torch "
                          f"is a CPU build); use --device cpu")
    return device


@dataclass
class TrainState:
    """Everything one phase trains with; the checkpoint is this object's state."""
    phase: str                            # "frames" or "video"
    cfg: TrainConfig
    device: torch.device
    generator: nn.Module                  # G_F (phase 1) or G_V (phase 2)
    discriminators: nn.Module             # x -> logits [K, B]
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    frame_generator: nn.Module | None = None      # phase 2: G_F (reference module; what checkpoints hold)
    f_opt: torch.optim.Optimizer | None = None    # phase 2 with finetune_frames
    renderer: nn.Module | None = None             # phase 2: what renders the codes (fast: the frozen Triton G_F)
    fast: bool = False                            # set by fast.engine.to_fast
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    last_losses: dict = field(default_factory=dict)
    run: str = field(default_factory=new_run_id)  # in every log line and the checkpoint; kept on --resume

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        if self.phase == "frames":
            return self.generator(z)                           # [B, 1, 30, 30]
        return self.generator(z, self.renderer)                # [B, 1, 30, 30, 30]

    def autocast(self):
        """bf16 autocast of the forward passes when cfg.bf16 holds on this device, else a no-op."""
        return torch.autocast(self.device.type, torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    @property
    def bf16(self) -> bool:
        return self.cfg.bf16 and self.device.type == "cuda" and torch.cuda.is_bf16_supported()


def build_frame_generator(cfg: TrainConfig) -> FrameGenerator:
    return FrameGenerator(Z_DIM, cfg.gf_widths)


def build_video_generator(cfg: TrainConfig) -> VideoGenerator:
    return VideoGenerator(Z_DIM, cfg.gv_hidden, steps=FRAMES, lstm_hidden=cfg.gv_lstm, code_dim=Z_DIM,
                          code_map=cfg.video_codes, forget_bias=cfg.gv_forget_bias)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode (batch norm uses its running statistics) and no gradients for the weights."""
    return module.eval().requires_grad_(False)


def build_state(cfg: TrainConfig, phase: str, frame_generator_state: dict | None = None,
                frames_path: str | Path = "the frames checkpoint", device: torch.device | None = None) -> TrainState:
    """Fresh models and optimizers for `phase`, initialised from cfg.seed (phase 2: G_F from its state).

    `device` overrides cfg.device (the compile gate builds shape-only states on the meta device)."""
    check_batch(cfg, phase)
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    if device.type == "cuda":       # PyTorch's TF32 switches follow the run's choice, as the kernels do
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    if device.type != "meta":             # a missing or malformed --data file is found before any model is built
        open_source(cfg)
    k, _, lr, _ = phase_settings(cfg, phase)
    torch.manual_seed(cfg.seed * 2 + PHASE_NUMBER[phase] - 1)
    renderer, f_opt = None, None
    if phase == "frames":
        generator = build_frame_generator(cfg)
        discriminators = frame_discriminators(k, cfg.df_widths, seed=cfg.seed * 100_000)
    else:
        if frame_generator_state is None:
            raise TrainingError("phase 2 needs a trained frame generator: pass --frames CKPT")
        renderer = build_frame_generator(cfg)
        load_matching(renderer, frame_generator_state, "the frame generator", frames_path)
        renderer = renderer.to(device).eval()       # batch norm frozen in both modes
        if cfg.finetune_frames:
            f_opt = torch.optim.RMSprop(renderer.parameters(), lr=cfg.finetune_lr)
        else:
            freeze(renderer)
        generator = build_video_generator(cfg)
        if cfg.calibrate_codes:            # models.calibrate_codes: G_V's codes start at G_F's N(0, I) scale
            calibrate_codes(generator, seed=cfg.seed)
        discriminators = video_discriminators(k, cfg.dv_widths, seed=1000 + cfg.seed * 100_000)
    generator, discriminators = generator.to(device).train(), discriminators.to(device).train()
    if cfg.bf16 and not (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        warnings.warn(f"--bf16 ignored: {device} does not support bf16 autocast", RuntimeWarning, stacklevel=2)
    return TrainState(phase, cfg, device, generator, discriminators,
                      g_opt=torch.optim.RMSprop(generator.parameters(), lr=lr),
                      d_opt=torch.optim.RMSprop(discriminators.parameters(), lr=lr),
                      frame_generator=renderer, f_opt=f_opt, renderer=renderer)


def apply_fast(state: TrainState) -> TrainState:
    """With cfg.fast: the fast twin of `state` (fast/engine.py), its ops first checked against their
    references on this device (cfg.fast_check); without it, or where Triton cannot run, `state` as it is."""
    if not state.cfg.fast:
        return state
    from .fast.engine import to_fast
    state = to_fast(state)
    if state.fast and state.cfg.fast_check:
        from .check import first_step_check
        first_step_check(state.device, phase=PHASE_NUMBER[state.phase])
    return state


# ----------------------------------------------------------------------------------------------- the step

def d_step(state: TrainState, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """One RMSprop step of every discriminator on its own loss. Returns the mean loss (detached)."""
    with nvtx_range("generator forward", "generator"), torch.no_grad(), state.autocast():
        fake = state.generate(z)
    with nvtx_range("discriminator forward", "discriminator"), state.autocast():
        per_disc = losses.discriminator_losses(state.discriminators(real), state.discriminators(fake))   # [K]
        per_disc = per_disc.float()
    with nvtx_range("discriminator backward", "backward"):
        state.d_opt.zero_grad(set_to_none=True)
        per_disc.sum().backward()            # discriminator k only sees loss k
    with nvtx_range("discriminator optimizer", "optimizer"):
        state.d_opt.step()
    return per_disc.detach().mean()


def g_step(state: TrainState, z: torch.Tensor) -> torch.Tensor:
    """One RMSprop step of the generator (and of G_F when fine-tuned) on the combined K losses."""
    state.discriminators.requires_grad_(False)     # gradients flow through D to G, none into D's weights
    try:
        with nvtx_range("generator forward", "generator"), state.autocast():
            fake = state.generate(z)
        with nvtx_range("discriminator forward", "discriminator"), state.autocast():
            per_disc = losses.generator_losses(state.discriminators(fake)).float()       # [K]
        loss = losses.combine(per_disc, state.cfg.loss)
        with nvtx_range("generator backward", "backward"):
            state.g_opt.zero_grad(set_to_none=True)
            if state.f_opt is not None:
                state.f_opt.zero_grad(set_to_none=True)
            loss.backward()
        with nvtx_range("generator optimizer", "optimizer"):
            state.g_opt.step()
            if state.f_opt is not None:
                state.f_opt.step()
    finally:
        state.discriminators.requires_grad_(True)
    return loss.detach()


# ----------------------------------------------------------------------------------------------- data

@functools.lru_cache(maxsize=2)
def epoch_plan(seed: int, phase: str, epoch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(video order, frame index per video) of one epoch: a pure function of (seed, phase, epoch)."""
    rng = np.random.default_rng([seed, PHASE_NUMBER[phase], epoch])
    return rng.permutation(n), rng.integers(0, FRAMES, n)


def real_batch(state: TrainState, source, n: int) -> torch.Tensor:
    """The real batch at the state's data position, in [-1, 1]: frames [B,1,30,30] or videos [B,1,30,30,30]."""
    _, batch, _, _ = phase_settings(state.cfg, state.phase)
    order, frame_of = epoch_plan(state.cfg.seed, state.phase, state.epoch, n)
    picked = slice(state.batch_in_epoch * batch, (state.batch_in_epoch + 1) * batch)
    if state.phase == "frames":
        x = source.frames_at(order[picked], frame_of[picked])                 # [B, 30, 30] in [0, 1]
    else:
        x = source.videos(order[picked])                                      # [B, 30, 30, 30] in [0, 1]
    return to_model_range(x.unsqueeze(1)).to(state.device, non_blocking=True)


def open_source(cfg: TrainConfig) -> tuple[VideoSource, int]:
    """The training videos: the first cfg.n_videos of cfg.data, or generated on the fly. Returns (source, n)."""
    if cfg.data is not None:
        held = len(load_videos(cfg.data))
        if held < cfg.n_videos:
            raise ConfigError(f"invalid --n-videos {cfg.n_videos}: the data file {cfg.data} holds only {held} "
                              f"videos; pass --n-videos {held} or fewer")
    return VideoSource.open(cfg.data, cfg.n_videos, seed=cfg.data_seed), cfg.n_videos


# ----------------------------------------------------------------------------------------------- checkpoints

def checkpoint_payload(state: TrainState, complete: bool) -> dict:
    """The checkpoint, always in the reference layout (a fast run resumes on the reference path and back)."""
    from .fast.engine import portable_optimizer_state, reference_optimizer_state, reference_state
    return {
        "phase": state.phase, "config": state.cfg.to_dict(),
        "generator": state.generator.state_dict(),
        "discriminators": reference_state(state.discriminators),
        "frame_generator": None if state.frame_generator is None else state.frame_generator.state_dict(),
        "optimizers": {"generator": portable_optimizer_state(state.g_opt.state_dict()),
                       "discriminators": reference_optimizer_state(state.discriminators, state.d_opt),
                       "frame_generator": None if state.f_opt is None
                       else portable_optimizer_state(state.f_opt.state_dict())},
        "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "complete": complete,
        "rng": rng_states(state.device), "losses": dict(state.last_losses), "run": state.run,
    }


def saved_config(ckpt: dict, path: str | Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except (ConfigError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} holds an unusable config ({e})") from None


def state_from_checkpoint(ckpt: dict, path: str | Path, overrides: dict | None = None) -> TrainState:
    """Rebuild a run exactly where its checkpoint left it (models, optimizers, data position, RNGs).

    `overrides` (e.g. a larger max_steps, another device) replace saved config values.
    """
    cfg = saved_config(ckpt, path).replace(**(overrides or {}))
    phase = ckpt["phase"]
    state = build_state(cfg, phase, ckpt.get("frame_generator"), path)
    load_matching(state.generator, ckpt["generator"], "the generator", path)
    load_matching(state.discriminators, ckpt["discriminators"], "the discriminators", path)
    opts = ckpt["optimizers"]
    state.g_opt.load_state_dict(opts["generator"])
    state.d_opt.load_state_dict(opts["discriminators"])
    if state.f_opt is not None and opts.get("frame_generator") is not None:
        state.f_opt.load_state_dict(opts["frame_generator"])
    _, _, lr, _ = phase_settings(cfg, phase)          # a rate given again on --resume wins over the saved one
    for opt, rate in ((state.g_opt, lr), (state.d_opt, lr), (state.f_opt, cfg.finetune_lr)):
        for group in (opt.param_groups if opt is not None else ()):
            group["lr"] = rate
    state.step, state.epoch, state.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
    state.last_losses = dict(ckpt.get("losses") or {})
    state.run = ckpt.get("run") or state.run
    restore_rng_states(ckpt["rng"], state.device)
    return state


# ----------------------------------------------------------------------------------------------- the loop

def total_steps(cfg: TrainConfig, phase: str, n: int) -> tuple[int, int]:
    """(steps per epoch, steps of the phase)."""
    _, batch, _, epochs = phase_settings(cfg, phase)
    per_epoch = n // batch
    total = per_epoch * epochs
    return per_epoch, total if cfg.max_steps is None else min(total, cfg.max_steps)


def train_phase(state: TrainState, out: str | Path, progress: bool = True) -> TrainState:
    """Train `state` to the end of its phase, logging to out/log.jsonl and checkpointing to out/<phase>.ckpt.

    Losses stay on the device and are checked (NaN/inf) every log_every steps and before every save, so a
    diverged model is never saved. SIGINT/SIGTERM: finish the step, save, raise TrainingInterrupted.
    """
    cfg, out = state.cfg, Path(out)
    distributed.prepare(state)            # torchrun: keep this rank's discriminators (nothing on one process)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{state.phase}.ckpt"
    source, n = open_source(cfg)
    per_epoch, total = total_steps(cfg, state.phase, n)
    _, batch, _, _ = phase_settings(cfg, state.phase)
    graphed = None
    if state.fast and state.device.type == "cuda":
        from .fast.device_data import DeviceVideoSource
        from .fast.graphs import GraphedSteps
        if DeviceVideoSource.fits(source, state.device):
            with nvtx_range("data to the GPU", "data"):
                source = DeviceVideoSource(source, state.device)
        if cfg.graphs and not distributed.active():      # collectives are not captured
            shape = (batch, 1, FRAMES, 30, 30) if state.phase == "video" else (batch, 1, 30, 30)
            try:
                graphed = GraphedSteps(state, shape, batch)
            except RuntimeError as e:     # capture is restored-from-snapshot safe: fall back to eager steps
                warnings.warn(f"--fast: CUDA graph capture failed ({str(e).splitlines()[0]}); running the fast "
                              f"steps without graphs (--no-graphs silences this)", RuntimeWarning, stacklevel=2)
    if distributed.is_main():             # the log holds this phase up to the checkpoint's step, never twice
        cut_log(out / "log.jsonl", state.phase, state.step)
    log = LossLog(distributed.rank_path(out / "log.jsonl"), state.phase, PHASE_NUMBER[state.phase], state.step,
                  state.run)
    saved_step = state.step if ckpt_path.exists() else None        # the step of the checkpoint on disk
    bar = tqdm(total=total, initial=state.step, desc=f"phase {PHASE_NUMBER[state.phase]} ({state.phase})",
               unit="step", disable=not progress or not distributed.is_main(), dynamic_ncols=True)

    def flush() -> None:
        kept = f"{ckpt_path} (step {saved_step}) is kept" if saved_step is not None else "nothing was saved"
        last = log.flush(kept)
        if last is not None:
            state.last_losses = last
            bar.set_postfix(d=f"{last['d_loss']:.3f}", g=f"{last['g_loss']:.3f}", refresh=False)

    def save() -> None:
        nonlocal saved_step
        flush()                                   # never save a model whose losses went NaN
        distributed.save_checkpoint(state, ckpt_path, checkpoint_payload(state, complete=state.step >= total))
        saved_step = state.step

    with distributed.stop_requests() as stop, bar:
        while state.step < total:
            with nvtx_range("data", "data"):
                real = real_batch(state, source, n)
            if graphed is not None:
                d_loss, g_loss = graphed.step(real)
            else:
                z_d = torch.randn(batch, Z_DIM, device=state.device)
                z_g = torch.randn(batch, Z_DIM, device=state.device)
                d_loss = d_step(state, real, z_d)
                g_loss = g_step(state, z_g)
            log.add(state.step + 1, state.epoch, d_loss, g_loss)
            state.step += 1
            state.batch_in_epoch += 1
            if state.batch_in_epoch == per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            bar.update(1)
            distributed.agree_stop(stop)          # torchrun: a signal to any rank stops every rank here
            if state.step % cfg.log_every == 0:
                flush()
            if state.step % cfg.checkpoint_every == 0 or state.step == total or stop:
                save()
            if stop:
                raise TrainingInterrupted(f"{signal.Signals(stop[0]).name} at step {state.step} of phase "
                                          f"{PHASE_NUMBER[state.phase]}: checkpoint saved to {ckpt_path}; "
                                          f"continue with --resume", signum=stop[0])
        if saved_step != state.step:             # not saved yet (a finished phase resumed is not rewritten)
            save()
    return state


# ----------------------------------------------------------------------------------------------- runs

def open_phase(phase: str, out: str | Path, cfg: TrainConfig, resume: bool = False, overrides: dict | None = None,
               frames: str | Path | None = None) -> TrainState:
    """A new phase in run folder `out` (refused if it already holds that phase's checkpoint), or with
    resume=True the run saved there (its saved config, with `overrides` = the options given again)."""
    path = Path(out) / f"{phase}.ckpt"
    if resume:
        if not path.exists():
            raise TrainingError(f"nothing to resume: {path} does not exist")
        return apply_fast(state_from_checkpoint(load_checkpoint(path, expected_phase=phase), path, overrides))
    if path.exists():
        raise TrainingError(f"{out} already holds {path.name}; pass --resume to continue that run "
                            f"or choose another --out")
    if phase == "frames":
        return apply_fast(build_state(cfg, "frames"))
    if frames is None:
        raise TrainingError("phase 2 needs a trained frame generator: pass --frames CKPT")
    generator_state, widths = frame_generator_of(frames, given_widths=(overrides or {}).get("gf_widths"))
    return apply_fast(build_state(cfg.replace(gf_widths=widths), "video", generator_state, frames))


def train_all(cfg: TrainConfig, out: str | Path, resume: bool = False, overrides: dict | None = None,
              progress: bool = True) -> list[Path]:
    """The main job: phase 1, then phase 2 on its G_F, then samples. Returns the sample files written."""
    from .sample import write_samples     # sample.py builds its models with this module's functions
    out = Path(out)
    frames_path, video_path = out / "frames.ckpt", out / "video.ckpt"
    if not resume:
        for path in (frames_path, video_path):
            if path.exists():
                raise TrainingError(f"{out} already holds {path.name}; pass --resume to continue that run "
                                    f"or choose another --out")
    run = None
    if not (resume and video_path.exists()):
        state = open_phase("frames", out, cfg, resume, overrides)
        train_phase(state, out, progress)
        cfg, resume, run = state.cfg, False, state.run   # phase 2 starts fresh, with phase 1's config and run id
    state = open_phase("video", out, cfg, resume, overrides, frames=frames_path)
    state.run = run or state.run
    train_phase(state, out, progress)
    if not distributed.is_main():               # torchrun: rank 0 writes the samples
        return []
    samples = out / "samples"
    return (write_samples(frames_path, samples, n=state.cfg.sample_n, seed=state.cfg.seed)
            + write_samples(video_path, samples, n=state.cfg.sample_n, seed=state.cfg.seed))
