"""Training-step benchmarks: phase 1 D step and G step, phase 2 D step and G step, each for the eager reference,
torch.compile of the reference step, the stacked-vmap baseline (baselines.py) and the fast path (fast/engine.to_fast:
Triton banks, fused RMSprop, frozen Triton G_F; CUDA graphs on a GPU). The steps are vidgan_fast.step.d_step /
g_step, the functions `vidgan train` runs, on states built by vidgan_fast.step.build_state. Where Triton cannot run
(a CPU without TRITON_INTERPRET=1) the fast column is skipped with the reason; under the interpreter it runs the
kernels on CPU tensors, which is no speed measure.

    pytest benchmarks/bench_steps.py --benchmark-only            # size: paper on a GPU, tiny on CPU
    VIDGAN_BENCH_SIZE=tiny pytest benchmarks/bench_steps.py --benchmark-only

`step_cases` is shared with benchmarks/report.py (the table). Real batches are random tensors in [-1, 1] (a step's
cost does not depend on the pixels), rotated over a few pre-made buffers; the noise is pre-drawn and rotated too.
"""
from __future__ import annotations

import os

import torch

from vidgan_fast.benchmarks import baselines
from vidgan_fast.benchmarks.timing import COLUMNS, Case, bench_case, column_settings, resolve_device

try:
    import pytest
except ImportError:        # the report (and `vidgan bench`) import step_cases without the test extra
    pytest = None
from vidgan_fast.lab import flops as F
from vidgan_fast import step as steps
from vidgan_fast.config import preset
from vidgan_fast.models import frame_discriminators, video_discriminators

BUFFERS = 3          # rotated input buffers per case
if os.environ.get("VIDGAN_BENCH_THREADS"):      # e.g. 1 on a shared CPU, where spinning OpenMP threads mislead
    torch.set_num_threads(int(os.environ["VIDGAN_BENCH_THREADS"]))


def resolve_size(size: str, device: torch.device) -> str:
    if size == "auto":
        return "paper" if device.type == "cuda" else "tiny"
    if size not in ("paper", "tiny"):
        raise ValueError(f"benchmark size must be auto, paper or tiny, got {size!r}")
    return size


def bench_config(size: str, device: torch.device, tf32: bool = True):
    """The preset of `size` on `device`, TF32 as pinned (step.build_state sets PyTorch's switches from it)."""
    return preset(size, device="cuda" if device.type == "cuda" else "cpu", tf32=tf32)


def _state(cfg, phase: str):
    gf_state = steps.build_frame_generator(cfg).state_dict() if phase == "video" else None
    return steps.build_state(cfg, phase, gf_state)


def make_fast(state, tf32: bool):
    """The fast path on `state`, exactly as `--fast` builds it (vidgan_fast.fast.engine.to_fast), in place: the
    Triton banks, fused RMSprop and frozen Triton G_F. Raises fast.engine.FastPathUnavailable where Triton cannot
    run (the report then shows the fast column as 'unavailable: <why>' and never builds it)."""
    from vidgan_fast.fast.engine import to_fast
    return to_fast(state, precision="tf32" if tf32 else "fp32")


def graphed_step(state, which: str, real_shape, batch: int):
    """On CUDA the fast column replays the captured step, as `--fast` training does (noise drawn in-graph)."""
    from vidgan_fast.fast.graphs import GraphedSteps
    graphed = GraphedSteps(state, real_shape, batch)
    if which == "D":
        return lambda inp: graphed.d(inp[0])
    return lambda inp: graphed.g()


def _step_flops(cfg, phase: str, which: str) -> int:
    with torch.device("meta"):
        g = steps.build_frame_generator(cfg)
        if phase == "frames":
            d = frame_discriminators(1, cfg.df_widths)
            fn = F.phase1_d_step_flops if which == "D" else F.phase1_g_step_flops
            return fn(g, d, cfg.frames_k, cfg.frames_batch).total
        v = steps.build_video_generator(cfg)
        d = video_discriminators(1, cfg.dv_widths)
    fn = F.phase2_d_step_flops if which == "D" else F.phase2_g_step_flops
    return fn(v, g, d, cfg.video_k, cfg.video_batch).total


def step_cases(size: str = "auto", device: str | torch.device = "auto", fast_tf32: bool = True,
               compile_enabled: bool = True, compile_mode: str | None = None,
               compile_backend: str | None = None) -> list[Case]:
    """The four training steps as timing cases (columns reference / compile / vmap / fast, built lazily; the fast
    column is 'unavailable: <why>' where Triton cannot run)."""
    device = resolve_device(device)
    size = resolve_size(size, device)
    cfg = bench_config(size, device, fast_tf32)
    settings = column_settings(device, kind="step", compile_enabled=compile_enabled, compile_mode=compile_mode,
                               compile_backend=compile_backend)
    cases = []
    for phase, k, batch in (("frames", cfg.frames_k, cfg.frames_batch), ("video", cfg.video_k, cfg.video_batch)):
        real_shape = (batch, 1, 30, 30) if phase == "frames" else (batch, 1, 30, 30, 30)
        label = {"frames": "phase1", "video": "phase2"}[phase]
        for which in ("D", "G"):
            gen = torch.Generator(device="cpu").manual_seed(0)
            z = [torch.randn(batch, steps.Z_DIM, generator=gen).to(device) for _ in range(BUFFERS)]
            if which == "D":
                real = [(torch.rand(real_shape, generator=gen) * 2 - 1).to(device) for _ in range(BUFFERS)]
                inputs = list(zip(real, z))
            else:
                inputs = z

            def factory(column, phase=phase, which=which):
                state = _state(cfg, phase)
                if column == "fast":
                    make_fast(state, fast_tf32)
                    if state.device.type == "cuda":
                        return graphed_step(state, which, real_shape, batch)
                if column == "vmap":
                    baselines.to_vmap(state)
                if column == "compile" or (column == "vmap" and settings.compile_enabled):
                    return baselines.compiled_step(state, which, settings.compile_kwargs)
                return baselines.eager_step(state, which)

            name = f"{label} {which} step (K={k}, B={batch})"
            cases.append(Case(name, "step", _step_flops(cfg, phase, which), inputs,
                              settings.columns(factory), settings.labels, size=size, compiled=compile_enabled))
    return cases


# ------------------------------------------------------------------------------------ pytest-benchmark

_CASES: dict = {}


def _cases() -> list[Case]:
    if "steps" not in _CASES:
        _CASES["steps"] = step_cases(os.environ.get("VIDGAN_BENCH_SIZE", "auto"))
    return _CASES["steps"]


if pytest is not None:
    @pytest.mark.parametrize("column", COLUMNS)
    @pytest.mark.parametrize("step", range(4), ids=["phase1-D", "phase1-G", "phase2-D", "phase2-G"])
    def test_step(benchmark, step, column):
        bench_case(benchmark, _cases()[step], column, rounds=10 if torch.cuda.is_available() else 5)
