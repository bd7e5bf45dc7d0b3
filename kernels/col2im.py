"""col2im: the sums over kernel taps that remain of a 1-channel convolution once its channel products are done,
for the three layers where one side has a single channel:

    conv1's input gradient (the projection's one channel)   dx[k, b, i] = sum_t e[k, t, b, o(i, t)],  e = w^T d
    the projections' input gradient (K filters, 1 channel)  dx[b, i]    = sum_k sum_t f[k, t] g[k, b, o(i, t)]
    G_F's last layer (a transposed convolution to 1 channel) y[b, o]    = tanh(bias + sum_t e[t, b, i(o, t)]),  e = x w

where o(i, t) = (i + p - t) / s is the output a tap t reaches from input i in a convolution of stride s and padding
p (taps that give a fractional or out-of-range o reach nothing). The channel products (e) are GEMMs on the tensor
cores (kernels/conv.py's forward, run as a GEMM); what is left here reads e (or g) once per tap that reaches.
Positions of one stride class (i = c + s u per dimension) are reached by the taps t = r + s j, with o = u + e - j
(kernels/conv.py's dgrad has the same structure): so a program takes rows of one class, loops over the class's
taps j, and each tap shifts every row by the same amount: per tap a scalar offset and a per-row bounds mask.
Rows are (b, u), u fastest, so a tile's loads are contiguous runs of o.

Source layout: src[g, ks, t, b, o] with strides (stride_g, stride_ks, stride_t, stride_b, stride_o) in elements,
summed over ks (KS of them: the projections) and t; WEIGHTED multiplies each term by f[ks, t]. Destination:
dst[g, b, i] contiguous; TANH adds bias[0] and applies tanh. Everything is fp32 (reads fp32 or bf16).
Launch wrappers only: no autograd.
"""
from __future__ import annotations

import triton
import triton.language as tl

from vidgan_fast.kernels.common import cast_for_store


@triton.jit
def _unravel(t, A: tl.constexpr, B: tl.constexpr, C: tl.constexpr):
    return t // (B * C), (t // C) % B, t % C


@triton.jit
def tanh(x):
    """tanh to fp32 relative accuracy everywhere: (1 - e) / (1 + e), e = exp(-2|x|), loses relative precision
    as |x| -> 0 (1 - e cancels), so small |x| takes the odd Taylor series (error below 1e-9 relative there)."""
    ax = tl.abs(x)
    t = tl.exp(-2.0 * ax)
    large = (1.0 - t) / (1.0 + t)
    x2 = ax * ax
    small = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    return tl.where(x >= 0, 1.0, -1.0) * tl.where(ax < 0.125, small, large)


@triton.jit
def _col2im_kernel(src_ptr, f_ptr, bias_ptr, dst_ptr, NB, KS,
                   stride_g, stride_ks, stride_t, stride_b, stride_o,
                   D: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                   OD: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr,
                   KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                   SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                   PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                   WEIGHTED: tl.constexpr, TANH: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    g = tl.program_id(1).to(tl.int64)
    CLASSES: tl.constexpr = SD * SH * SW
    cls = tl.program_id(0) % CLASSES
    c_d, c_h, c_w = _unravel(cls, SD, SH, SW)
    r_d, r_h, r_w = (c_d + PD) % SD, (c_h + PH) % SH, (c_w + PW) % SW        # the class's first tap per dimension
    e_d, e_h, e_w = (c_d + PD - r_d) // SD, (c_h + PH - r_h) // SH, (c_w + PW - r_w) // SW
    UD: tl.constexpr = (D + SD - 1) // SD
    UH: tl.constexpr = (H + SH - 1) // SH
    UW: tl.constexpr = (W + SW - 1) // SW
    rows = (tl.program_id(0) // CLASSES) * BLOCK_P + tl.arange(0, BLOCK_P)   # (b, u_d, u_h, u_w), u_w fastest
    u_d, u_h, u_w = _unravel(rows % (UD * UH * UW), UD, UH, UW)
    b = rows // (UD * UH * UW)
    i_d, i_h, i_w = c_d + SD * u_d, c_h + SH * u_h, c_w + SW * u_w
    ok = (b < NB) & (i_d < D) & (i_h < H) & (i_w < W)
    base = src_ptr + g * stride_g + b.to(tl.int64) * stride_b \
        + (((u_d + e_d) * OH + u_h + e_h) * OW + u_w + e_w) * stride_o
    JD, JH, JW = (KD - 1 - r_d) // SD + 1, (KH - 1 - r_h) // SH + 1, (KW - 1 - r_w) // SW + 1   # the class's taps
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for j in range(0, JD * JH * JW):
        j_d, j_h, j_w = j // (JH * JW), (j // JW) % JH, j % JW
        o_d, o_h, o_w = u_d + e_d - j_d, u_h + e_h - j_h, u_w + e_w - j_w
        hit = ok & (o_d >= 0) & (o_d < OD) & (o_h >= 0) & (o_h < OH) & (o_w >= 0) & (o_w < OW)
        tap = ((r_d + SD * j_d) * KH + r_h + SH * j_h) * KW + r_w + SW * j_w
        at = base + tap * stride_t - ((j_d * OH + j_h) * OW + j_w) * stride_o
        if WEIGHTED:
            for k0 in range(0, KS, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                v = tl.load(at[:, None] + ks[None, :].to(tl.int64) * stride_ks, mask=hit[:, None] & (ks < KS)[None, :],
                            other=0.0).to(tl.float32)
                f = tl.load(f_ptr + ks * (KD * KH * KW) + tap, mask=ks < KS, other=0.0)
                acc += tl.sum(v * f[None, :], axis=1)
        else:
            acc += tl.load(at, mask=hit, other=0.0).to(tl.float32)
    if TANH:
        acc = tanh(acc + tl.load(bias_ptr))
    dst = dst_ptr + g * NB * (D * H * W) + b.to(tl.int64) * (D * H * W) + (i_d * H + i_h) * W + i_w
    tl.store(dst, cast_for_store(acc, dst_ptr.dtype.element_ty), mask=ok)


def col2im(src, strides, dst, in_size, out_size, kernel, stride, padding, filters=None, bias=None,
           tanh_out: bool = False) -> None:
    """dst [G, NB, *in_size] (contiguous, any float dtype) = the tap sums of src (module docstring); `strides`:
    (stride_g, stride_ks, stride_t, stride_b, stride_o) of src in elements (o: the flat output position); filters
    [KS, taps] (WEIGHTED, summed over KS) or None (KS = 1); bias [1] with tanh_out."""
    G, NB = dst.shape[0], dst.shape[1]
    KS = 1 if filters is None else filters.shape[0]
    (D, H, W), (OD, OH, OW), (KD, KH, KW), (SD, SH, SW), (PD, PH, PW) = in_size, out_size, kernel, stride, padding
    rows = NB * -(-D // SD) * -(-H // SH) * -(-W // SW)
    block_p = 512       # 4 positions per thread (4 warps): at 128 the per-tap scalar work made it issue-bound (2x)
    block_k = 16 if KS > 1 else 1
    _col2im_kernel[(SD * SH * SW * triton.cdiv(rows, block_p), G)](
        src, src if filters is None else filters, src if bias is None else bias, dst, NB, KS, *strides,
        D=D, H=H, W=W, OD=OD, OH=OH, OW=OW, KD=KD, KH=KH, KW=KW, SD=SD, SH=SH, SW=SW, PD=PD, PH=PH, PW=PW,
        WEIGHTED=filters is not None, TANH=tanh_out, BLOCK_P=block_p, BLOCK_K=block_k, num_warps=4)
