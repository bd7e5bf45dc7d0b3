"""What one training step is, for both phases: the phase, the state, the builders, d_step and g_step.

Phase 1 ("frames"): G_F against K frame discriminators, on one random frame per video.
Phase 2 ("video"):  G_V against K video discriminators; G_F comes from a phase-1 checkpoint, frozen (eval mode,
                    no gradients, in no optimizer) unless cfg.finetune_frames.

    state = build_state(cfg, "frames")                 # fresh models and RMSprop optimizers from cfg.seed
    d_loss = d_step(state, real, torch.randn(B, Z_DIM))       # d_update(state, d_losses(state, real, z))
    g_loss = g_step(state, torch.randn(B, Z_DIM))             # g_update(state, g_loss(state, z))

The steps only assume that `state.discriminators` maps x -> logits [K, B] and has .parameters(), and that
`state.renderer` maps codes -> frames: `--fast` (execution.py, fast/engine.py) swaps those modules for a Triton
bank and the folded Triton G_F, and may replay these two functions as CUDA graphs (fast/graphs.py). This module
imports only models, losses, config, profiling and errors: the loop, the runs and the fast path build on it.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import losses
from .config import PHASE_NAMES, TrainConfig, check_batch
from .errors import ConfigError, TrainingError
from .models import (FRAME_SIZE, FrameGenerator, VideoGenerator, calibrate_codes, frame_discriminators,
                     video_discriminators)
from .profiling import nvtx_range

Z_DIM = 100
FRAMES = 30


@dataclass(frozen=True)
class Phase:
    """A training phase with its settings from the run's config (TrainConfig's `<name>_k`, `_batch`, ...)."""
    name: str          # "frames" (phase 1) or "video" (phase 2): the checkpoint <name>.ckpt, the log's "phase"
    number: int        # 1 or 2
    video: bool        # samples are videos [B, 1, 30, 30, 30] (else frames [B, 1, 30, 30])
    k: int             # discriminators
    batch: int
    lr: float
    epochs: int

    @classmethod
    def of(cls, cfg: TrainConfig, name: str) -> "Phase":
        if name not in PHASE_NAMES:
            raise ValueError(f"phase must be one of {PHASE_NAMES}, got {name!r}")
        return cls(name, PHASE_NAMES.index(name) + 1, name == "video", getattr(cfg, f"{name}_k"),
                   getattr(cfg, f"{name}_batch"), getattr(cfg, f"{name}_lr"), getattr(cfg, f"{name}_epochs"))

    def schedule(self, n_videos: int, max_steps: int | None = None) -> tuple[int, int]:
        """(steps per epoch, steps of the phase) over a data set of n_videos, cut at max_steps if given."""
        per_epoch = n_videos // self.batch
        total = per_epoch * self.epochs
        return per_epoch, total if max_steps is None else min(total, max_steps)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of a real (and a generated) batch."""
        frame = (1, FRAME_SIZE, FRAME_SIZE)
        return (self.batch, 1, FRAMES, FRAME_SIZE, FRAME_SIZE) if self.video else (self.batch, *frame)

    def __str__(self) -> str:
        return f"phase {self.number} ({self.name})"


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"invalid --device {name}: no CUDA GPU is available on this machine (or this torch "
                          f"is a CPU build); use --device cpu")
    return device


