"""Frozen G_F: forward, and forward + code-gradient backward, over all frames of a phase-2 step.

    python -m pytest benchmarks/bench_frozen_generator.py --benchmark-group-by=group

Columns (one pytest-benchmark group per mode and frame count; compare ratios within a group only):
    fast       FrozenFrameGenerator impl='triton', precision='tf32' (the eager and compiled references convolve in
               tf32 too: torch's default cudnn.allow_tf32 is True)
    fast-fp32  impl='triton', exact fp32 products (precision='fp32')
    eager      the reference FrameGenerator, eval mode, parameters with requires_grad off
    compile    torch.compile of that reference (skipped with the reason where it cannot compile)
    ref        FrozenFrameGenerator impl='ref': the BN-folded weights in plain PyTorch
GPU: the paper's widths at 240 (8 videos x 30 frames) and 1,920 frames. CPU: tiny widths and fewer frames,
and no Triton columns (the interpreter is not a speed measure).
"""
from __future__ import annotations

import pytest
import torch
import triton

from vidgan_fast.fast.frozen_generator import FrozenFrameGenerator
from vidgan_fast.models import FrameGenerator

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
WIDTHS = (1024, 1024, 512, 256) if CUDA else (64, 64, 32, 16)
FRAMES = (240, 1920) if CUDA else (24, 240)
ROUNDS = 30 if CUDA else 10
IMPLS = ("fast", "fast-fp32", "eager", "compile", "ref")


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def generator(impl: str):
    torch.manual_seed(0)
    g = FrameGenerator(widths=WIDTHS).to(DEVICE).eval().requires_grad_(False)
    if impl in ("fast", "fast-fp32"):
        if not CUDA:
            pytest.skip("the Triton interpreter on CPU is not a speed measure")
        return FrozenFrameGenerator.from_reference(g, impl="triton",
                                                   precision="tf32" if impl == "fast" else "fp32")
    if impl == "ref":
        return FrozenFrameGenerator.from_reference(g, impl="ref")
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
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if CUDA else "cpu", torch=torch.__version__,
                                triton=triton.__version__, widths=WIDTHS, frames=frames)
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1)
