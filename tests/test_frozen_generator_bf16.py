"""bf16 storage in the frozen G_F (precision "bf16"): packed weights in bf16 (cast once when packing), ReLU
activations and the backward's input gradients in bf16; codes, frames, code gradient and biases fp32.

Two levels, with bounds derived in vidgan_fast.tolerance:
- each kernel against an fp64 run on exactly the operands it multiplies (bf16 inputs and weights): fp32
  accumulation, plus one rounding to nearest for an output stored in bf16 (|bf16(v) - v| <= u |v| per element);
- the module against fp64 with tolerance("bf16", ..., layers=5, stored=4): the dense layer and the 4 transposed
  convolutions, 4 u each (the last one's GEMV also multiplies bf16 operands), plus 2 u for each of the 4 bf16
  activations (forward) or the 4 bf16 input gradients (backward). A ReLU whose input lies within the forward
  error of 0 may be on in the module and off in fp64 (a discontinuity no gradient bound survives), so the fp64
  backward takes the module's ReLU masks (its saved activations > 0) and its tanh' = 1 - y^2 from its frames.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vidgan_fast.kernels.frame_generator as K
from test_frozen_generator import TINY, fp64_reference, random_frame_generator, rel_err, run
from vidgan_fast.fast.frozen_generator import FrozenFrameGenerator
from vidgan_fast.kernels.common import forced_target
from vidgan_fast.models import GF_PADDINGS
from vidgan_fast.tolerance import tolerance

pytestmark = pytest.mark.usefixtures("one_thread")

BF16 = torch.bfloat16
U = 2.0 ** -8                # bf16's unit roundoff


def bf16(t):
    """t rounded to the nearest bf16 value (ties to even), in fp64."""
    return t.to(BF16).double()


def assert_stored_close(what, got, ref, tol32):
    """got is a bf16 store of an fp32 result v with |v - ref| <= tol32 * max|ref|: |got - ref| <= u |v| + that."""
    assert got.dtype == BF16, f"{what}: stored as {got.dtype}, expected bfloat16"
    ref = ref.double()
    slack = tol32 * ref.abs().max().item()
    bound = U * (ref.abs() + slack) + slack
    excess = (got.double() - ref).abs() - bound
    assert excess.max().item() <= 0, (f"{what}: {int((excess > 0).sum())} of {ref.numel()} elements beyond "
                                      f"u |ref| + {tol32:.3g} max|ref| (worst by {excess.max().item():.3g})")


def nhwc_to_nchw(t):
    return t.permute(0, 3, 1, 2)


def nchw_to_nhwc(t):
    return t.permute(0, 2, 3, 1)


def fp64_backward_with_module_state(frozen, codes, grad_frames, acts, y):
    """The code gradient in fp64 of the module's folded weights, through the module's ReLU masks and tanh'."""
    c = codes.double().requires_grad_()
    h = F.linear(c, frozen.fc_weight.double(), frozen.fc_bias.double()).view(c.shape[0], frozen.widths[0], 2, 2)
    h = h * (nhwc_to_nchw(acts[0]) > 0)
    for i, pad in enumerate(GF_PADDINGS[:3], start=1):
        h = F.conv_transpose2d(h, getattr(frozen, f"up{i}_weight").double(), getattr(frozen, f"up{i}_bias").double(),
                               stride=2, padding=pad) * (nhwc_to_nchw(acts[i]) > 0)
    pre = F.conv_transpose2d(h, frozen.up4_weight.double(), frozen.up4_bias.double(), stride=2,
                             padding=GF_PADDINGS[3])
    tanh_grad = 1 - y.double().view(pre.shape) ** 2
    (grad,) = torch.autograd.grad((pre * tanh_grad * grad_frames.double()).sum(), c)
    return grad


@pytest.mark.parametrize("widths,M,family", [(TINY, 1, "interpreter"), ((24, 20, 12, 8), 5, "interpreter"),
                                             ((64, 80, 48, 16), 3, "hopper")])
def test_bf16_frozen_generator_matches_fp64(widths, M, family, monkeypatch):
    g = random_frame_generator(widths, seed=M)
    codes, grad_frames = torch.randn(M, 100), torch.randn(M, 1, 30, 30)
    y64, _ = fp64_reference(g, codes, grad_frames)
    frozen = FrozenFrameGenerator.from_reference(g, precision="bf16")
    monkeypatch.setattr("vidgan_fast.kernels.common._FORCED", {"family": family})
    saved = []
    forward_kernels = FrozenFrameGenerator.forward_kernels

    def recording(self, c):
        acts, y = forward_kernels(self, c)
        saved.append((acts, y))
        return acts, y
    monkeypatch.setattr(FrozenFrameGenerator, "forward_kernels", recording)
    frames, code_grad = run(frozen, codes, grad_frames)
    (acts, y), = saved
    assert [a.dtype for a in acts] == [BF16] * 4 and frames.dtype == code_grad.dtype == torch.float32
    n = 16 * max(widths)                                     # the longest sums: the input gradient's 16 taps x Cout
    tol = tolerance("bf16", n, layers=5, stored=4)
    assert rel_err(frames, y64) <= tol, f"frames: {rel_err(frames, y64):.3g} > {tol:.3g}"
    dz64 = fp64_backward_with_module_state(frozen, codes, grad_frames, acts, y)
    assert rel_err(code_grad, dz64) <= tol, f"code gradient: {rel_err(code_grad, dz64):.3g} > {tol:.3g}"