@dataclass
class TrainState:
    """Everything one phase trains with; the checkpoint is this object's state (train.checkpoint_payload)."""
    phase: Phase
    cfg: TrainConfig
    device: torch.device
    generator: nn.Module                  # G_F (phase 1) or G_V (phase 2)
    discriminators: nn.Module             # x -> logits [K, B]
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    frame_generator: nn.Module | None = None      # phase 2: G_F (reference module; what checkpoints hold)
    f_opt: torch.optim.Optimizer | None = None    # phase 2 with finetune_frames
    renderer: nn.Module | None = None             # phase 2: what renders the codes (fast: the frozen Triton G_F)
    frame_average: object | None = None           # phase 1 with frames_ema: selection.WeightAverage of G_F
    selection: object | None = None               # phase 1 with frames_select_every: selection.SnapshotSelection
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    last_losses: dict = field(default_factory=dict)
    run: str = ""                                 # the run id (train.py): in every log line and the checkpoint

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Frames [B, 1, 30, 30] (phase 1) or videos [B, 1, 30, 30, 30] (phase 2) for the noise z [B, Z_DIM]."""
        return self.generator(z, self.renderer) if self.phase.video else self.generator(z)

    def autocast(self):
        """bf16 autocast of the forward passes when cfg.bf16 holds on this device, else a no-op."""
        return torch.autocast(self.device.type, torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    @property
    def sampling_generator(self) -> nn.Module:
        """Phase 1: the G_F that selection scores: the weight average with frames_ema, else G_F itself."""
        return self.frame_average.model if self.frame_average is not None else self.generator

    @property
    def bf16(self) -> bool:
        return self.cfg.bf16 and self.device.type == "cuda" and torch.cuda.is_bf16_supported()


def build_frame_generator(cfg: TrainConfig) -> FrameGenerator:
    return FrameGenerator(Z_DIM, cfg.gf_widths)


def build_video_generator(cfg: TrainConfig) -> VideoGenerator:
    return VideoGenerator(Z_DIM, cfg.gv_hidden, steps=FRAMES, lstm_hidden=cfg.gv_lstm, code_dim=Z_DIM,
                          code_map=cfg.video_codes, forget_bias=cfg.gv_forget_bias,
                          smoothing=cfg.gv_smoothing)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode (batch norm uses its running statistics) and no gradients for the weights."""
    return module.eval().requires_grad_(False)


