"""Discriminator bank vs K looped reference discriminators (models.DiscriminatorList), forward and
forward+backward (the D step: gradients to the weights, none to the input).

    pytest benchmarks/bench_bank.py --benchmark-only --benchmark-group-by=group
    BENCH_BANK_SIZE=moderate pytest benchmarks/bench_bank.py --benchmark-only    # tiny | moderate | paper

Sizes: 'paper' (default on a GPU) is D_F K=48 on 128 frames and D_V K=16 on 16 videos at the paper's widths;
'tiny' (default on CPU) and 'moderate' are smaller. Columns: 'reference' (eager loop over K modules),
'compile' (torch.compile of that loop), 'bank_ref' (the bank's grouped-convolution path), 'bank_triton_tf32' and
'bank_triton_fp32' (the Triton kernels; GPU only: the CPU interpreter is no speed measure). Compare ratios
within one group of one run only.

test_bank_layer times each bank layer alone, Triton kernels vs PyTorch grouped convolution (cuDNN, which uses
TF32 by default on a GPU): whether a layer would be better left to cuDNN (the banks run every layer in Triton).
"""
from __future__ import annotations

import os
import platform

import pytest
import torch

from vidgan_fast import models
from vidgan_fast.fast.backend import triton_unavailable_reason
from vidgan_fast.fast.bank import FrameDiscriminatorBank, VideoDiscriminatorBank

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = {   # kind -> (K, batch, widths)
    "paper": {"D_F": (48, 128, (256, 512, 1024)), "D_V": (16, 16, (256, 512, 768))},
    "moderate": {"D_F": (48, 32, (64, 128, 256)), "D_V": (16, 4, (32, 64, 96))},
    "tiny": {"D_F": (8, 16, (16, 32, 64)), "D_V": (4, 2, (8, 16, 32))},
}
SIZE = os.environ.get("BENCH_BANK_SIZE", "paper" if DEVICE.type == "cuda" else "tiny")
COLUMNS = ("reference", "compile", "bank_ref", "bank_triton_tf32", "bank_triton_fp32")
_compile_failures: dict = {}


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _references(kind):
    k, _, widths = SIZES[SIZE][kind]
    torch.manual_seed(0)
    make = models.frame_discriminators if kind == "D_F" else models.video_discriminators
    return make(k, widths).to(DEVICE)


def _input(kind):
    _, b, _ = SIZES[SIZE][kind]
    shape = (b, 1, 30, 30) if kind == "D_F" else (b, 1, 30, 30, 30)
    return torch.rand(shape, device=DEVICE) * 2 - 1


def _model(kind, column):
    refs = _references(kind)
    cls = FrameDiscriminatorBank if kind == "D_F" else VideoDiscriminatorBank
    if column == "reference":
        return refs
    if column == "compile":
        torch._dynamo.reset()                  # fresh caches: no dynamic-shape recompiles across cases
        return torch.compile(refs, dynamic=False)
    if column == "bank_ref":
        return cls.from_reference(list(refs), impl="ref")
    reason = triton_unavailable_reason(DEVICE)
    if DEVICE.type != "cuda" or reason is not None:
        why = reason or "the CPU interpreter is no speed measure"
        pytest.skip(f"Triton column needs a CUDA GPU Triton supports ({why})")
    return cls.from_reference(list(refs), impl="triton",
                              precision="tf32" if column == "bank_triton_tf32" else "fp32")


def _step(model, x, mode):
    if mode == "forward":
        def fn():
            with torch.no_grad():
                model(x)
            _sync()
    else:
        params = list(model.parameters())

        def fn():
            for p in params:
                p.grad = None
            model(x).sum().backward()
            _sync()
    return fn


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("column", COLUMNS)
@pytest.mark.parametrize("kind", ["D_F", "D_V"])
def test_bank_vs_references(benchmark, kind, column, mode):
    k, b, widths = SIZES[SIZE][kind]
    if column == "compile" and kind in _compile_failures:
        pytest.skip(f"torch.compile failed earlier for {kind}: {_compile_failures[kind]}")
    model = _model(kind, column)
    x = _input(kind)
    fn = _step(model, x, mode)
    try:
        fn()                                   # warm-up (compiles, autotunes, allocates)
    except Exception as e:                     # torch.compile is optional: skip with its reason
        if column != "compile":
            raise
        _compile_failures[kind] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        pytest.skip(f"torch.compile of the looped reference failed: {_compile_failures[kind]}")
    benchmark.group = f"{kind} K={k} B={b} widths={widths} {mode} [{SIZE}, {DEVICE.type}]"
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else platform.processor(),
                                torch=torch.__version__, size=SIZE, k=k, batch=b, widths=widths)
    rounds = 20 if DEVICE.type == "cuda" else 5
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=2, iterations=1)