def test_bf16_packs_weights_once_and_keeps_the_fp32_state_dict():
    g = random_frame_generator(seed=4)
    frozen = FrozenFrameGenerator.from_reference(g, precision="bf16")
    fp32 = FrozenFrameGenerator.from_reference(g, precision="fp32")
    packed = [n for n, _ in frozen.named_buffers() if n.endswith(("_forward", "_backward")) or n == "fc_weight_nhwc"]
    assert len(packed) == 9 and all(getattr(frozen, n).dtype == BF16 for n in packed)
    assert all(torch.equal(getattr(frozen, n), getattr(fp32, n).to(BF16)) for n in packed)   # rounded to nearest
    state = frozen.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    assert all(torch.equal(state[k], v) for k, v in fp32.state_dict().items())
    other = FrozenFrameGenerator.from_reference(random_frame_generator(seed=5), precision="bf16")
    other.load_state_dict(state)                               # re-packs in bf16
    assert all(torch.equal(getattr(other, n), getattr(frozen, n)) for n in packed)
    codes = torch.randn(2, 100)
    assert torch.equal(other(codes), frozen(codes))


# ---- each kernel on bf16 operands, against fp64 on the same operands ----

@forced_target(tile_family="hopper")
def test_bf16_dense_layer():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 100, generator=gen).to(BF16)
    w = (torch.randn(100, 144, generator=gen) * 0.1).to(BF16)
    b = torch.randn(144, generator=gen) * 0.1
    out = K.dense(x, w, b, relu=True, precision="bf16", out_dtype=BF16)
    assert_stored_close("dense", out, (x.double() @ w.double() + b.double()).relu(), tolerance("fp32", 100))
    g = torch.randn(5, 144, generator=gen).to(BF16)
    dz = K.dense(g, w.t(), precision="bf16")                      # fp32 out: the code gradient
    assert dz.dtype == torch.float32 and rel_err(dz, g.double() @ w.double().t()) <= tolerance("fp32", 144)


@pytest.mark.parametrize("cin,cout,size,pad,M", [(80, 72, 4, 1, 2), (20, 12, 8, 1, 3), (12, 1, 16, 2, 2)])
@forced_target(tile_family="hopper")
def test_bf16_transposed_conv_layer(cin, cout, size, pad, M):
    """Forward (ReLU, or tanh for Cout = 1) and input gradient with the fused masks, bf16 in and (but for the
    frames) bf16 out; several GPU tiles at 80 / 72 channels, odd ones at 20 / 12."""
    gen = torch.Generator().manual_seed(cin + cout)
    w = (torch.randn(cin, cout, 4, 4, generator=gen) * (4 * cin) ** -0.5).to(BF16)
    b = torch.randn(cout, generator=gen) * 0.1
    x = torch.randn(M, size, size, cin, generator=gen).relu().to(BF16)          # NHWC, a stored ReLU output
    pre = F.conv_transpose2d(nhwc_to_nchw(x).double(), w.double(), b.double(), stride=2, padding=pad)
    tol32 = tolerance("fp32", 16 * max(cin, cout))
    w_fwd = K.pack_forward_weight(w, pad) if cout > 1 else K.pack_tap_weight(w)
    w_bwd = K.pack_backward_weight(w)
    g = torch.randn(M, *pre.shape[2:], cout, generator=gen)                      # NHWC output gradient
    if cout == 1:
        y = K.conv_transpose_tanh(x, w_fwd, b, pad, "bf16")
        assert y.dtype == torch.float32 and rel_err(y, torch.tanh(pre)[:, 0]) <= tol32
        dpre = (g[..., 0] * (1 - y * y)).unsqueeze(-1)                           # fp32, then rounded by the product
        dx = K.conv_transpose_input_grad(g, w_bwd, pad, relu_input=x, tanh_out=y.unsqueeze(-1).contiguous(),
                                         precision="bf16", out_dtype=BF16)
    else:
        y = K.conv_transpose_relu(x, w_fwd, b, pad, precision="bf16", out_dtype=BF16)
        assert_stored_close("conv_transpose_relu", y, nchw_to_nhwc(pre.relu()), tol32)
        g = g.to(BF16)
        dpre = g.float()
        dx = K.conv_transpose_input_grad(g, w_bwd, pad, relu_input=x, precision="bf16", out_dtype=BF16)
    dx64 = torch.ops.aten.convolution_backward(nhwc_to_nchw(bf16(dpre)), nhwc_to_nchw(x).double(), w.double(), None,
                                               [2, 2], [pad, pad], [1, 1], True, [0, 0], 1, [True, False, False])[0]
    assert_stored_close("input gradient", dx, nchw_to_nhwc(dx64 * (nhwc_to_nchw(x) > 0)), tol32)


def test_bf16_kernels_reject_other_dtypes():
    x = torch.zeros(2, 4, 4, 8)
    w = K.pack_forward_weight(torch.zeros(8, 4, 4, 4), 1)
    with pytest.raises(ValueError, match="conv_transpose: bias must be float32, got torch.bfloat16"):
        K.conv_transpose_relu(x, w, torch.zeros(4, dtype=BF16), 1)
    with pytest.raises(ValueError, match="conv_transpose: weight must be float32 or bfloat16, got torch.float16"):
        K.conv_transpose_relu(x, w.half(), torch.zeros(4), 1)
    with pytest.raises(ValueError, match="dense input: expected a 2-D float32 or bfloat16 tensor"):
        K.dense(torch.zeros(2, 3, dtype=torch.float16), torch.zeros(3, 4))
