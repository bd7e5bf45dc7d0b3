"""`--fast`: the same training state, executed by the fast ops.

    state = to_fast(build_state(cfg, phase, ...))   # banks for the K discriminators, frozen Triton G_F

Only the execution changes: the discriminators become one bank (stacked weights, one launch per layer for
all K), phase 2's frozen G_F becomes the folded Triton generator, optimizers become capturable on CUDA, and
train.py's loop may replay the steps as CUDA graphs (graphs.GraphedSteps). Checkpoints stay in the reference
layout (reference_state / reference_optimizer_state), so a fast run resumes on the reference path and back.
Where Triton cannot run (no CUDA GPU and no TRITON_INTERPRET=1, a GPU Triton does not target, Triton
missing) one warning says why and the state is returned unchanged: the reference path.
"""
from __future__ import annotations

import torch

from vidgan_fast.fast.backend import triton_unavailable_reason, warn_once
from vidgan_fast.fast.bank import FrameDiscriminatorBank, VideoDiscriminatorBank
from vidgan_fast.fast.interchange import optimizer_state_from_reference, optimizer_state_to_reference


def fast_unavailable_reason(device: torch.device) -> str | None:
    """None when --fast can run on `device`, else why not (one line)."""
    if device.type == "cpu" and triton_unavailable_reason(device) is not None:
        return "no CUDA GPU (set TRITON_INTERPRET=1 to run the Triton kernels on the CPU through the interpreter)"
    return triton_unavailable_reason(device)


def portable_optimizer_state(state_dict: dict) -> dict:
    """An optimizer state dict that loads on either path: capturable (CUDA-graph) optimizers saved as plain."""
    return {**state_dict, "param_groups": [{**g, "capturable": False} if "capturable" in g else g
                                           for g in state_dict["param_groups"]]}


def _rebuild_optimizer(opt: torch.optim.Optimizer, params, state_dict: dict, capturable: bool):
    """The same optimizer (type, hyper-parameters, state) over `params`, capturable for CUDA graphs if asked."""
    group = opt.param_groups[0]
    kwargs = {k: group[k] for k in ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")}
    new = type(opt)(params, capturable=capturable, **kwargs)
    # the flag goes into the state dict too, so that load_state_dict puts `step` on the device it needs
    new.load_state_dict({**state_dict, "param_groups": [{**g, "capturable": capturable}
                                                        for g in state_dict["param_groups"]]})
    return new


def to_fast(state, precision: str | None = None, warn: bool = True):
    """The fast twin of a (reference) TrainState, in place; returns it. Falls back with a warning.

    precision: of the kernels' products, "fp32" | "tf32" | "bf16" (default: the run's, state.cfg.precision)."""
    from vidgan_fast.fast.frozen_generator import FrozenFrameGenerator
    reason = fast_unavailable_reason(state.device)
    if reason is not None:
        if warn:
            warn_once(f"--fast: running the reference path instead: {reason}")
        return state
    precision = precision or state.cfg.precision
    capturable = state.device.type == "cuda"
    bank_cls = FrameDiscriminatorBank if state.phase == "frames" else VideoDiscriminatorBank
    bank = bank_cls.from_reference(list(state.discriminators), impl="triton", precision=precision)
    bank = bank.to(state.device)
    bank.train(state.discriminators.training)
    d_opt_state = optimizer_state_from_reference(bank, state.d_opt.state_dict())
    state.d_opt = _rebuild_optimizer(state.d_opt, bank.parameters(), d_opt_state, capturable)
    state.discriminators = bank
    state.g_opt = _rebuild_optimizer(state.g_opt, state.generator.parameters(), state.g_opt.state_dict(),
                                     capturable)
    if state.f_opt is not None:      # --finetune-frames: G_F trains, so it stays the reference module
        state.f_opt = _rebuild_optimizer(state.f_opt, state.frame_generator.parameters(),
                                         state.f_opt.state_dict(), capturable)
    elif state.frame_generator is not None:
        state.renderer = FrozenFrameGenerator.from_reference(state.frame_generator, impl="triton",
                                                            precision=precision)
    state.fast = True
    return state


def is_bank(discriminators) -> bool:
    return isinstance(discriminators, (FrameDiscriminatorBank, VideoDiscriminatorBank))


def reference_state(discriminators) -> dict:
    """The discriminators' weights in the reference (DiscriminatorList) layout."""
    return discriminators.reference_state_dict() if is_bank(discriminators) else discriminators.state_dict()


def reference_optimizer_state(discriminators, d_opt) -> dict:
    """The discriminator optimizer's state in the reference layout."""
    sd = portable_optimizer_state(d_opt.state_dict())
    return optimizer_state_to_reference(discriminators, sd) if is_bank(discriminators) else sd
