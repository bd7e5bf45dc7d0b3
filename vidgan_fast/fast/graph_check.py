"""CUDA-graph replays against eager steps: `vidgan check`'s captured-step rows, and the tests.

    err, rel, tol, passed, note = check_graphed_steps(1, "cuda")     # phase 1, tiny sizes, 3 steps

graphed_vs_eager replays `steps` captured D+G steps (graphs.GraphedSteps) on a state and runs the same steps
eagerly on a copy, fed the same batches and noise, then compares every loss, parameter, batch-norm buffer and
optimizer state tensor within the one tolerance policy (vidgan_fast.tolerance).
"""
from __future__ import annotations

import copy
import math

import torch

from vidgan_fast.config import PHASE_NAMES, preset
from vidgan_fast.fast.engine import to_fast
from vidgan_fast.fast.graphs import CudaRuntime, GraphedSteps, trained_parts
from vidgan_fast.step import build_frame_generator, build_state, d_step, g_step
from vidgan_fast.tolerance import tolerance

CHECK_STEPS = 3


def graphed_vs_eager(state, steps: int = CHECK_STEPS, runtime=CudaRuntime, seed: int = 0) -> list[tuple]:
    """Replay `steps` captured D+G steps on `state` and run the same steps eagerly on a copy, fed the same
    batches and noise. Returns [(name, graphed, eager)]: every loss, then every parameter, buffer (batch-norm
    running_mean/var, num_batches_tracked) and optimizer state tensor after the last step."""
    eager, shape = copy.deepcopy(state), state.phase.sample_shape
    gen = torch.Generator().manual_seed(seed)
    graphed = GraphedSteps(state, shape, shape[0], runtime=runtime)
    pairs = []
    for i in range(1, steps + 1):
        real = (torch.rand(shape, generator=gen) * 2 - 1).to(state.device)
        d, g = graphed.step(real)
        z_d, z_g = graphed.z_d.clone(), graphed.z_g.clone()
        pairs += [(f"D loss, step {i}", d, d_step(eager, real, z_d)), (f"G loss, step {i}", g, g_step(eager, z_g))]
    return pairs + _final_tensors(state, eager)


def _final_tensors(a, b) -> list[tuple]:
    (mods_a, opts_a), (mods_b, opts_b) = trained_parts(a), trained_parts(b)
    pairs, names = [], {}
    for (label, ma), (_, mb) in zip(mods_a, mods_b):
        for (name, ta), (_, tb) in zip(ma.named_parameters(), mb.named_parameters()):
            pairs.append((f"{label}.{name}", ta, tb))
            names[id(ta)] = f"{label}.{name}"
        pairs += [(f"{label}.{name}", ta, tb) for (name, ta), (_, tb) in zip(ma.named_buffers(), mb.named_buffers())]
    for (label, oa), (_, ob) in zip(opts_a, opts_b):
        params_a = [p for g in oa.param_groups for p in g["params"]]
        params_b = [p for g in ob.param_groups for p in g["params"]]
        for pa, pb in zip(params_a, params_b):
            sa, sb = oa.state.get(pa, {}), ob.state.get(pb, {})
            for key in sorted(sa.keys() | sb.keys()):
                va, vb = sa.get(key), sb.get(key)
                # state one side never made (a parameter that got no gradient) is the zero a lazy init makes
                va = torch.zeros_like(vb) if va is None else va
                vb = torch.zeros_like(va) if vb is None else vb
                pairs.append((f"{label} state[{names.get(id(pa), '?')}].{key}", va, vb))
    return pairs


def worst_error(pairs) -> tuple[float, float, str]:
    """(max abs err, rel err, name) of the pair with the largest max|a - b| / max|b| (NaN counts as inf)."""
    worst = (-1.0, math.nan, math.inf, "nothing compared")
    for name, a, b in pairs:
        a, b = a.detach(), b.detach().to(a.device)
        if not a.is_floating_point():
            a, b = a.double(), b.double()
        err = (a - b).abs().max().item() if a.numel() else 0.0
        scale = b.abs().max().item() if b.numel() else 0.0
        rel = err / scale if scale else (0.0 if err == 0 else math.inf)
        rel = math.inf if math.isnan(rel) else rel
        if rel > worst[0]:
            worst = (rel, err, rel, name)
    return worst[1], worst[2], worst[3]


def step_tolerance(state, tf32: bool) -> float:
    """vidgan_fast.tolerance for the step's precision and its longest sum n. The weight
    gradient of a discriminator's first layer sums over 2 B samples times its output positions, bounded by
    2 B x the pixels of a sample (30x30 frames, 30x30x30 videos); that bound exceeds every layer's fan-in at
    paper and tiny sizes (the largest, D_V's last layer, is 768 x 64 = 49,152), so n = 2 B x pixels."""
    shape = state.phase.sample_shape
    return tolerance("tf32" if tf32 else "fp32", 2 * shape[0] * math.prod(shape[2:]))


def check_graphed_steps(phase, device, paper_size: bool = False, seed: int = 0, tf32: bool = False,
                        steps: int = CHECK_STEPS):
    """`steps` captured D+G steps against the same steps run eagerly on a copy, fed the same batches and noise,
    at the tiny preset's sizes or the paper's (paper_size). Compares the losses, every parameter, batch-norm
    buffer and optimizer state tensor; relative error per tensor against step_tolerance.

    Returns (max_abs_err, rel_err, tol, passed, note) of the worst tensor (vidgan check's step rows)."""
    phase = PHASE_NAMES[phase - 1] if isinstance(phase, int) else phase     # vidgan check numbers the phases
    device = torch.device(device)
    cfg = preset("paper" if paper_size else "tiny", device=str(device), seed=seed, tf32=tf32)
    g_f = None if phase == "frames" else build_frame_generator(cfg).state_dict()
    state = to_fast(build_state(cfg, phase, g_f))      # cfg.precision
    # Deterministic cuDNN for this comparison: gradients whose true value is 0 (biases before a train-mode batch
    # norm) are rounding noise, and RMSprop's first step turns any noise into +-10 lr; with the same
    # deterministic kernels in the graph and eagerly, both see the same noise.
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        pairs = graphed_vs_eager(state, steps, seed=seed)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
    err, rel, name = worst_error(pairs)
    tol = step_tolerance(state, tf32)
    note = (f"phase {phase}: {steps} replays vs {steps} eager steps; losses, parameters, BN buffers, optimizer "
            f"state ({len(pairs)} tensors); worst: {name}")
    return err, rel, tol, rel <= tol, note
