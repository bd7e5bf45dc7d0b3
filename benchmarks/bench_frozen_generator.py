"""Frozen G_F: forward, and forward + code-gradient backward, over all frames of a phase-2 step.

    python -m pytest benchmarks/bench_frozen_generator.py --benchmark-group-by=group

Columns (one pytest-benchmark group per mode and frame count; compare ratios within a group only):
    fast       FrozenFrameGenerator.from_reference(g, precision='tf32') (the eager and compiled references
               convolve in tf32 too: torch's default cudnn.allow_tf32 is True)
    fast-fp32  precision='fp32': exact fp32 products
    fast-bf16  precision='bf16': bf16 operands, weights and activations stored in bf16
    eager      the reference FrameGenerator, eval mode, parameters with requires_grad off (the twin the frozen
               G_F is folded from)
    compile    torch.compile of that reference (skipped with the reason where it cannot compile)
GPU: the paper's widths at 240 (8 videos x 30 frames) and 1,920 frames. CPU: tiny widths and fewer frames. The
fast columns run wherever Triton runs (a CUDA GPU; CPU tensors under TRITON_INTERPRET=1, which is no speed
measure) and are skipped with the reason elsewhere.
"""
from __future__ import annotations

import pytest
import torch

from vidgan_fast.fast.backend import triton_unavailable_reason
from vidgan_fast.fast.frozen_generator import FrozenFrameGenerator
from vidgan_fast.models import FrameGenerator

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
WIDTHS = (1024, 1024, 512, 256) if CUDA else (64, 64, 32, 16)
FRAMES = (240, 1920) if CUDA else (24, 240)
ROUNDS = 30 if CUDA else 10
IMPLS = ("fast", "fast-fp32", "fast-bf16", "eager", "compile")
PRECISION = {"fast": "tf32", "fast-fp32": "fp32", "fast-bf16": "bf16"}


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def generator(impl: str):
    torch.manual_seed(0)
    g = FrameGenerator(widths=WIDTHS).to(DEVICE).eval().requires_grad_(False)
    if impl in PRECISION:
        reason = triton_unavailable_reason(DEVICE)
        if reason is not None:
            pytest.skip(f"the frozen G_F's Triton kernels cannot run here: {reason}")
        return FrozenFrameGenerator.from_reference(g, precision=PRECISION[impl])
    if impl == "compile":
        return torch.compile(g)
    return g


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("frames", FRAMES)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_frozen_generator(benchmark, mode, frames, impl):
    g = generator(impl)
    codes = torch.randn(frames, 100, device=DEVICE)
    grad_frames = torch.randn(frames, 1, 30, 30, device=DEVICE)

    def step():
        if mode == "forward":
            with torch.no_grad():
                g(codes)
        else:
            z = codes.detach().requires_grad_(True)
            g(z).backward(grad_frames)
        sync()

    try:
        for _ in range(3):   # warm-up: Triton autotuning/compilation, torch.compile, cuDNN algorithm choice
            step()
    except Exception as e:   # noqa: BLE001 (torch.compile raises many kinds)
        if impl == "compile":
            pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        raise
    benchmark.group = f"{mode}, {frames} frames, widths {WIDTHS}"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if CUDA else "cpu", torch=torch.__version__,
                                triton=triton_version, widths=WIDTHS, frames=frames)
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1)
