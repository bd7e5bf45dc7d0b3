"""How a training phase executes its steps: the one place where `--fast` is decided.

    run = plan(state, source)      # prepares `state` in place
    d_loss, g_loss = run.steps.step(real_batch)      # real batches come from run.source

- Reference: without cfg.fast, or where Triton cannot run (no CUDA GPU and no TRITON_INTERPRET=1, a GPU Triton
  does not target, Triton missing): one warning says why, and the reference modules run eager steps.
- Fast: the fast modules (fast/engine.to_fast), first checked against their references on this device
  (cfg.fast_check); on a CUDA device the D and G steps are captured as CUDA graphs (cfg.graphs; not under torchrun,
  whose collectives are not captured; a capture that fails warns and leaves eager fast steps), and then the whole
  data set moves to the GPU if it fits in what is left (fast/device_data.py), else batches come from the host.
torchrun: distributed.prepare keeps this rank's discriminators, after the fast modules exist and before capture.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from . import distributed
from .profiling import nvtx_range
from .step import EagerSteps, TrainState


@dataclass
class Execution:
    steps: object       # .step(real) -> (d_loss, g_loss): step.EagerSteps or fast.graphs.GraphedSteps
    source: object      # where the real batches come from (data.VideoSource, or fast.device_data on the GPU)
    fast: bool          # the fast modules run the steps
    graphs: bool        # the steps replay as CUDA graphs


def plan(state: TrainState, source) -> Execution:
    """Prepare `state` for its run (in place) and return how its steps execute (see the module docstring)."""
    fast = state.cfg.fast and _to_fast(state)
    distributed.prepare(state)
    if not (fast and state.device.type == "cuda"):
        return Execution(EagerSteps(state), source, fast, graphs=False)
    from .fast.device_data import on_gpu_if_it_fits
    from .fast.graphs import GraphedSteps
    steps, graphs = EagerSteps(state), False
    if state.cfg.graphs and not distributed.active():
        try:
            steps, graphs = GraphedSteps(state, state.phase.sample_shape, state.phase.batch), True
        except RuntimeError as e:     # capture is restored-from-snapshot safe: fall back to eager steps
            warnings.warn(f"--fast: CUDA graph capture failed ({str(e).splitlines()[0]}); running the fast "
                          f"steps without graphs (--no-graphs silences this)", RuntimeWarning, stacklevel=2)
    return Execution(steps, on_gpu_if_it_fits(source, state.device), True, graphs)


def _to_fast(state: TrainState) -> bool:
    """Convert `state` to the fast modules and check them (cfg.fast_check); False, with the one warning, where
    Triton cannot run here."""
    from .fast.backend import fallback_warning
    from .fast.engine import FastPathUnavailable, to_fast
    try:
        to_fast(state)
    except FastPathUnavailable as e:
        fallback_warning("--fast", str(e))
        return False
    if state.cfg.fast_check:
        from .checks import first_step_check
        first_step_check(state.device, phase=state.phase.number)
    return True
