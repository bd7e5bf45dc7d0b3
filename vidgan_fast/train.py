"""Training runs: the loop over the steps of a phase, checkpoints and --resume, and the main job.

What one step is lives in step.py (Phase, TrainState, build_state, d_step, g_step); how the steps execute
(reference, or --fast with its Triton modules and CUDA graphs) is decided in execution.py. This module runs them:

    state = open_phase("frames", "runs/x", cfg)     # new run (refused if runs/x/frames.ckpt exists)
    train_phase(state, "runs/x")                    # log.jsonl, frames.ckpt (atomic), SIGINT/SIGTERM -> save
    train_all(cfg, "runs/x")                        # both phases, then samples: the main job
"""
from __future__ import annotations

import contextlib
import functools
import signal
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import (check_matching, frame_generator_of, load_checkpoint, load_matching, portable_optimizer_state,
                         restore_rng_states, rng_states, saved_config)
from .config import TrainConfig
from .data import VideoSource, load_videos, to_model_range
from .errors import ConfigError, TrainingError, TrainingInterrupted
from .execution import plan
from .limits import check_fits
from .profiling import nvtx_range
from .run_log import LossLog, cut_log, new_run_id
from .sample import write_samples
from .selection import SnapshotSelection, WeightAverage
from .signals import saved, stopping
from .step import FRAMES, TrainState, build_frame_generator, build_state, resolve_device


# ----------------------------------------------------------------------------------------------- data

