"""The logit-layer kernels (kernels/logit.py: conv4 of both discriminators as batched GEMVs over channels-last rows)
against fp64 PyTorch.

Shapes: both discriminators' conv4 geometry (2-D 2x2 input with padding 1, 3-D 4x2x2 with padding (0, 1, 1)) at
odd K, B and channel counts, rows long enough to span several 512-element blocks with a partial last one (at the
GPU tiles), a kernel that covers its input exactly (padding 0: dw written by the kernel alone). Bounds:
vidgan_fast.tolerance's fp32 bound for the length of each sum (forward: the row; wgrad: the batch; dgrad: one
product). Outputs are written inside sentinel-filled buffers (tests/guard.py).
What it catches (each tried by breaking kernels/logit.py on purpose): the forward without its bias; the x load
without its column mask (the last partial block reads the next row: NaN); the wgrad's batch mask widened by one
row; the tap offset without its padding along W; the dgrad without the slope of the layer below (ACT_IN ignored).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from guard import guarded
from vidgan_fast.kernels.common import forced_target
from vidgan_fast.kernels.logit import is_logit_layer, logit_dgrad, logit_forward, logit_wgrad
from vidgan_fast.tolerance import relative_error, tolerance

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [   # x shape [K, B, D, H, W, C] (channels last), kernel (3-D), padding (3-D)
    ((3, 5, 1, 2, 2, 301), (1, 4, 4), (0, 1, 1)),          # D_F conv4: a row of 1204, 3 blocks of 512 at GPU tiles
    ((2, 3, 4, 2, 2, 71), (4, 4, 4), (0, 1, 1)),           # D_V conv4: 1136
    ((1, 9, 1, 4, 4, 33), (1, 4, 4), (0, 0, 0)),           # exact cover: every tap meets an input element
]


def inputs(x_shape, kernel, seed):
    gen = torch.Generator().manual_seed(seed)
    K, B, C = x_shape[0], x_shape[1], x_shape[-1]
    x = torch.randn(x_shape, generator=gen)
    w = torch.randn((K, 1, *kernel, C), generator=gen) / math.sqrt(C * math.prod(kernel))
    b = torch.randn((K, 1), generator=gen)
    g = torch.randn((K, B), generator=gen)
    return x, w, b, g


def reference(x, w, b, g, padding, act_in):
    """fp64 y, dx (times LeakyReLU'(x) if act_in), dw, db per discriminator, by autograd."""
    xs = x.double().movedim(-1, 2).requires_grad_()                   # [K, B, C, D, H, W]
    ws = w.double().movedim(-1, 2).requires_grad_()                   # [K, 1, C, kd, kh, kw]
    bs = b.double().requires_grad_()
    y = torch.stack([F.conv3d(xs[k], ws[k], bs[k], 1, padding).flatten() for k in range(x.shape[0])])
    y.backward(g.double())
    slope = torch.where(x > 0, 1.0, 0.2).double() if act_in else 1.0
    return y.detach(), xs.grad.movedim(2, -1) * slope, ws.grad.movedim(2, -1), bs.grad


def check(x_shape, kernel, padding, act_in, family, seed=0):
    x, w, b, g = inputs(x_shape, kernel, seed)
    with forced_target(tile_family=family), guarded() as guard:
        got = (logit_forward(x, w, b, kernel, padding), logit_dgrad(g, w, x, kernel, padding, act_in),
               *logit_wgrad(g, x, kernel, padding))
    guard()
    ref = reference(x, w, b, g, padding, act_in)
    row = math.prod(x_shape[2:])
    for what, r, e, n in zip(("y", "dx", "dw", "db"), got, ref, (row, 1, x_shape[1], x_shape[1])):
        assert r.shape == e.shape, (what, r.shape, e.shape)
        err = relative_error(r, e)
        assert err <= tolerance("fp32", n), f"{what}: relative error {err:.3g} ({family})"


@pytest.mark.parametrize("act_in", [False, True])
@pytest.mark.parametrize("family", ["hopper", "interpreter"])
@pytest.mark.parametrize("x_shape,kernel,padding", CASES)
def test_logit_layer_matches_fp64(x_shape, kernel, padding, family, act_in):
    check(x_shape, kernel, padding, act_in, family, seed=sum(x_shape) + act_in)


def test_logit_layer_is_recognised_and_checked():
    assert is_logit_layer(1, (1, 1, 1)) and not is_logit_layer(2, (1, 1, 1)) and not is_logit_layer(1, (1, 2))
    x, w, b, _ = inputs(*CASES[0][:2], 0)
    with pytest.raises(ValueError, match="does not cover"):
        logit_forward(x, w[:, :, :, :2], b, (1, 2, 4), (0, 1, 1))
    with pytest.raises(ValueError, match="precision"):
        logit_forward(x, w, b, CASES[0][1], CASES[0][2], "fp16")


def test_bf16_is_bf16_operands_with_fp32_sums():
    """precision 'bf16' rounds both operands of every product to bf16 (as the tensor-core layers do) and sums in
    fp32: against fp64 on the rounded operands the fp32 bound holds, and the result differs from fp32's."""
    x_shape, kernel, padding = CASES[0]
    x, w, b, g = inputs(x_shape, kernel, 3)
    with forced_target(tile_family="hopper"):
        y16 = logit_forward(x, w, b, kernel, padding, "bf16")
        y32 = logit_forward(x, w, b, kernel, padding, "fp32")
    ref = reference(x.bfloat16().float(), w.bfloat16().float(), b, g, padding, False)[0]
    assert relative_error(y16, ref) <= tolerance("fp32", math.prod(x_shape[2:]))
    assert relative_error(y32, ref) > 1e-5
