"""One RMSprop step of a discriminator bank's parameters: torch.optim.RMSprop (foreach, as training runs it,
and single-tensor: the reference twin) vs FusedRMSprop (fast/rmsprop.py, kernels/rmsprop.py: one Triton launch per
tensor, 20 bytes moved per fp32 parameter; with bf16 weight copies, 22), and the kernel alone at several block
sizes (kernels/rmsprop.rmsprop_update's `block`: elements per program).

    pytest benchmarks/bench_rmsprop.py --benchmark-only --benchmark-group-by=group
    BENCH_RMSPROP_SIZE=moderate pytest benchmarks/bench_rmsprop.py --benchmark-only    # tiny | moderate | paper

Sizes: the parameter shapes of the phase-1 (D_F) and phase-2 (D_V) banks (8 tensors each) at 'paper' widths
(default on a GPU: 504M / 538M parameters, 6 GB of weights, gradients and square_avg), 'moderate' or 'tiny'
(default on CPU). All columns are capturable optimizers (step on the device) except where the name says
otherwise. extra_info holds the bytes the fused kernel must move (20 per parameter) so that GB/s can be read off
the time; compare ratios within one group of one run only. VIDGAN_BENCH_THREADS=1 pins torch's CPU threads. The
fused columns run wherever Triton runs (a CUDA GPU; CPU tensors under TRITON_INTERPRET=1, which is no speed measure)
and are skipped with the reason elsewhere. Nothing here asserts speed.
"""
from __future__ import annotations

import os
import platform
import warnings

import pytest
import torch

from vidgan_fast.fast.backend import triton_unavailable_reason
from vidgan_fast.fast.rmsprop import FusedRMSprop

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = {   # kind -> (K, widths), as bench_bank.py
    "paper": {"D_F": (48, (256, 512, 1024)), "D_V": (16, (256, 512, 768))},
    "moderate": {"D_F": (48, (64, 128, 256)), "D_V": (16, (32, 64, 96))},
    "tiny": {"D_F": (8, (16, 32, 64)), "D_V": (4, (8, 16, 32))},
}
SIZE = os.environ.get("BENCH_RMSPROP_SIZE", "paper" if DEVICE.type == "cuda" else "tiny")
COLUMNS = ("torch_foreach", "torch_foreach_noncapturable", "torch_single", "fused", "fused_noncapturable",
           "fused_bf16_copies", "kernel_block_1024", "kernel_block_2048", "kernel_block_4096")
LR = 2e-4
if os.environ.get("VIDGAN_BENCH_THREADS"):      # e.g. 1 on a shared CPU, where spinning OpenMP threads mislead
    torch.set_num_threads(int(os.environ["VIDGAN_BENCH_THREADS"]))


def bank_shapes(kind: str) -> list[tuple[int, ...]]:
    """The bank's parameter shapes: per layer [K, Cout, Cin, 4, 4(, 4)] and a bias [K, Cout]."""
    k, widths = SIZES[SIZE][kind]
    kernel = (4, 4) if kind == "D_F" else (4, 4, 4)
    channels = (1, *widths, 1)
    shapes = []
    for cin, cout in zip(channels[:-1], channels[1:]):
        shapes += [(k, cout, cin, *kernel), (k, cout)]
    return shapes


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _optimizer(column: str, params):
    """The optimizer of `column` over params; the kernel_block_* columns: an object whose step() launches
    kernels/rmsprop.rmsprop_update with that block on the same tensors (state made as FusedRMSprop makes it)."""
    capturable = DEVICE.type == "cuda" and not column.endswith("noncapturable")
    if column.startswith("torch"):
        return torch.optim.RMSprop(params, lr=LR, capturable=capturable, foreach=column != "torch_single")
    reason = triton_unavailable_reason(DEVICE)
    if reason is not None:
        pytest.skip(f"the fused RMSprop's Triton kernel cannot run here: {reason}")
    copies = ({p: torch.empty_like(p, dtype=torch.bfloat16) for p in params} if column == "fused_bf16_copies"
              else None)
    opt = FusedRMSprop(params, lr=LR, capturable=capturable, copies=copies)
    if not column.startswith("kernel_block_"):
        return opt
    from vidgan_fast.kernels.rmsprop import rmsprop_update
    opt.init_state()
    block = int(column.rsplit("_", 1)[1])
    states = [opt.state[p] for p in params]

    class KernelAtBlock:
        def step(self):
            rmsprop_update(params, [p.grad for p in params], [s["square_avg"] for s in states],
                           [s["step"] for s in states] if capturable else None, LR, 0.99, 1e-8, block=block)
    return KernelAtBlock()


@pytest.mark.parametrize("column", COLUMNS)
@pytest.mark.parametrize("kind", ["D_F", "D_V"])
def test_rmsprop_step(benchmark, kind, column):
    torch.manual_seed(0)
    shapes = bank_shapes(kind)
    params = [torch.randn(s, device=DEVICE).mul_(0.02).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = _optimizer(column, params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # capturable optimizers run eagerly here: torch warns once

        def fn():
            opt.step()
            _sync()
        fn()                                     # warm-up: state allocation, Triton compile
    numel = sum(p.numel() for p in params)
    benchmark.group = f"RMSprop step {kind} bank: {len(shapes)} tensors, {numel / 1e6:.1f}M params [{SIZE}, {DEVICE.type}]"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else platform.processor(),
        torch=torch.__version__, size=SIZE, params=numel, fused_bytes=20 * numel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        benchmark.pedantic(fn, rounds=20 if DEVICE.type == "cuda" else 5, warmup_rounds=2, iterations=1)