@functools.lru_cache(maxsize=2)
def epoch_plan(seed: int, phase_number: int, epoch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(video order, frame index per video) of one epoch: a pure function of (seed, phase, epoch)."""
    rng = np.random.default_rng([seed, phase_number, epoch])
    return rng.permutation(n), rng.integers(0, FRAMES, n)


def real_batch(state: TrainState, source, n: int) -> torch.Tensor:
    """The real batch at the state's data position, in [-1, 1]: frames [B,1,30,30] or videos [B,1,30,30,30]."""
    batch = state.phase.batch
    order, frame_of = epoch_plan(state.cfg.seed, state.phase.number, state.epoch, n)
    picked = slice(state.batch_in_epoch * batch, (state.batch_in_epoch + 1) * batch)
    if state.phase.video:
        x = source.videos(order[picked])                                      # [B, 30, 30, 30] in [0, 1]
    else:
        x = source.frames_at(order[picked], frame_of[picked])                 # [B, 30, 30] in [0, 1]
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
    d = state.discriminators            # models.DiscriminatorList, a fast bank or distributed's shards: one layout
    return {
        "phase": state.phase.name, "config": state.cfg.to_dict(),
        "generator": state.generator.state_dict(),
        "discriminators": d.reference_state_dict(),
        "frame_generator": None if state.frame_generator is None else state.frame_generator.state_dict(),
        "optimizers": {"generator": portable_optimizer_state(state.g_opt.state_dict()),
                       "discriminators": d.reference_optimizer_state(portable_optimizer_state(state.d_opt.state_dict())),
                       "frame_generator": None if state.f_opt is None
                       else portable_optimizer_state(state.f_opt.state_dict())},
        "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "complete": complete,
        "rng": rng_states(state.device), "losses": dict(state.last_losses), "run": state.run,
        # phase 1 with --frames-ema / --frames-select-every (selection.py); absent keys read as None (older files)
        "frame_average": None if state.frame_average is None else state.frame_average.state_dict(),
        "selection": None if state.selection is None else state.selection.state_dict(),
    }


def with_frame_choice(state: TrainState) -> TrainState:
    """Phase 1: attach G_F's weight average (cfg.frames_ema) and snapshot selection (cfg.frames_select_every) to a
    state built by step.build_state (which stands on the model definitions only); in place, returns it."""
    cfg = state.cfg
    if not state.phase.video:
        state.frame_average = WeightAverage(state.generator, cfg.frames_ema) if cfg.frames_ema else None
        state.selection = (SnapshotSelection(cfg.frames_select_every, cfg.frames_select_n)
                           if cfg.frames_select_every else None)
    return state


def state_from_checkpoint(ckpt: dict, path: str | Path, overrides: dict | None = None) -> TrainState:
    """Rebuild a run exactly where its checkpoint left it (models, optimizers, data position, RNGs).

    `overrides` (e.g. a larger max_steps, another device) replace saved config values.
    """
    cfg = saved_config(ckpt, path).replace(**(overrides or {}))
    g_f = ckpt.get("frame_generator")
    if g_f is not None:
        check_frame_generator(cfg, g_f, path)
    state = with_frame_choice(build_state(cfg, ckpt["phase"], g_f))
    load_matching(state.generator, ckpt["generator"], "the generator", path)
    load_matching(state.discriminators, ckpt["discriminators"], "the discriminators", path)
    opts = ckpt["optimizers"]
    state.g_opt.load_state_dict(opts["generator"])
    state.d_opt.load_state_dict(opts["discriminators"])
    if state.f_opt is not None and opts.get("frame_generator") is not None:
        state.f_opt.load_state_dict(opts["frame_generator"])
    lr = state.phase.lr                  # a rate given again on --resume wins over the saved one
    for opt, rate in ((state.g_opt, lr), (state.d_opt, lr), (state.f_opt, cfg.finetune_lr)):
        for group in (opt.param_groups if opt is not None else ()):
            group["lr"] = rate
    state.step, state.epoch, state.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
    if state.frame_average is not None:          # a checkpoint without one (the option added on --resume): start
        average = ckpt.get("frame_average")      # the average at the weights it resumes from
        load_matching(state.frame_average.model, state.generator.state_dict() if average is None else average,
                      "the frame generator's weight average", path)
    if state.selection is not None and ckpt.get("selection") is not None:
        best = ckpt["selection"]["best_state"]
        if best is not None:
            check_matching(state.generator, best, "the selected frame generator", path)
        state.selection.load_state_dict(ckpt["selection"])
    state.last_losses = dict(ckpt.get("losses") or {})
    state.run = ckpt.get("run") or state.run
    restore_rng_states(ckpt["rng"], state.device)
    return state


# ----------------------------------------------------------------------------------------------- the loop

def check_frame_generator(cfg: TrainConfig, state_dict: dict, path: str | Path) -> None:
    """A one-line CheckpointError if a G_F state does not fit the configured widths (checked on the meta device:
    nothing is built, no random number is drawn)."""
    with torch.device("meta"):
        shape_only = build_frame_generator(cfg)
    check_matching(shape_only, state_dict, "the frame generator", path)


@contextlib.contextmanager
def cpu_threads(n: int):
    """torch's intra-op CPU threads set to n for the block, then restored (0: left as they are)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_phase(state: TrainState, out: str | Path, progress: bool = True) -> TrainState:
    """Train `state` to the end of its phase on cfg.cpu_threads torch threads (as open_phase builds it and
    train_all samples; see _train_phase)."""
    with cpu_threads(state.cfg.cpu_threads):
        return _train_phase(state, out, progress)


def _train_phase(state: TrainState, out: str | Path, progress: bool = True) -> TrainState:
    """Train `state` to the end of its phase, logging to out/log.jsonl and checkpointing to out/<phase>.ckpt.

    Losses stay on the device and are checked (NaN/inf) every log_every steps and before every save, so a
    diverged model is never saved. SIGINT/SIGTERM: finish the step, save, raise TrainingInterrupted; a second
    signal during that stops at once (signals.Stopped), the checkpoint on disk as it was.
    """
    cfg, out, phase = state.cfg, Path(out), state.phase
    state.run = state.run or new_run_id()       # made when a phase starts fresh; kept on --resume
    source, n = open_source(cfg)
    run = plan(state, source)             # reference or --fast; torchrun: this rank's discriminators
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{phase.name}.ckpt"
    per_epoch, total = phase.schedule(n, cfg.max_steps)
    if distributed.is_main():             # the log holds this phase up to the checkpoint's step, never twice
        cut_log(out / "log.jsonl", phase.name, state.step)
    log = LossLog(distributed.rank_path(out / "log.jsonl"), phase.name, phase.number, state.step, state.run)
    saved_step = state.step if ckpt_path.exists() else None        # the step of the checkpoint on disk
    if saved_step is not None:                    # what a stop at any point leaves (signals.saved, the CLI's line)
        saved(f"{ckpt_path} (step {saved_step}) is kept; continue with --resume")
    bar = tqdm(total=total, initial=state.step, desc=str(phase),
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
        saved(f"{ckpt_path} (step {saved_step}) is saved; continue with --resume")

    with distributed.stop_requests() as stop, bar:
        while state.step < total:
            with nvtx_range("data", "data"):
                real = real_batch(state, run.source, n)
            d_loss, g_loss = run.steps.step(real)
            log.add(state.step + 1, state.epoch, d_loss, g_loss)
            state.step += 1
            state.batch_in_epoch += 1
            if state.batch_in_epoch == per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            bar.update(1)
            if state.frame_average is not None:
                state.frame_average.update(state.generator)
            if state.selection is not None and state.selection.due(state.step, per_epoch * phase.epochs):
                state.selection.consider(state.sampling_generator, state.step)
            distributed.agree_stop(stop)          # torchrun: a signal to any rank stops every rank here
            if state.step % cfg.log_every == 0:
                flush()
            if state.step % cfg.checkpoint_every == 0 or state.step == total or stop:
                save()
            if stop:
                stopping()                        # saved: a further signal must not cut the report short
                raise TrainingInterrupted(f"{signal.Signals(stop[0]).name} at step {state.step} of phase "
                                          f"{phase.number}: checkpoint saved to {ckpt_path}; "
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
        ckpt = load_checkpoint(path, expected_phase=phase)
        cfg = saved_config(ckpt, path).replace(**(overrides or {}))
        open_source(cfg)                  # bad --data: before any model
        check_fits(cfg, phase, resolve_device(cfg.device))
        saved(f"{path} (step {ckpt['step']}) is kept; continue with --resume")
        return state_from_checkpoint(ckpt, path, overrides)
    if path.exists():
        raise TrainingError(f"{out} already holds {path.name}; pass --resume to continue that run "
                            f"or choose another --out")
    open_source(cfg)                      # a missing or malformed --data file is found before any model is built
    if phase == "frames":
        check_fits(cfg, phase, resolve_device(cfg.device))      # absurd sizes: one line now, not a failed allocation
        with cpu_threads(cfg.cpu_threads):
            return with_frame_choice(build_state(cfg, "frames"))
    if frames is None:
        raise TrainingError("phase 2 needs a trained frame generator: pass --frames CKPT")
    generator_state, widths = frame_generator_of(frames, given_widths=(overrides or {}).get("gf_widths"))
    cfg = cfg.replace(gf_widths=widths)
    check_frame_generator(cfg, generator_state, frames)
    check_fits(cfg, phase, resolve_device(cfg.device))
    with cpu_threads(cfg.cpu_threads):                           # G_V's calibration computes
        return build_state(cfg, "video", generator_state)


def train_all(cfg: TrainConfig, out: str | Path, resume: bool = False, overrides: dict | None = None,
              progress: bool = True) -> list[Path]:
    """The main job: phase 1, then phase 2 on its G_F, then samples. Returns the sample files written."""
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
    with cpu_threads(state.cfg.cpu_threads):
        return (write_samples(frames_path, samples, n=state.cfg.sample_n, seed=state.cfg.seed)
                + write_samples(video_path, samples, n=state.cfg.sample_n, seed=state.cfg.seed))
