"""`--fast`: the same training state, executed by the fast ops.

    state = to_fast(build_state(cfg, phase, ...))   # banks for the K discriminators, frozen Triton G_F

Only the execution changes: the discriminators become one bank (stacked weights, one launch per layer for
all K) trained by the fused RMSprop (fast/rmsprop.py: one launch per tensor, which under bf16 also writes the
bank's bf16 weight copies; conv1..conv3's weights step inside the bank's backward, bank.fuse_optimizer), phase 2's
frozen G_F becomes the folded Triton generator, and optimizers become capturable on CUDA, so that the loop may
replay the steps as CUDA graphs (graphs.GraphedSteps). Checkpoints stay in the reference layout (the banks'
reference_state_dict / reference_optimizer_state), so a fast run resumes on the reference path and back. Whether
a run takes this path at all is decided in one place: vidgan_fast/execution.py.
"""
from __future__ import annotations

import torch

from vidgan_fast.fast.backend import triton_unavailable_reason
from vidgan_fast.fast.bank import FrameDiscriminatorBank, VideoDiscriminatorBank
from vidgan_fast.fast.interchange import optimizer_state_from_reference
from vidgan_fast.fast.rmsprop import FusedRMSprop


class FastPathUnavailable(RuntimeError):
    """Triton cannot run the fast ops on this state's device; str(e) says why in one line."""


def _rebuild_optimizer(opt: torch.optim.Optimizer, params, state_dict: dict, capturable: bool, cls=None, **extra):
    """The same optimizer (hyper-parameters, state; type `cls`, default opt's) over `params`, capturable for CUDA
    graphs if asked."""
    group = opt.param_groups[0]
    kwargs = {k: group[k] for k in ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")}
    new = (cls or type(opt))(params, capturable=capturable, **kwargs, **extra)
    # the flag goes into the state dict too, so that load_state_dict puts `step` on the device it needs
    new.load_state_dict({**state_dict, "param_groups": [{**g, "capturable": capturable}
                                                        for g in state_dict["param_groups"]]})
    return new


def to_fast(state, precision: str | None = None):
    """The fast twin of a (reference) TrainState, in place; returns it. Raises FastPathUnavailable (and changes
    nothing) where Triton cannot run on the state's device.

    precision: of the kernels' products, "fp32" | "tf32" | "bf16" (default: the run's, state.cfg.precision)."""
    reason = triton_unavailable_reason(state.device)
    if reason is not None:
        raise FastPathUnavailable(reason)
    return convert(state, precision)


def convert(state, precision: str | None = None, capturable: bool | None = None):
    """to_fast without asking whether Triton can run on the state's device (the lab builds fast states on the meta
    device, where nothing runs). capturable: the optimizers' flag (default: on a CUDA device)."""
    from vidgan_fast.fast.frozen_generator import FrozenFrameGenerator
    precision = precision or state.cfg.precision
    capturable = state.device.type == "cuda" if capturable is None else capturable
    bank_cls = VideoDiscriminatorBank if state.phase.video else FrameDiscriminatorBank
    bank = bank_cls.from_reference(list(state.discriminators), precision=precision)
    bank = bank.to(state.device)
    bank.train(state.discriminators.training)
    d_opt_state = optimizer_state_from_reference(bank, state.d_opt.state_dict())
    state.d_opt = _rebuild_optimizer(state.d_opt, bank.parameters(), d_opt_state, capturable, cls=FusedRMSprop,
                                     copies=bank.stored_copy_of())
    bank.fuse_optimizer(state.d_opt)       # conv1..conv3's weights step in the backward (fast/bank.py)
    state.discriminators = bank
    state.g_opt = _rebuild_optimizer(state.g_opt, state.generator.parameters(), state.g_opt.state_dict(),
                                     capturable)
    if state.f_opt is not None:      # --finetune-frames: G_F trains, so it stays the reference module
        state.f_opt = _rebuild_optimizer(state.f_opt, state.frame_generator.parameters(),
                                         state.f_opt.state_dict(), capturable)
    elif state.frame_generator is not None:
        state.renderer = FrozenFrameGenerator.from_reference(state.frame_generator, precision=precision)
    return state


def is_fast(state) -> bool:
    """Whether `state` runs on the fast modules (to_fast was applied)."""
    return isinstance(state.discriminators, (FrameDiscriminatorBank, VideoDiscriminatorBank))
