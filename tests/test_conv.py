"""The banks' convolution kernels (kernels/conv.py), each pass against fp64 PyTorch: forward (+LeakyReLU), the
input gradient with and without the slope of the layer below (ACT_IN), the weight gradient with and without its
split reduction, and the 1-channel input gradient (GEMM + col2im), 2-D and 3-D, both strides, at widths that span
several tiles (80, 130 channels: partial channel blocks, masks) and at the GPU tiles (Hopper's and Ampere's,
under the interpreter) as well as the interpreter's own.

Bounds: vidgan_fast.tolerance's fp32 bound for the longest sum of each pass. bf16 means bf16 operands with fp32
accumulation: its reference is fp64 on the bf16-rounded operands, within the same fp32 bound, and it must differ
from the fp32 result (a switch that did nothing fails). Every output is written inside a sentinel-filled buffer
(tests/guard.py): a kernel that writes outside its output fails.
What these caught when the kernels were broken on purpose (2026-12-07): the dgrad's tap box off by one at the
low end (lo = ... - O instead of - (O - 1)): dx wrong at the borders of 3-D cases; the forward's channel mask
dropped (EVEN_K forced): NaN/garbage at 130 channels; the wgrad's split slab index (pid // SPLITS swapped with
pid % SPLITS): dw wrong whenever the reduction is split; the forward's row shift for kd (the depth term) removed:
only 3-D cases fail.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from guard import guarded
from vidgan_fast.kernels import conv as C
from vidgan_fast.kernels.common import forced_target
from vidgan_fast.tolerance import relative_error, tolerance

pytestmark = pytest.mark.usefixtures("one_thread")

# (K, B, CIN, COUT, input size (D, H, W), kernel, stride, padding): the banks' layers at small widths, and
# multi-tile widths.
CASES = {
    "D_F conv2": (2, 3, 16, 32, (1, 8, 8), (1, 4, 4), (1, 2, 2), (0, 1, 1)),
    "D_F conv3 wide": (1, 2, 80, 130, (1, 4, 4), (1, 4, 4), (1, 2, 2), (0, 1, 1)),
    "D_V conv2": (2, 2, 20, 40, (5, 4, 5), (4, 4, 4), (2, 1, 1), (1, 1, 1)),
    "D_V conv3 wide": (1, 2, 33, 130, (4, 3, 3), (4, 4, 4), (1, 1, 1), (0, 1, 1)),
    "D_F conv3 many inputs": (1, 2, 400, 24, (1, 4, 4), (1, 4, 4), (1, 2, 2), (0, 1, 1)),   # 2 input-channel tiles of 256
}
ONE_CHANNEL = {     # conv1: the projection's one channel in (the forward packs taps; the input gradient is col2im)
    "D_F conv1": (2, 3, 1, 16, (1, 15, 15), (1, 4, 4), (1, 2, 2), (0, 2, 2)),
    "D_V conv1": (2, 2, 1, 8, (8, 9, 9), (4, 4, 4), (2, 2, 2), (1, 1, 1)),
}
FAMILIES = ("interpreter", "hopper", "ampere")


def inputs(case, seed):
    K, B, CIN, COUT, size, kernel, stride, padding = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(K, B, *size, CIN, generator=gen)
    w = torch.randn(K, COUT, *kernel, CIN, generator=gen) / math.sqrt(CIN * math.prod(kernel))
    b = torch.randn(K, COUT, generator=gen) * 0.1
    d = torch.randn(K, B, *C.output_size(size, kernel, stride, padding), COUT, generator=gen)
    below = torch.randn(x.shape, generator=gen)            # the output of the layer below (its sign: the slope)
    return x, w, b, d, below


def channels_first(t):
    return t.movedim(-1, 2)          # [K, B, ..., C] -> [K, B, C, ...]


def reference(x, w, b, d, below, stride, padding, act_in):
    """fp64 y (LeakyReLU), dx (times the slope of `below` if act_in) and dw, per k, by autograd."""
    ys, dxs, dws = [], [], []
    for k in range(x.shape[0]):
        xk = channels_first(x[k:k + 1])[0].double().requires_grad_()
        wk = w[k].movedim(-1, 1).double().requires_grad_()
        pre = F.conv3d(xk, wk, b[k].double(), stride, padding)
        pre.backward(channels_first(d[k:k + 1])[0].double())
        slope = torch.where(channels_first(below[k:k + 1])[0] > 0, 1.0, 0.2).double() if act_in else 1.0
        ys.append(F.leaky_relu(pre.detach(), 0.2).movedim(1, -1))
        dxs.append((xk.grad * slope).movedim(1, -1))
        dws.append(wk.grad.movedim(1, -1))
    return torch.stack(ys), torch.stack(dxs), torch.stack(dws)


def run(case, x, w, b, d, below, act_in, precision="fp32", sms=132):
    K, B, CIN, COUT, size, kernel, stride, padding = case
    with guarded() as check:
        y = C.conv_forward(x, w, b, kernel, stride, padding, leaky=True, precision=precision)
        dx = C.conv_input_grad(d, w, below if act_in else x, kernel, stride, padding, act_in, precision)
        dw = C.conv_wgrad(d, x, kernel, stride, padding, COUT, precision, sms=sms)
    assert check() >= 3
    return y, dx, dw


def bounds(case):
    K, B, CIN, COUT, size, kernel, stride, padding = case
    return (tolerance("fp32", CIN * math.prod(kernel)), tolerance("fp32", COUT * math.prod(kernel)),
            tolerance("fp32", B * math.prod(C.output_size(size, kernel, stride, padding))))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", [*CASES, *ONE_CHANNEL])
def test_conv_passes_match_fp64(name, family):
    case = {**CASES, **ONE_CHANNEL}[name]
    act_in = name in CASES                      # conv1's input is the projection: no slope below it
    x, w, b, d, below = inputs(case, seed=len(name))
    with forced_target(tile_family=family):
        got = run(case, x, w, b, d, below, act_in)
    ref = reference(x, w, b, d, below, case[6], case[7], act_in)
    for what, g, r, tol in zip(("y", "dx", "dw"), got, ref, bounds(case)):
        assert g.shape == r.shape, (what, g.shape, r.shape)
        err = relative_error(g, r)
        assert err <= tol, f"{name} {family}: {what} relative error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("sms", [1, 132])
def test_split_weight_gradient_equals_unsplit(sms):
    """The wgrad's reduction split over chunks (few weight tiles for many SMs) sums to the unsplit result (to fp32
    rounding: the chunks are summed in a fixed order, so the same launch twice is bitwise equal)."""
    case = CASES["D_V conv2"]
    x, w, b, d, below = inputs(case, seed=3)
    with forced_target(tile_family="hopper"):
        split = C.conv_wgrad(d, x, case[5], case[6], case[7], case[3], sms=10_000)
        again = C.conv_wgrad(d, x, case[5], case[6], case[7], case[3], sms=10_000)
        whole = C.conv_wgrad(d, x, case[5], case[6], case[7], case[3], sms=sms)
    assert torch.equal(split, again)
    assert relative_error(split, whole.double()) <= bounds(case)[2]


def test_split_count_evens_the_rounds():
    """The wgrad's split gives the busiest SM the least of the reduction: phase 2's conv1 (32 weight tiles on 132
    SMs, up to 9 splits) takes 4 (128 programs, one round) where 9 would give some SMs 3 programs of 1/9."""
    assert C._splits(32, 132, 9) == 4
    assert C._splits(96, 132, 3) == 1            # 2 or 3 splits: the busiest SM still does the whole reduction
    assert C._splits(4096, 132, 1) == 1
    assert C._splits(1, 132, 0) == 1


@pytest.mark.parametrize("name", ["D_F conv2", "D_V conv3 wide"])
def test_bf16_is_bf16_operands_with_fp32_accumulation(name):
    case = CASES[name]
    x, w, b, d, below = inputs(case, seed=5)
    x16, w16, d16 = (t.to(torch.bfloat16) for t in (x, w, d))
    with forced_target(tile_family="hopper"):
        got = run(case, x16, w16, b, d16, below, act_in=True, precision="bf16")
        fp32 = run(case, x, w, b, d, below, act_in=True, precision="fp32")
    ref = reference(x16.float(), w16.float(), b, d16.float(), below, case[6], case[7], True)
    for what, g, f32, r, tol in zip(("y", "dx", "dw"), got, fp32, ref, bounds(case)):
        stored = 2 * 2 ** -8 if g.dtype == torch.bfloat16 else 0.0       # y and dx are stored in bf16 here
        assert relative_error(g, r) <= tol + stored, f"{name}: {what}"
        assert relative_error(f32, r) > 1e-4, f"{name}: {what} at bf16 equals fp32 (the switch did nothing?)"


def test_shapes_and_dtypes_are_checked():
    case = CASES["D_F conv2"]
    x, w, b, d, below = inputs(case, seed=0)
    with pytest.raises(ValueError, match="w has shape"):
        C.conv_forward(x, w[:, :, :, :, :, :3], b, case[5], case[6], case[7], True)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        C.conv_forward(x.double(), w, b, case[5], case[6], case[7], True)
    with pytest.raises(ValueError, match="contiguous"):
        C.conv_forward(x.transpose(3, 4), w, b, case[5], case[6], case[7], True)
    with pytest.raises(ValueError, match="too small"):
        C.conv_forward(x[:, :, :, :1, :1].contiguous(), w, b, case[5], case[6], case[7], True)


@pytest.mark.parametrize("family", ["interpreter", "hopper"])
def test_channels_first_output_without_bias_is_the_same_product(family):
    """transpose_out (the GEMM of conv1's input gradient and of G_F's last layer, read by col2im per channel) writes
    the same numbers channels first; bias None adds nothing."""
    case = CASES["D_F conv3 wide"]
    x, w, b, d, below = inputs(case, seed=7)
    with forced_target(tile_family=family), guarded() as check:
        got = C.conv_forward(x, w, None, case[5], case[6], case[7], leaky=False, transpose_out=True)
        plain = C.conv_forward(x, w, torch.zeros_like(b), case[5], case[6], case[7], leaky=False)
    assert check() == 2
    assert got.shape == (case[0], case[3], case[1], *plain.shape[2:5])
    assert torch.equal(got.movedim(1, -1), plain)
