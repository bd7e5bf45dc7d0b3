"""Discriminator bank vs K looped reference discriminators (models.DiscriminatorList), forward and
forward+backward (the D step: gradients to the weights, none to the input).

    pytest benchmarks/bench_bank.py --benchmark-only --benchmark-group-by=group
    BENCH_BANK_SIZE=moderate pytest benchmarks/bench_bank.py --benchmark-only    # tiny | moderate | paper

Sizes: 'paper' (default on a GPU) is D_F K=48 on 128 frames and D_V K=16 on 16 videos at the paper's widths;
'tiny' (default on CPU) and 'moderate' are smaller. Columns: 'reference' (eager loop over K modules), 'compile'
(torch.compile of that loop), 'grouped' (the K discriminators as one PyTorch grouped convolution per layer:
baselines.GroupedDiscriminators, a benchmark column of its own, cuDNN on a GPU), 'bank_tf32', 'bank_fp32' and
'bank_bf16' (fast/bank.py: the Triton kernels at that precision). The bank columns run wherever Triton runs (a CUDA
GPU; CPU tensors under TRITON_INTERPRET=1, which is no speed measure) and are skipped with the reason elsewhere.
Compare ratios within one group of one run only.

test_bank_layer times each bank layer alone, its Triton kernels (kernels/conv.py, kernels/logit.py: forward, and
for forward+backward the weight gradient and, above conv1, the input gradient, as a D step runs them) vs PyTorch's
grouped convolution with autograd (cuDNN, which uses TF32 by default on a GPU): whether a layer would be better
left to cuDNN (the banks run every layer in Triton).
"""
from __future__ import annotations

import os
import platform

import pytest
import torch

from vidgan_fast import models
from vidgan_fast.benchmarks.baselines import GroupedDiscriminators
from vidgan_fast.fast.backend import triton_unavailable_reason
from vidgan_fast.fast.bank import FrameDiscriminatorBank, VideoDiscriminatorBank

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = {   # kind -> (K, batch, widths)
    "paper": {"D_F": (48, 128, (256, 512, 1024)), "D_V": (16, 16, (256, 512, 768))},
    "moderate": {"D_F": (48, 32, (64, 128, 256)), "D_V": (16, 4, (32, 64, 96))},
    "tiny": {"D_F": (8, 16, (16, 32, 64)), "D_V": (4, 2, (8, 16, 32))},
}
SIZE = os.environ.get("BENCH_BANK_SIZE", "paper" if DEVICE.type == "cuda" else "tiny")
COLUMNS = ("reference", "compile", "grouped", "bank_tf32", "bank_fp32", "bank_bf16")
_compile_failures: dict = {}


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _skip_without_triton():
    reason = triton_unavailable_reason(DEVICE)
    if reason is not None:
        pytest.skip(f"the bank's Triton kernels cannot run here: {reason}")


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
    if column == "grouped":
        return GroupedDiscriminators(refs).to(DEVICE)
    _skip_without_triton()
    return cls.from_reference(list(refs), precision=column.removeprefix("bank_")).to(DEVICE)


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


LAYER_INPUTS = {"D_F": (1, 15, 15), "D_V": (30, 9, 9)}    # the projected input (conv1's), depth 1 for frames


def grouped_conv(x, weight, bias, stride, padding, leaky):
    """One bank layer through one PyTorch grouped convolution: x [B, K x Cin, ...], weight [K, Cout, Cin, *kernel]."""
    K = weight.shape[0]
    conv = torch.nn.functional.conv2d if weight.dim() == 5 else torch.nn.functional.conv3d
    y = conv(x, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), stride, padding, groups=K)
    return torch.nn.functional.leaky_relu(y, models.LEAKY_SLOPE) if leaky else y