LAYER_INPUTS = {"D_F": (15, 15), "D_V": (30, 9, 9)}    # spatial size of the projected input (conv1's input)


def grouped_conv(x, weight, bias, stride, padding, leaky):
    """BatchedConv's mathematics through one PyTorch grouped convolution (same [K, B, C, ...] layout)."""
    K, B = x.shape[:2]
    conv = torch.nn.functional.conv2d if x.dim() == 5 else torch.nn.functional.conv3d
    y = conv(x.transpose(0, 1).reshape(B, -1, *x.shape[3:]), weight.reshape(-1, *weight.shape[2:]),
             bias.reshape(-1), stride, padding, groups=K)
    y = y.view(B, K, -1, *y.shape[2:]).transpose(0, 1)
    return torch.nn.functional.leaky_relu(y, 0.2) if leaky else y


def _layer_problem(kind, layer):
    """The input [K, B, Cin, ...], weight and bias of bank layer `layer` at this run's size."""
    from vidgan_fast.kernels.batched_conv import output_shape
    k, b, widths = SIZES[SIZE][kind]
    cls = FrameDiscriminatorBank if kind == "D_F" else VideoDiscriminatorBank
    spatial, channels = LAYER_INPUTS[kind], (1, *widths, 1)
    for i, name in enumerate(("conv1", "conv2", "conv3", "conv4")):
        stride, padding = cls.geometry[name]
        if name == layer:
            kernel = (4,) * len(spatial)
            x = torch.rand(k, b, channels[i], *spatial, device=DEVICE) * 2 - 1
            w = torch.randn(k, channels[i + 1], channels[i], *kernel, device=DEVICE) * 0.02
            return x, w, torch.zeros(k, channels[i + 1], device=DEVICE), stride, padding, name != "conv4"
        spatial = output_shape(spatial, (4,) * len(spatial), stride, padding)
    raise ValueError(layer)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", ["grouped", "triton_tf32", "triton_fp32"])
@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3", "conv4"])
@pytest.mark.parametrize("kind", ["D_F", "D_V"])
def test_bank_layer(benchmark, kind, layer, impl, mode):
    """One bank layer, Triton kernels vs PyTorch grouped convolution (the [K, B, C, ...] layout kept)."""
    from vidgan_fast.fast.bank import BatchedConv
    if impl != "grouped" and (DEVICE.type != "cuda" or triton_unavailable_reason(DEVICE) is not None):
        pytest.skip("Triton column needs a CUDA GPU Triton supports (the CPU interpreter is no speed measure)")
    x, w, bias, stride, padding, leaky = _layer_problem(kind, layer)
    x.requires_grad_(layer != "conv1")          # conv1's input (the projections) needs no gradient in a D step
    w.requires_grad_()
    bias.requires_grad_()
    if impl == "grouped":
        layer_fn = lambda: grouped_conv(x, w, bias, stride, padding, leaky)  # noqa: E731
    else:
        layer_fn = lambda: BatchedConv.apply(x, w, bias, stride, padding, leaky,
                                              "tf32" if impl == "triton_tf32" else "fp32")  # noqa: E731
    if mode == "forward":
        def fn():
            with torch.no_grad():
                layer_fn()
            _sync()
    else:
        def fn():
            x.grad = w.grad = bias.grad = None
            layer_fn().sum().backward()
            _sync()
    fn()
    benchmark.group = f"{kind} {layer} x={tuple(x.shape)} {mode} [{SIZE}, {DEVICE.type}]"
    benchmark.pedantic(fn, rounds=20 if DEVICE.type == "cuda" else 5, warmup_rounds=2, iterations=1)
