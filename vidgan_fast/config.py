"""Training configuration: one dataclass, two presets (`paper`, `tiny`), validation in one place.

Every field is a CLI option (cli.py generates them from `fields(TrainConfig)`): the option name is the field
name with dashes (`frames_batch` -> `--frames-batch`) unless the field's metadata names another one.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields

from .errors import ConfigError

PHASE_NAMES = ("frames", "video")   # phase 1, phase 2: each one's settings are the fields <name>_k, _batch, _lr, _epochs

COMBINATIONS = ("mean", "sum", "hypervolume", "gman")   # --loss choices (losses.combine); here, so that the CLI
                                                        # can build its options without importing torch
CODE_MAPS = ("tanh", "sphere")                          # G_V's last step: --video-codes choices (models.py)


# Ranges the code can honour (issue 28), checked before anything is built. Seeds: torch seeds each phase with
# seed * 2 + phase - 1, which must stay below 2**64. K: one module per discriminator (4,096 tiny ones take a minute
# to build). n_videos: every epoch draws a permutation of n_videos (16 bytes each). Widths: a bound on typing
# errors; the memory a configuration needs is checked against the device at start-up (limits.py).
MAX_SEED = 2 ** 63 - 1
MAX_COUNT = 2 ** 40
MAX_WIDTH = 65_536
LIMITS = {"frames_k": 4096, "video_k": 4096, "n_videos": 10_000_000, "frames_batch": 65_536, "video_batch": 65_536,
          "gv_lstm": MAX_WIDTH, "sample_n": 1024, "frames_select_n": 65_536, "cpu_threads": 1024}
LIMIT_WHY = {"frames_k": "discriminators", "video_k": "discriminators", "n_videos": "videos",
             "frames_batch": "frames per batch", "video_batch": "videos per batch", "gv_lstm": "a width",
             "sample_n": "one picture grid", "frames_select_n": "frames scored per snapshot"}
DEVICE_NAMES = ("auto", "cpu", "cuda")


def parse_device(text: str) -> str | None:
    """'auto', 'cpu', 'cuda' or 'cuda:N' as given (N a non-negative integer), else None. Torch-free."""
    text = str(text).strip()
    if text in DEVICE_NAMES:
        return text
    kind, colon, index = text.partition(":")
    return text if kind == "cuda" and colon and index.isdigit() and index.isascii() and len(index) < 6 else None


def _opt(help: str, option: str | None = None, **kw):
    return field(metadata={"help": help, "option": option}, **kw)


@dataclass
class TrainConfig:
    # phase 1: frame generator G_F against K frame discriminators
    frames_k: int = _opt("number of frame discriminators (phase 1)", default=48)
    frames_batch: int = _opt("frames per batch (phase 1)", default=64)
    frames_lr: float = _opt("RMSprop learning rate of G_F and the frame discriminators", default=3e-4)
    frames_epochs: int = _opt("epochs of phase 1 (one random frame per video per epoch)", default=50)
    # phase 1: which G_F samples and goes to phase 2 (selection.py; off: the last weights, the paper's method)
    frames_ema: float = _opt("phase 1: keep an exponential moving average of G_F's weights with this decay per "
                             "step (e.g. 0.99), used to sample and as phase 2's G_F (0: off, the last weights)",
                             default=0.0)
    frames_select_every: int = _opt("phase 1: every N steps score G_F (its average with --frames-ema) by the share "
                                    "of frames with exactly 3 blobs among --frames-select-n frames of fixed codes, "
                                    "and sample and train phase 2 with the best snapshot (0: off)", default=0)
    frames_select_n: int = _opt("frames scored per snapshot with --frames-select-every", default=1024)
    # phase 2: video generator G_V (through the frozen G_F) against K video discriminators
    video_k: int = _opt("number of video discriminators (phase 2)", default=16)
    video_batch: int = _opt("videos per batch (phase 2)", default=8)
    video_lr: float = _opt("RMSprop learning rate of G_V and the video discriminators", default=2e-4)
    video_epochs: int = _opt("epochs of phase 2", default=15)
    # widths (paper values by default)
    gf_widths: tuple[int, ...] = _opt("G_F channel widths c0,c1,c2,c3", default=(1024, 1024, 512, 256))
    df_widths: tuple[int, ...] = _opt("frame discriminator widths c1,c2,c3", default=(256, 512, 1024))
    gv_hidden: tuple[int, ...] = _opt("G_V dense hidden widths", default=(512, 1024, 2048))
    gv_lstm: int = _opt("G_V LSTM hidden size (per direction)", default=256)
    dv_widths: tuple[int, ...] = _opt("video discriminator widths c1,c2,c3", default=(256, 512, 768))
    # objective
    loss: str = _opt(f"generator loss combination: {', '.join(COMBINATIONS)}", default="mean")
    video_codes: str = _opt("G_V's code activation: tanh (the paper's; codes in (-1, 1)) or sphere (codes scaled to "
                            "norm 10, where G_F's N(0, I) training codes lie)", default="tanh")
    gv_forget_bias: float = _opt("initial bias of G_V's LSTM forget gates (0: the paper's zero biases; b > 0 makes "
                                 "the LSTM integrate over time, sigmoid(b) of the cell kept per step, so codes "
                                 "start as smooth paths)", default=0.0)
    gv_smoothing: float = _opt("std in frames of a fixed Gaussian low-pass over time applied to G_V's codes before "
                               "their activation (0: the paper's G_V; models.time_filter says why)", default=0.0)
    calibrate_codes: bool = _opt("phase 2: rescale G_V's last layer once at the start so that its codes start "
                                 "centred at the scale of G_F's N(0, I) training codes (pre-tanh std 2.5) instead "
                                 "of |c| ~ 0.01, and start G_V's batch-norm statistics from one batch",
                                 default=False)
    finetune_frames: bool = _opt("phase 2: also train G_F (unfrozen) with --finetune-lr", default=False)
    finetune_lr: float = _opt("RMSprop learning rate of G_F when --finetune-frames", default=2e-5)
    # data
    n_videos: int = _opt("videos used: the first N of --data, or N generated on the fly", default=100_000)
    data: str | None = _opt("uint8 [N,30,30,30] .npy written by `vidgan data` (default: generate on the fly)",
                            default=None)
    data_seed: int = _opt("seed of the on-the-fly bouncing-balls data", default=0)
    # run control
    seed: int = _opt("seed of weights, noise and data order", default=0)
    max_steps: int | None = _opt("stop each phase after this many steps (default: all epochs)",
                                 option="--steps", default=None)
    checkpoint_every: int = _opt("save a checkpoint every N steps (and at the end)", default=500)
    log_every: int = _opt("one line in log.jsonl every N steps (and at each checkpoint): the mean d_loss and g_loss "
                          "over its steps, and it_s over its own interval; every step's losses are checked for NaN",
                          default=10)
    sample_n: int = _opt("videos / frames in the sample written at the end of `train all`", default=16)
    cpu_threads: int = _opt("torch's CPU threads of a training run (0: torch's default)", default=0)
    device: str = _opt("torch device: auto (a CUDA GPU if there is one, else the CPU; the command says which it "
                       "picked), cpu, cuda or cuda:N", default="cpu")
    # execution (the mathematics is the same on both paths; checkpoints are interchangeable)
    fast: bool = _opt("fast path: Triton discriminator banks and frozen G_F, CUDA graphs, data on the GPU "
                      "(falls back to the reference path with a warning where Triton cannot run)", default=False)
    graphs: bool = _opt("with --fast on a GPU: capture the D and G steps as CUDA graphs", default=True)
    fast_check: bool = _opt("with --fast: check every fast op against its reference before training",
                            default=True)
    # Precision of products on a GPU. Default TF32, as PyTorch's own cuDNN convolutions on Ampere and newer: the
    # same choice is applied to both paths (PyTorch's TF32 switches follow --tf32), so a fast-vs-reference
    # comparison compares like with like; --no-tf32 gives exact fp32 products everywhere.
    tf32: bool = _opt("TF32 products (fp32 accumulation) in the Triton kernels and PyTorch's matmuls and "
                      "convolutions, on GPUs that have them (sm_80+); --no-tf32: exact fp32", default=True)
    bf16: bool = _opt("bf16: the fast kernels multiply bf16 operands (fp32 accumulation) and the banks and frozen "
                      "G_F store activations and weight copies in bf16 (fp32 master weights); the reference path "
                      "autocasts its forward passes (GPUs with bf16 only)", default=False)

    @property
    def precision(self) -> str:
        """The products' precision of the fast kernels: "bf16", "tf32" or "fp32"."""
        return "bf16" if self.bf16 else "tf32" if self.tf32 else "fp32"

    def replace(self, **changes) -> "TrainConfig":
        """A validated copy with `changes` applied (None values are ignored: 'not given')."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}")
        return validate(dataclasses.replace(self, **{k: _coerce(k, v) for k, v in changes.items()}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}")
        return validate(cls(**{k: _coerce(k, v) for k, v in d.items()}))


def option_name(name: str) -> str:
    """The CLI option of field `name`, e.g. 'frames_batch' -> '--frames-batch', 'max_steps' -> '--steps'."""
    f = {f.name: f for f in fields(TrainConfig)}[name]
    return f.metadata.get("option") or "--" + name.replace("_", "-")


WIDTH_FIELDS = {"gf_widths": 4, "df_widths": 3, "gv_hidden": None, "dv_widths": 3}   # None: any length >= 1


def _coerce(name: str, value):
    if name in WIDTH_FIELDS and isinstance(value, (list, tuple)):
        return tuple(value)
    return value


PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    # Same architecture, small widths: both phases train on a 2-core CPU in about two minutes (480 + 192 steps).
    # With the pinned N(0, 0.02) init, narrow nets start near-linear (D) and near-constant in z (G), and the
    # generator collapses to one z-independent smudge. What keeps tiny samples ball-like (measured, seeds 0-2):
    # - frames_k = 8: K projections of 15x15 see K*225 values of a 900-pixel frame; with K=3 a 225-dim pattern
    #   space (the period-2 checkerboard, which every stride-2 projection sees as a constant, among it) is
    #   invisible to every discriminator; K=4 is full rank but ill-conditioned (smallest/largest singular value 1.5e-4),
    #   K=8 well conditioned (0.11).
    # - a wide last G_F layer (c3=64): its z-dependent output is ~sqrt(c3) larger at init (8 was ~0.05 pre-tanh).
    # - discriminators 16,32,64 and lr 1e-3: they become non-linear fast enough to separate samples.
    # - phase 2 lr 1e-3: G_V's codes start at |c| ~ 0.05, where G_F draws black frames; at 2e-4 they are still
    #   there after 192 steps (all-black videos), at 2e-3 they saturate to one constant code. Phase 2 still
    #   collapses at this size (the videos show ball-like frames, but nearly one static video for every z).
    "tiny": TrainConfig(
        frames_k=8, frames_batch=32, frames_epochs=60, frames_lr=1e-3,   # 256 / 32 = 8 steps per epoch, 480
        video_k=2, video_batch=8, video_epochs=6, video_lr=1e-3,         # 256 / 8 = 32 steps per epoch, 192
        gf_widths=(32, 32, 16, 64), df_widths=(16, 32, 64), gv_hidden=(32, 64, 64), gv_lstm=16,
        dv_widths=(8, 16, 16), n_videos=256, checkpoint_every=100, log_every=10, sample_n=9,
    ),
    # The CPU main job (issue 17): the tiny widths with what phase 1 and phase 2 need to produce videos.
    # - frames_k = 16 (tiny: 8): at these widths the number of projection discriminators is what improves G_F per
    #   step and per CPU second (measured at 300 steps, seed 0: frames with exactly 3 blobs 0.38 with K=16 against
    #   0.18-0.21 with K=8 at 200-400 steps, 0.28 with K=8 and batch 64; wider G_F/D_F: 0.17 and half the diversity).
    #   K=16 also conditions the projections' joint view of period-2 (checkerboard) detail better than K=8.
    #   frames_k = 24 (issue 27; was 16): G_F's misses are mostly extra specks and ghost balls (seed 1, 2,000
    #   frames: 214 frames with 4+ blobs, 282 with 2, against 0 and 303 in the data), detail that more projections
    #   see. K=24 seed 1 at 1600 steps: 0.781 3-blob frames (average 0.775) against 0.731 (0.744) with K=16; a
    #   phase-1 step costs 1.2-1.3x the CPU of K=16 (0.21 against 0.16 s, one thread).
    # - n_videos = 1024 (tiny: 256); frames_batch = 16, frames_epochs = 50: 64 steps per epoch, 3,200 phase-1 steps
    #   (issue 27; was batch 32, 1,600 steps). More steps is what lifts G_F on every seed (K=24 batch 32, seed 4:
    #   3-blob frames 0.63 / 0.71 / 0.76 / 0.81 / 0.84 at 1,600 / 2,000 / 2,400 / 2,800 / 3,200 steps), and a step
    #   of batch 16 costs 0.66x one of batch 32 (one thread). In the same CPU time, seeds 0-4 (G_F alone, 2,000
    #   frames): K=24, batch 16, 3,200 steps: 0.877 / 0.838 / 0.855 / 0.857 / 0.829; K=32, batch 16, 2,432
    #   steps: 0.821 / 0.854 / 0.855 / 0.798 / 0.733; K=32, batch 32, 1,600 steps: 0.725 / 0.742 / 0.805 / 0.845 /
    #   0.848; the old preset (K=24, batch 32, 1,600): 0.741 / 0.774 / 0.830 / 0.811 / 0.627.
    # - frames_lr = 4e-3 (was 1e-3, 416 steps: 21-33% 3-blob frames, radius 2.4-3.0 px on 3 seeds).
    #   At this size G_F is limited by optimisation (steps x rate), not width (measured with the same G_F/D_F,
    #   seed 0, 1,000 frames, 3-blob fraction at 400/800/1200/1600 steps): lr 1e-3: 0.37/0.37/0.30/0.50;
    #   lr 2e-3: 0.52/0.51/0.52/0.76 (radius 3.50 px, diversity 0.81); lr 4e-3: 0.44/0.52/0.68/0.78. G_F widths
    #   64,64,32,64 at lr 1e-3: 0.50 at 1600 (no better than 32,32,16,64); hypervolume loss at lr 1e-3: 0.42.
    #   The 3-blob fraction oscillates by about +-0.1 between checkpoints 200 steps apart (GAN dynamics).
    #   lr 8e-3 (issue 27, seed 0): 0.43/0.52/0.53 at 400/800/1200 steps against 0.45/0.60/0.66 at 4e-3: slower.
    # - frames_ema = 0.99 (issue 27; selection.py; measured on the earlier schedule, 1,600 steps of batch 32, and
    #   not re-measured at 3,200 of batch 16): phase 2 and the samples use an exponential moving average of
    #   G_F's weights (and batch-norm statistics) instead of the last step's. Over steps 1000-1600 (3 runs, every
    #   100 steps, 2,000 frames) the average's 3-blob fraction was 0.009-0.020 above the last weights' on average
    #   and never fell between two checkpoints (the last weights dropped by up to 0.019); at step 1600 it was
    #   +0.007 / +0.013 / -0.006. Decay 0.995: the same within 0.01; 0.998: 0.02-0.03 lower (the average lags the
    #   still-rising curve); batch-norm statistics recomputed for the average instead of averaged: no better.
    #   Along great circles of the code sphere the average walked with 0.004-0.007 higher coherence at the same
    #   speed. Best-snapshot selection (frames_select_every; 512 frames every 100 steps) is not used: with the
    #   curve still rising at 1600 steps it picked an earlier snapshot on 2 of 3 runs, 0.013 and 0.030 worse.
    # - phase 2 (measured on one K=16 G_F after 600 steps, 200 generated videos; tiny's tanh codes at
    #   lr 1e-3 collapse): G_V must start on G_F's code distribution and stay there. With tanh codes every run
    #   saturated (mean |c| > 0.9) within 50 steps, calibrated or not, and drew black or 1-2-blob frames.
    #   video_codes = sphere keeps every code at the norm of G_F's N(0, I) codes; gv_forget_bias = 3 makes the
    #   LSTM integrate its per-step inputs, so codes start on smooth paths (consecutive codes 1.1 apart on the
    #   radius-10 sphere against 2.9 with zero forget bias). After 25 steps that G_V drew 3-blob frames as often
    #   as G_F (0.51-0.53 vs 0.46), speed 0.5-0.9 px/frame, coherence 0.77-0.87, diversity 0.64-0.71.
    #   Longer phase 2 at this G_F quality drifts to codes where G_F draws few or no blobs (50 steps: 0.02-0.16
    #   3-blob frames at lr 2e-4 and 5e-5, with the discriminators near chance, d loss 1.1-1.4): RMSprop's
    #   normalised steps random-walk G_V when the gradients are mostly noise. Hence a short phase 2: one epoch
    #   of batch 32 (32 steps, less gradient noise per step), video_k = 4, lr 1e-5 (issue 27; was 5e-5): on the
    #   K=24 seed-1 G_F (500 videos) the calibrated, untrained G_V drew 3-blob frames as often as G_F alone
    #   (0.763 against 0.775) at speed 0.81 px/frame and coherence 0.891; 32 steps at 5e-5 slowed it to 0.60 /
    #   0.937 and cost 7 points of 3-blob frames (0.689); at 1e-5: 0.755 / 0.901, 3-blob frames 0.748.
    # - calibrate_codes: G_V's codes start centred with std 2.5 per code dimension across z and time (before
    #   the time filter and the sphere), and its
    #   batch norms start with the statistics of a real batch: after a 32-step phase 2 the running variances
    #   otherwise still hold ~4% of their initial 1 against true variances ~1e-4, and the eval-mode G_V drew
    #   nearly the same video for every z (seed 0: diversity 0.18 without, 0.41 with).
    # - gv_smoothing = 4 frames (models.time_filter): the LSTM's codes step in a new direction every frame, and G_F
    #   renders that walk as jitter (seed 0 before: speed 1.42 px/frame, temporal coherence 0.45). G_F itself is
    #   walkable: along great circles of its code sphere at 4-6 degrees a frame it moves balls at 0.5-0.8 px/frame
    #   with coherence 0.90-0.97 (seeds 0-2), so the codes need smooth paths, not a better G_F. Phase 2 with the
    #   low-pass, 1,000 videos, seeds 0/1/2: sigma 3: speed 0.69/0.73/0.60, coherence 0.920/0.896/0.940;
    #   sigma 4: speed 0.63/0.69/0.59, coherence 0.934/0.916/0.942, diversity 0.76, 3-blob frames 0.75/0.82/0.72.
    #   Issue 27: the smoothing only chooses a point on a curve that G_F sets. Along great circles (the
    #   smoothest paths) coherence falls as about 1 - k v^2 with the speed v in px/frame, k = 0.12-0.15 for the
    #   G_F measured (K=16 seed 1 average: 0.68 / 0.945 at 4 degrees a frame, 0.98 / 0.888 at 6; K=24 seed 1:
    #   0.68 / 0.931 at 5), and the trained G_V's paths sit a little below (k 0.17). About half the unexplained
    #   accelerations are steps where the blob count changes (a speck or ghost ball appears or goes). Speed
    #   >= 0.79 px/frame (0.75x the data's) at coherence >= 0.95 needs k <= 0.08: a G_F that draws fewer specks,
    #   not another filter. On the K=24 seed-1 G_F with lr 1e-5: sigma 4: 0.755 / 0.901; sigma 5: 0.711 / 0.914.
    # Measured, the whole `train all` run (benchmarks/RESULTS.md, "Quality (issue 27), 2026-12-08"), seeds 0-4:
    # G_F alone 3-blob frames 0.877 / 0.838 / 0.855 / 0.857 / 0.829 (issue 27's target 0.75; the old preset
    # 0.627-0.830); G_V 3-blob frames 0.896 / 0.795 / 0.834 / 0.828 / 0.771; speed 0.49 / 0.83 / 0.54 / 0.72 / 0.74x
    # the data's (target 0.75-1.33x), coherence 0.964 / 0.895 / 0.917 / 0.911 / 0.894 (target 0.95), diversity
    # 0.93-0.95x; held-out seeds in RESULTS.md.
    "small": TrainConfig(
        frames_k=24, frames_batch=16, frames_epochs=50, frames_lr=4e-3,   # 64 steps per epoch, 3200 steps
        frames_ema=0.99,
        video_k=4, video_batch=32, video_epochs=1, video_lr=1e-5,
        gf_widths=(32, 32, 16, 64), df_widths=(16, 32, 64), gv_hidden=(32, 64, 64), gv_lstm=16,
        dv_widths=(8, 16, 16), n_videos=1024, video_codes="sphere", gv_forget_bias=3.0, calibrate_codes=True,
        gv_smoothing=4.0,
        checkpoint_every=100, log_every=10,
        sample_n=9,
        cpu_threads=1,    # one torch thread: at these widths a second one costs more than it gives (RESULTS.md)
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    """Preset `name` with `overrides` (None = keep the preset value), validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def check_batch(cfg: TrainConfig, phase: str) -> None:
    """A phase needs at least one full batch per epoch."""
    name = f"{phase}_batch"
    if getattr(cfg, name) > cfg.n_videos:
        raise _bad(name, getattr(cfg, name), f"is larger than --n-videos {cfg.n_videos}")