def _layer_problem(kind, layer):
    """Bank layer `layer` at this run's size: (input [K, B, D, H, W, Cin] channels last, weight [K, Cout, KD, KH,
    KW, Cin] channels last, bias [K, Cout], 3-D kernel, stride, padding, the reference's 2-D/3-D stride and
    padding, input [K, B, Cin, ...] for the grouped convolution's layout, weight [K, Cout, Cin, *kernel])."""
    from vidgan_fast.kernels.conv import output_size
    k, b, widths = SIZES[SIZE][kind]
    cls = FrameDiscriminatorBank if kind == "D_F" else VideoDiscriminatorBank
    dims = cls.dims
    spatial, channels = LAYER_INPUTS[kind], (1, *widths, 1)
    kernel = (1,) * (3 - dims) + (models.DISC_KERNEL,) * dims
    for i, name in enumerate(("conv1", "conv2", "conv3", "conv4")):
        stride2, padding2 = cls.geometry[name]
        stride, padding = ((1, *stride2), (0, *padding2)) if dims == 2 else (stride2, padding2)
        if name == layer:
            x = torch.rand(k, b, *spatial, channels[i], device=DEVICE) * 2 - 1
            w = torch.randn(k, channels[i + 1], *kernel, channels[i], device=DEVICE) * 0.02
            bias = torch.zeros(k, channels[i + 1], device=DEVICE)
            x_grouped = x.movedim(-1, 2).reshape(k, b, channels[i], *spatial[3 - dims:])
            x_grouped = x_grouped.transpose(0, 1).reshape(b, k * channels[i], *spatial[3 - dims:]).contiguous()
            w_ref = w.movedim(-1, 2).reshape(k, channels[i + 1], channels[i], *kernel[3 - dims:]).contiguous()
            return x, w, bias, kernel, stride, padding, (stride2, padding2), x_grouped, w_ref
        spatial = output_size(spatial, kernel, stride, padding)
    raise ValueError(layer)


def _triton_layer(layer, x, w, bias, kernel, stride, padding, precision, mode):
    """fn() running bank layer `layer`'s kernels as _Bank does: forward; with backward, the weight gradient (and
    the bias's column sum) from a stand-in gradient of the output, and the input gradient above conv1. The weight
    gradient is stored here, where a training D step applies RMSprop in its epilogue instead (conv_wgrad's
    `update=`; the step rows of bench_steps.py time that), so this row is the layer's passes without the optimizer."""
    from vidgan_fast.kernels import conv as C
    from vidgan_fast.kernels import logit as L
    storage = torch.bfloat16 if precision == "bf16" else torch.float32
    x, w = x.to(storage), w.to(storage)
    if layer == "conv4":
        g = torch.ones(x.shape[:2], device=DEVICE)

        def fn():
            y = L.logit_forward(x, w, bias, kernel, padding, precision)
            if mode != "forward":
                L.logit_wgrad(g, x, kernel, padding, precision)
                L.logit_dgrad(g, w, x, kernel, padding, act_in=True, precision=precision, out_dtype=storage)
            return y
        return fn
    leaky, cout = True, w.shape[1]
    y = C.conv_forward(x, w, bias, kernel, stride, padding, leaky, precision, out_dtype=storage)
    d = torch.ones_like(y)

    def fn():
        out = C.conv_forward(x, w, bias, kernel, stride, padding, leaky, precision, out_dtype=storage)
        if mode != "forward":
            C.conv_wgrad(d, x, kernel, stride, padding, cout, precision)
            d.sum(dim=(1, 2, 3, 4), dtype=torch.float32)
            if layer != "conv1":           # conv1's input is the fixed projection: a D step needs no gradient there
                C.conv_dgrad(d, w, x, kernel, stride, padding, act_in=True, precision=precision, out_dtype=storage)
        return out
    return fn


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", ["grouped", "triton_tf32", "triton_fp32", "triton_bf16"])
@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3", "conv4"])
@pytest.mark.parametrize("kind", ["D_F", "D_V"])
def test_bank_layer(benchmark, kind, layer, impl, mode):
    """One bank layer, Triton kernels vs PyTorch grouped convolution (each in its own layout)."""
    if impl != "grouped":
        _skip_without_triton()
    x, w, bias, kernel, stride, padding, (stride2, padding2), x_grouped, w_ref = _layer_problem(kind, layer)
    leaky = layer != "conv4"
    if impl == "grouped":
        x_grouped.requires_grad_(layer != "conv1")   # conv1's input (the projections) needs no gradient in a D step
        w_ref.requires_grad_()
        bias.requires_grad_()
        layer_fn = lambda: grouped_conv(x_grouped, w_ref, bias, stride2, padding2, leaky)  # noqa: E731
        if mode == "forward":
            def fn():
                with torch.no_grad():
                    layer_fn()
                _sync()
        else:
            def fn():
                x_grouped.grad = w_ref.grad = bias.grad = None
                layer_fn().sum().backward()
                _sync()
    else:
        run = _triton_layer(layer, x, w, bias, kernel, stride, padding, impl.removeprefix("triton_"), mode)

        def fn():
            run()
            _sync()
    fn()
    benchmark.group = f"{kind} {layer} x={tuple(x.shape)} {mode} [{SIZE}, {DEVICE.type}]"
    benchmark.pedantic(fn, rounds=20 if DEVICE.type == "cuda" else 5, warmup_rounds=2, iterations=1)