def build_state(cfg: TrainConfig, phase: str, frame_generator_state: dict | None = None,
                device: torch.device | None = None) -> TrainState:
    """Fresh models and optimizers for `phase` ("frames" or "video"), initialised from cfg.seed; phase 2 renders
    with a G_F holding `frame_generator_state` (a trained G_F's state dict; train.open_phase checks it against
    the configured widths first, with an error that names the file).

    `device` overrides cfg.device (the compile gate builds shape-only states on the meta device)."""
    check_batch(cfg, phase)
    phase = Phase.of(cfg, phase)
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    if device.type == "cuda":       # PyTorch's TF32 switches follow the run's choice, as the kernels do
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    torch.manual_seed(cfg.seed * 2 + phase.number - 1)
    renderer, f_opt = None, None
    if not phase.video:
        generator = build_frame_generator(cfg)
        discriminators = frame_discriminators(phase.k, cfg.df_widths, seed=cfg.seed * 100_000)
    else:
        if frame_generator_state is None:
            raise TrainingError("phase 2 needs a trained frame generator: pass --frames CKPT")
        renderer = build_frame_generator(cfg)
        renderer.load_state_dict(frame_generator_state)
        renderer = renderer.to(device).eval()       # batch norm frozen in both modes
        if cfg.finetune_frames:
            f_opt = torch.optim.RMSprop(renderer.parameters(), lr=cfg.finetune_lr)
        else:
            freeze(renderer)
        generator = build_video_generator(cfg)
        if cfg.calibrate_codes:            # models.calibrate_codes: G_V's codes start at G_F's N(0, I) scale
            calibrate_codes(generator, seed=cfg.seed)
        discriminators = video_discriminators(phase.k, cfg.dv_widths, seed=1000 + cfg.seed * 100_000)
    generator, discriminators = generator.to(device).train(), discriminators.to(device).train()
    if cfg.bf16 and not (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        warnings.warn(f"--bf16 ignored: {device} does not support bf16 autocast", RuntimeWarning, stacklevel=2)
    return TrainState(phase, cfg, device, generator, discriminators,
                      g_opt=torch.optim.RMSprop(generator.parameters(), lr=phase.lr),
                      d_opt=torch.optim.RMSprop(discriminators.parameters(), lr=phase.lr),
                      frame_generator=renderer, f_opt=f_opt, renderer=renderer)


# ----------------------------------------------------------------------------------------------- the step

def d_losses(state: TrainState, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The D step's forward and loss: [K] fp32 losses, discriminator k's in row k (no backward, no update).
    Free of graph breaks under torch.compile(fullgraph=True) with NVTX off (profiling.nvtx_disabled).

    The discriminators see the real and the generated batch in one pass ([2B] samples: one read of every weight,
    one weight gradient, no sum of two), and the two halves' logits give the real and fake terms of each loss.
    The discriminators have no batch statistics, so sample b's logit does not depend on the others."""
    with nvtx_range("generator forward", "generator"), torch.no_grad(), state.autocast():
        fake = state.generate(z)
    with nvtx_range("discriminator forward", "discriminator"), state.autocast():
        logits = state.discriminators(torch.cat([real, fake.to(real.dtype)]))                 # [K, 2B]
        per_disc = losses.discriminator_losses(logits[:, :len(real)], logits[:, len(real):])  # [K]
    return per_disc.float()


def d_update(state: TrainState, per_disc: torch.Tensor) -> torch.Tensor:
    """Backward of the [K] losses from d_losses and one RMSprop step of every discriminator; the mean loss."""
    with nvtx_range("discriminator backward", "backward"):
        state.d_opt.zero_grad(set_to_none=True)
        per_disc.sum().backward()            # discriminator k only sees loss k
    with nvtx_range("discriminator optimizer", "optimizer"):
        state.d_opt.step()
    return per_disc.detach().mean()


def d_step(state: TrainState, real: torch.Tensor, z: torch.Tensor, forward=d_losses) -> torch.Tensor:
    """One RMSprop step of every discriminator on its own loss. Returns the mean loss (detached).
    `forward` computes the losses (d_losses; the benchmarks pass a torch.compile of it)."""
    return d_update(state, forward(state, real, z))


def g_loss(state: TrainState, z: torch.Tensor) -> torch.Tensor:
    """The G step's forward and loss: the combined scalar of the K generator losses (call it with the
    discriminators' weights not requiring gradients, as g_step does). Free of graph breaks like d_losses."""
    with nvtx_range("generator forward", "generator"), state.autocast():
        fake = state.generate(z)
    with nvtx_range("discriminator forward", "discriminator"), state.autocast():
        per_disc = losses.generator_losses(state.discriminators(fake)).float()       # [K]
    return losses.combine(per_disc, state.cfg.loss)


def g_update(state: TrainState, loss: torch.Tensor) -> torch.Tensor:
    """Backward of g_loss's scalar and one RMSprop step of the generator (and of G_F when fine-tuned)."""
    with nvtx_range("generator backward", "backward"):
        state.g_opt.zero_grad(set_to_none=True)
        if state.f_opt is not None:
            state.f_opt.zero_grad(set_to_none=True)
        loss.backward()
    with nvtx_range("generator optimizer", "optimizer"):
        state.g_opt.step()
        if state.f_opt is not None:
            state.f_opt.step()
    return loss.detach()


def g_step(state: TrainState, z: torch.Tensor, forward=g_loss) -> torch.Tensor:
    """One RMSprop step of the generator (and of G_F when fine-tuned) on the combined K losses.
    `forward` computes the loss (g_loss; the benchmarks pass a torch.compile of it)."""
    state.discriminators.requires_grad_(False)     # gradients flow through D to G, none into D's weights
    try:
        return g_update(state, forward(state, z))
    finally:
        state.discriminators.requires_grad_(True)


class EagerSteps:
    """`step(real) -> (d_loss, g_loss)`: one D step then one G step, eagerly, each on fresh noise (the reference
    execution; fast/graphs.GraphedSteps replays the same two functions as CUDA graphs)."""

    def __init__(self, state: TrainState):
        self.state = state

    def step(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, device = self.state.phase.batch, self.state.device
        z_d = torch.randn(batch, Z_DIM, device=device)
        z_g = torch.randn(batch, Z_DIM, device=device)
        return d_step(self.state, real, z_d), g_step(self.state, z_g)
