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


def banded(t: torch.Tensor):
    """t copied into the middle of a sentinel-filled buffer (tests/guard.py's bands): (the copy, a check that the
    bands are intact)."""
    from guard import BAND, SENTINEL
    buffer = torch.full((t.numel() + 2 * BAND,), SENTINEL, dtype=t.dtype)
    inner = buffer[BAND:BAND + t.numel()].view(t.shape)
    inner.copy_(t)

    def intact():
        assert torch.all(torch.cat([buffer[:BAND], buffer[-BAND:]]) == SENTINEL), "a write outside the tensor"
    return inner, intact


def rmsprop_reference(w, dw64, v, lr, alpha, eps):
    """The reference the training uses for a weight step: torch.optim.RMSprop (fp64) on the fp64 gradient, from
    the square average v. Returns (new w, new v)."""
    p = w.double().clone()
    opt = torch.optim.RMSprop([p], lr=lr, alpha=alpha, eps=eps)
    opt.state[p] = {"step": torch.zeros((), dtype=torch.float64), "square_avg": v.double().clone()}
    p.grad = dw64
    opt.step()
    return p, opt.state[p]["square_avg"]


@pytest.mark.parametrize("name, split, family, precision, variant",
                         [(n, False, "hopper", "tf32", i % 3) for i, n in enumerate([*CASES, *ONE_CHANNEL])]
                         + [(n, True, "hopper", "fp32", i) for i, n in enumerate(("D_F conv2", "D_F conv1",
                                                                                  "D_V conv1"))]
                         + [("D_F conv3 wide", False, "ampere", "tf32", 1), ("D_V conv1", False, "ampere", "tf32", 2)])
def test_weight_gradient_applied_as_an_rmsprop_step(name, split, family, precision, variant, monkeypatch):
    """conv_wgrad(update=...) steps the weight with dw instead of returning it: in the epilogue (one program owns
    each weight tile's whole reduction: sms=1; at Hopper's 128 x 256 tf32 tile, applied in four column quarters)
    or, where the reduction is split (batch 16 on 10,000 SMs), through kernels/rmsprop.py after the sum. Against
    torch.optim.RMSprop on the fp64 dw (from a mid-run square average, so the step is a smooth function of dw):
    the weight's change and the new square average within 2x dw's bound (the step divides dw by sqrt(v) >= 0.7 and
    rounds a few times in fp32). Bitwise equal to conv_wgrad and then rmsprop_update (the same math on the same
    fp32 dw); the step counter moved by one; nothing written outside the weight, the square average and the bf16
    copy. The lr arrives as a float or as a tensor, the counter on the weight's device or not (the caller counts)."""
    from vidgan_fast.kernels.rmsprop import RMSpropStep, rmsprop_update
    case = {**CASES, **ONE_CHANNEL}[name]
    if split:
        case = (case[0], 16, *case[2:])
    x, w, b, d, below = inputs(case, seed=11 + len(name))
    lr, alpha, eps = 1e-2, 0.99, 1e-8
    v = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    # variant 0: float lr, step counter on the weight's device; 1: tensor lr, bf16 copy; 2: counter kept by the caller
    rate = torch.tensor([lr]) if variant == 1 else lr
    (w1, w_ok), (v1, v_ok) = banded(w), banded(v)
    c1, c_ok = banded(w.to(torch.bfloat16)) if variant == 1 else (None, lambda: None)
    step = None if variant == 2 else torch.zeros(())
    applied = []
    monkeypatch.setattr(RMSpropStep, "apply", lambda self, g, apply=RMSpropStep.apply: (applied.append(g.shape),
                                                                                        apply(self, g)))
    sms = 10_000 if split else 1
    with forced_target(tile_family=family):
        got = C.conv_wgrad(d, x, case[5], case[6], case[7], case[3], precision, sms=sms,
                           update=RMSpropStep(w1, v1, rate, alpha, eps, step=step, copy=c1))
        dw = C.conv_wgrad(d, x, case[5], case[6], case[7], case[3], precision, sms=sms)
    assert got is None and len(applied) == split, "fused in the epilogue unless the reduction is split"
    for intact in (w_ok, v_ok, c_ok):
        intact()
    w2, v2, c2, step2 = w.clone(), v.clone(), None if c1 is None else w.to(torch.bfloat16), torch.zeros(())
    rmsprop_update([w2], [dw], [v2], [step2], rate, alpha, eps, copies=[c2])
    assert torch.equal(w1, w2) and torch.equal(v1, v2) and (c1 is None or torch.equal(c1, c2))
    assert step is None or step.item() == 1.0
    w64, v64 = rmsprop_reference(w, reference(x, w, b, d, below, case[6], case[7], False)[2], v, lr, alpha, eps)
    reduction = case[1] * math.prod(C.output_size(case[4], case[5], case[6], case[7]))
    tol = 2 * tolerance(precision, reduction)
    assert relative_error(w1.double() - w.double(), w64 - w.double()) <= tol, f"{name}: the weight's step"
    assert relative_error(v1, v64) <= tol, f"{name}: the square average"
    if c1 is not None:
        assert torch.equal(c1, w1.to(torch.bfloat16)), "the copy is the new weight rounded to bf16"


def test_weight_update_is_checked():
    from vidgan_fast.kernels.rmsprop import RMSpropStep
    case = CASES["D_F conv2"]
    x, w, b, d, below = inputs(case, seed=0)
    with pytest.raises(ValueError, match="the updated weight has shape"):
        C.conv_wgrad(d, x, case[5], case[6], case[7], case[3], update=RMSpropStep(w[:1], w[:1], 0.1, 0.99, 1e-8))
    with pytest.raises(ValueError, match="one dense layout"):
        C.conv_wgrad(d, x, case[5], case[6], case[7], case[3],
                     update=RMSpropStep(w, w.transpose(0, 1).contiguous().transpose(0, 1), 0.1, 0.99, 1e-8))