def _bad(name: str, value, why: str) -> ConfigError:
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
    return ConfigError(f"invalid {option_name(name)} {shown}: {why}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Return cfg if every value is possible, else raise ConfigError naming the option and value."""
    for name in ("frames_k", "frames_batch", "frames_epochs", "video_k", "video_batch", "video_epochs",
                 "gv_lstm", "n_videos", "checkpoint_every", "log_every", "sample_n"):
        v = getattr(cfg, name)
        if not _is_int(v) or v <= 0:
            raise _bad(name, v, "must be a positive integer")
        if v > LIMITS.get(name, MAX_COUNT):
            raise _bad(name, v, f"must be at most {LIMITS.get(name, MAX_COUNT):,} ({LIMIT_WHY.get(name, 'a count')})")
    if not _is_int(cfg.cpu_threads) or not 0 <= cfg.cpu_threads <= LIMITS["cpu_threads"]:
        raise _bad("cpu_threads", cfg.cpu_threads, f"must be an integer from 0 (torch's default) to "
                                                    f"{LIMITS['cpu_threads']}")
    if not _is_number(cfg.frames_ema) or not 0 <= cfg.frames_ema < 1:
        raise _bad("frames_ema", cfg.frames_ema, "must be a number from 0 (off) to below 1")
    if not _is_int(cfg.frames_select_every) or cfg.frames_select_every < 0:
        raise _bad("frames_select_every", cfg.frames_select_every, "must be a non-negative integer (0: off)")
    if not _is_int(cfg.frames_select_n) or not 2 <= cfg.frames_select_n <= LIMITS["frames_select_n"]:
        raise _bad("frames_select_n", cfg.frames_select_n,
                   f"must be an integer from 2 to {LIMITS['frames_select_n']:,}")
    if not _is_number(cfg.gv_forget_bias):
        raise _bad("gv_forget_bias", cfg.gv_forget_bias, "must be a finite number")
    if not _is_number(cfg.gv_smoothing) or not 0 <= cfg.gv_smoothing <= 10:
        raise _bad("gv_smoothing", cfg.gv_smoothing, "must be a number from 0 to 10 (frames)")
    for name in ("frames_lr", "video_lr", "finetune_lr"):
        v = getattr(cfg, name)
        if not _is_number(v) or v <= 0:
            raise _bad(name, v, "must be a positive number")
    for name, length in WIDTH_FIELDS.items():
        v = getattr(cfg, name)
        if not isinstance(v, tuple) or not all(_is_int(c) and c > 0 for c in v) or len(v) == 0:
            raise _bad(name, v, "must be a comma list of positive integers")
        if max(v) > MAX_WIDTH:
            raise _bad(name, v, f"each width must be at most {MAX_WIDTH:,}")
        if length is not None and len(v) != length:
            raise _bad(name, v, f"needs exactly {length} widths")
    if cfg.video_codes not in CODE_MAPS:
        raise _bad("video_codes", cfg.video_codes, f"choose one of {', '.join(CODE_MAPS)}")
    if cfg.loss not in COMBINATIONS:
        raise _bad("loss", cfg.loss, f"unknown loss combination; choose one of {', '.join(COMBINATIONS)}")
    if cfg.max_steps is not None and (not _is_int(cfg.max_steps) or not 0 < cfg.max_steps <= MAX_COUNT):
        raise _bad("max_steps", cfg.max_steps, f"must be a positive integer, at most {MAX_COUNT:,}")
    for name in ("seed", "data_seed"):
        v = getattr(cfg, name)
        if not _is_int(v) or not 0 <= v <= MAX_SEED:
            raise _bad(name, v, f"must be an integer from 0 to 2**63 - 1 ({MAX_SEED})")
    if not isinstance(cfg.device, str) or parse_device(cfg.device) is None or cfg.device == "auto":
        raise _bad("device", cfg.device, "must be cpu, cuda or cuda:N")
    for name in ("calibrate_codes", "finetune_frames", "fast", "graphs", "fast_check", "tf32", "bf16"):
        if not isinstance(getattr(cfg, name), bool):
            raise _bad(name, getattr(cfg, name), "must be true or false")
    return cfg
