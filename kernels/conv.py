"""The discriminator banks' convolutions: K independent convolutions per launch, as implicit GEMMs over channels-last
activations, one specialization per layer geometry.

Layouts (all contiguous; 2-D layers are the 3-D case with D = KD = 1):
    x  [K, B, D, H, W, CIN]         activations, channels last
    w  [K, COUT, KD, KH, KW, CIN]   weights, (tap, input channel) contiguous per output channel
    y  [K, B, OD, OH, OW, COUT]
A reduction runs over (tap, channel) with the taps outside and the channels inside, so every tile load reads
contiguous channels (16-byte vectors) and, when a channel block lies inside one tap (CIN, or COUT for the dgrad, a
multiple of BLOCK_K), the tap shifts every row of the tile by the same amount: per reduction step the kernel adds a
scalar offset to fixed row addresses and recomputes a per-row bounds mask, nothing per element. The layer geometry
(spatial sizes, kernel, stride, padding) is constexpr, so what remains of index arithmetic is shifts and constants.

    forward  y = act(conv(x, w) + b)                 M = B x output positions, N = COUT, reduction taps x CIN
    dgrad    d_prev = dx * act'(x)  (dx = conv^T(d, w))  M = B x input positions of one stride class, N = CIN,
             reduction = (the class's taps inside the tile's tap box) x COUT; `d` is already dL/d(pre-activation)
    wgrad    dw = d^T patches(x)                      M = COUT, N = taps x CIN, reduction B x output positions,
             split into SPLIT chunks (fp32 partials, summed in a fixed order: deterministic) when the weight tiles
             alone would leave SMs idle; or, given an RMSprop step (`update=`, unsplit), dw is not stored: each
             program applies the step to its weight tile in its epilogue (kernels/rmsprop.py's math)
The LeakyReLU derivative is applied once, where an input gradient is written (dgrad's `ACT_IN`: the slope of the
layer below, read from the sign of its output x); the bias gradient is the column sum of `d` (the caller's). In the
dgrad, an input position i of stride class c (i = c + s u per dimension) is reached by the taps kk = r + s j with
o = (i + p - kk) / s = u + e - j, e = (c + p - r) / s: per tap, every row of the tile shifts by the same amount,
as in the forward. Rows are ordered (u, b), batch fastest, so a row tile spans few positions and its tap box (the
taps that reach an output in range from some row of the tile) is small at the borders.

precision: "fp32" (exact fp32 products), "tf32" or "bf16" (tensor cores, fp32 accumulation): kernels/common.py.
Storage: x, w, d may be float32 or bfloat16 (bf16 operands go to tl.dot as they are loaded); y and the input gradient
are written in out_dtype; dw and partials are float32. Launch wrappers only: no autograd (vidgan_fast/fast/bank.py).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from vidgan_fast.kernels.autotune import choose
from vidgan_fast.kernels.col2im import col2im
from vidgan_fast.kernels.common import (cast_for_store, column_halves, dot_precision, mma, target_family,
                                       target_sms)
from vidgan_fast.kernels.rmsprop import RMSpropStep, rmsprop_math
from vidgan_fast.kernels.tiles import PACKED_BLOCK_K, Tile, conv_tiles

NEGATIVE_SLOPE = tl.constexpr(0.2)     # the discriminators' LeakyReLU (models.LEAKY_SLOPE; a test checks they agree)


@triton.jit
def _unravel(t, A: tl.constexpr, B: tl.constexpr, C: tl.constexpr):
    """(a, b, c) of a flat index t over a [A, B, C] grid (row-major)."""
    return t // (B * C), (t // C) % B, t % C


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, B, CIN, COUT,
                     D: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                     OD: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr,
                     KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                     SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                     PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                     HAS_BIAS: tl.constexpr, LEAKY: tl.constexpr, TRANSPOSE_OUT: tl.constexpr,
                     PRECISION: tl.constexpr, PACKED: tl.constexpr, EVEN_K: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    k = tl.program_id(2).to(tl.int64)
    TAPS: tl.constexpr = KD * KH * KW
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)            # output rows (b, od, oh, ow)
    od, oh, ow = _unravel(offs_m % (OD * OH * OW), OD, OH, OW)
    b = offs_m // (OD * OH * OW)
    m_ok = offs_m < B * (OD * OH * OW)
    i_d, i_h, i_w = od * SD - PD, oh * SH - PH, ow * SW - PW                # input corner of each row's patch
    row = (((b * D + i_d) * H + i_h) * W + i_w) * CIN
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)            # output channels
    n_ok = offs_n < COUT
    cols = tl.arange(0, BLOCK_K)
    x_k = x_ptr + k * B * D * H * W * CIN
    R = TAPS * CIN
    w_cols = w_ptr + k * COUT * R + offs_n[None, :] * R                    # [1, BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PACKED:                                      # CIN < 16 (the 1-channel projection): a block spans taps
        for r0 in range(0, R, BLOCK_K):
            r = r0 + cols
            t = r // CIN
            kd, kh, kw = _unravel(t, KD, KH, KW)
            ok = (m_ok[:, None] & (r < R)[None, :]
                  & (i_d[:, None] + kd[None, :] >= 0) & (i_d[:, None] + kd[None, :] < D)
                  & (i_h[:, None] + kh[None, :] >= 0) & (i_h[:, None] + kh[None, :] < H)
                  & (i_w[:, None] + kw[None, :] >= 0) & (i_w[:, None] + kw[None, :] < W))
            a = tl.load(x_k + row[:, None] + (((kd * H + kh) * W + kw) * CIN + r - t * CIN)[None, :], mask=ok,
                        other=0.0)
            wt = tl.load(w_cols + r[:, None], mask=n_ok[None, :] & (r < R)[:, None], other=0.0)
            acc = mma(a, wt, acc, PRECISION)
    else:                                           # taps outside, channel blocks inside: a scalar shift per block
        CB = tl.cdiv(CIN, BLOCK_K)
        for i in range(0, TAPS * CB):
            t = i // CB
            c0 = (i - t * CB) * BLOCK_K
            kd, kh, kw = _unravel(t, KD, KH, KW)
            ok = m_ok & (i_d + kd >= 0) & (i_d + kd < D) & (i_h + kh >= 0) & (i_h + kh < H) \
                & (i_w + kw >= 0) & (i_w + kw < W)
            shift = ((kd * H + kh) * W + kw) * CIN + c0
            if EVEN_K:
                a = tl.load(x_k + (row + shift)[:, None] + cols[None, :], mask=ok[:, None], other=0.0)
                wt = tl.load(w_cols + (t * CIN + c0 + cols)[:, None], mask=n_ok[None, :], other=0.0)
            else:
                c_ok = c0 + cols < CIN
                a = tl.load(x_k + (row + shift)[:, None] + cols[None, :], mask=ok[:, None] & c_ok[None, :],
                            other=0.0)
                wt = tl.load(w_cols + (t * CIN + c0 + cols)[:, None], mask=n_ok[None, :] & c_ok[:, None], other=0.0)
            acc = mma(a, wt, acc, PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + k * COUT + offs_n, mask=n_ok, other=0.0)[None, :]
    if LEAKY:
        acc = tl.where(acc > 0, acc, acc * NEGATIVE_SLOPE)
    M = B * (OD * OH * OW)
    if TRANSPOSE_OUT:                               # y[k, co, row]: rows contiguous (a col2im reads them by tap)
        y = y_ptr + k * M * COUT + offs_n[None, :] * M + offs_m[:, None]
    else:
        y = y_ptr + k * M * COUT + offs_m[:, None] * COUT + offs_n[None, :]
    tl.store(y, cast_for_store(acc, y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _tap_box(u, ok, e, j_last, O: tl.constexpr):
    """(first j, count) of the taps j <= j_last of a stride class that reach an output o = u + e - j in [0, O) from
    at least one valid row of the tile (u: its rows' class coordinate)."""
    u_min = tl.min(tl.where(ok, u, 1 << 20), axis=0)
    u_max = tl.max(tl.where(ok, u, -(1 << 20)), axis=0)
    lo = tl.maximum(u_min + e - (O - 1), 0)
    hi = tl.minimum(u_max + e, j_last)
    return lo, tl.maximum(hi - lo + 1, 0)


@triton.jit
def _conv_dgrad_kernel(d_ptr, w_ptr, x_ptr, dx_ptr, B, CIN, COUT,
                       D: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                       OD: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr,
                       KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                       SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                       PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                       ACT_IN: tl.constexpr, PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    k = tl.program_id(2).to(tl.int64)
    CLASSES: tl.constexpr = SD * SH * SW
    cls = tl.program_id(0) % CLASSES
    c_d, c_h, c_w = _unravel(cls, SD, SH, SW)
    r_d, r_h, r_w = (c_d + PD) % SD, (c_h + PH) % SH, (c_w + PW) % SW        # the class's first tap per dimension
    e_d, e_h, e_w = (c_d + PD - r_d) // SD, (c_h + PH - r_h) // SH, (c_w + PW - r_w) // SW
    UD: tl.constexpr = (D + SD - 1) // SD                                    # class positions per dimension
    UH: tl.constexpr = (H + SH - 1) // SH
    UW: tl.constexpr = (W + SW - 1) // SW
    offs_m = (tl.program_id(0) // CLASSES) * BLOCK_M + tl.arange(0, BLOCK_M)   # rows (u_d, u_h, u_w, b), b fastest
    b = offs_m % B
    u_d, u_h, u_w = _unravel(offs_m // B, UD, UH, UW)
    i_d, i_h, i_w = c_d + SD * u_d, c_h + SH * u_h, c_w + SW * u_w
    m_ok = (offs_m < B * (UD * UH * UW)) & (i_d < D) & (i_h < H) & (i_w < W)
    lo_d, n_d = _tap_box(u_d, m_ok, e_d, (KD - 1 - r_d) // SD, OD)           # the tile's tap box, per dimension
    lo_h, n_h = _tap_box(u_h, m_ok, e_h, (KH - 1 - r_h) // SH, OH)
    lo_w, n_w = _tap_box(u_w, m_ok, e_w, (KW - 1 - r_w) // SW, OW)
    row = (((b * OD + u_d + e_d) * OH + u_h + e_h) * OW + u_w + e_w) * COUT   # d at tap j = 0
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)              # input channels
    n_ok = offs_n < CIN
    cols = tl.arange(0, BLOCK_K)
    TAPS: tl.constexpr = KD * KH * KW
    d_k = d_ptr + k * B * (OD * OH * OW) * COUT
    w_k = w_ptr + k * COUT * TAPS * CIN
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    CB = tl.cdiv(COUT, BLOCK_K)
    for i in range(0, n_d * n_h * n_w * CB):       # (tap in the box, output-channel block), channel blocks inside
        t = i // CB
        co0 = (i - t * CB) * BLOCK_K
        j_d = lo_d + t // (n_h * n_w)
        j_h = lo_h + (t // n_w) % n_h
        j_w = lo_w + t % n_w
        o_d, o_h, o_w = u_d + e_d - j_d, u_h + e_h - j_h, u_w + e_w - j_w
        ok = m_ok & (o_d >= 0) & (o_d < OD) & (o_h >= 0) & (o_h < OH) & (o_w >= 0) & (o_w < OW)
        shift = ((j_d * OH + j_h) * OW + j_w) * COUT
        tap = ((r_d + SD * j_d) * KH + r_h + SH * j_h) * KW + r_w + SW * j_w
        w_rows = w_k + (co0 + cols)[:, None] * (TAPS * CIN) + tap * CIN + offs_n[None, :]
        if EVEN_K:
            a = tl.load(d_k + (row - shift + co0)[:, None] + cols[None, :], mask=ok[:, None], other=0.0)
            wt = tl.load(w_rows, mask=n_ok[None, :], other=0.0)
        else:
            c_ok = co0 + cols < COUT
            a = tl.load(d_k + (row - shift + co0)[:, None] + cols[None, :], mask=ok[:, None] & c_ok[None, :],
                        other=0.0)
            wt = tl.load(w_rows, mask=n_ok[None, :] & c_ok[:, None], other=0.0)
        acc = mma(a, wt, acc, PRECISION)
    pos = ((b * D + i_d) * H + i_h) * W + i_w
    if ACT_IN:      # in two column halves, so the x tile read for LeakyReLU' is never all live beside acc
        acc_lo, acc_hi = column_halves(acc, BLOCK_M, BLOCK_N)
        cols_lo = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _store_dgrad_half(acc_lo, cols_lo, pos, m_ok, x_ptr, dx_ptr, k, B * D * H * W, CIN)
        _store_dgrad_half(acc_hi, cols_lo + BLOCK_N // 2, pos, m_ok, x_ptr, dx_ptr, k, B * D * H * W, CIN)
    else:
        io = k * B * D * H * W * CIN + pos[:, None] * CIN + offs_n[None, :]
        tl.store(dx_ptr + io, cast_for_store(acc, dx_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _store_dgrad_half(acc, cols, pos, m_ok, x_ptr, dx_ptr, k, POSITIONS, CIN):
    """dx[k, pos, cols] = acc times LeakyReLU' of the layer below, read from the sign of its output x."""
    io = k * POSITIONS * CIN + pos[:, None] * CIN + cols[None, :]
    io_ok = m_ok[:, None] & (cols < CIN)[None, :]
    xv = tl.load(x_ptr + io, mask=io_ok, other=0.0)
    acc = tl.where(xv > 0, acc, acc * NEGATIVE_SLOPE)
    tl.store(dx_ptr + io, cast_for_store(acc, dx_ptr.dtype.element_ty), mask=io_ok)


@triton.jit
def _conv_wgrad_kernel(d_ptr, x_ptr, dw_ptr, B, CIN, COUT, Q_SPLIT, SPLITS,
                       w_ptr, v_ptr, c_ptr, step_ptr, lr, lr_ptr, alpha, one_minus_alpha, eps,
                       D: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                       OD: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr,
                       KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                       SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                       PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                       PRECISION: tl.constexpr, PACKED: tl.constexpr, EVEN_N: tl.constexpr,
                       UPDATE: tl.constexpr, LR_FROM_PTR: tl.constexpr, COPY: tl.constexpr, STEP: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # dw[co, (tap, ci)] = sum over q = (b, output position) of d[q, co] x[q's patch at the tap, ci]. Program axis 2
    # is k * SPLITS + s: split s reduces q in [s * Q_SPLIT, (s + 1) * Q_SPLIT) into its own slab dw_ptr[k, s].
    # Program axis 1: a block of columns inside one tap (tap-major, BLOCK_N input channels; PACKED: CIN < 16, a
    # block of consecutive (tap, ci) columns). UPDATE (SPLITS = 1): no dw; one RMSprop step of the weight w_ptr
    # (square average v_ptr, bf16 copy c_ptr if COPY, step counter step_ptr if STEP) with the tile's dw.
    k = (tl.program_id(2) // SPLITS).to(tl.int64)
    split = tl.program_id(2) % SPLITS
    TAPS: tl.constexpr = KD * KH * KW
    P: tl.constexpr = OD * OH * OW
    N = TAPS * CIN
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)            # output channels
    m_ok = offs_m < COUT
    q_cols = tl.arange(0, BLOCK_K)
    if PACKED:
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)        # columns (tap, ci), ci fastest
        t = offs_n // CIN
        ci = offs_n - t * CIN
        n_ok = offs_n < N
    else:
        CB = tl.cdiv(CIN, BLOCK_N)
        t = tl.program_id(1) // CB                                          # one tap for the whole block
        ci0 = (tl.program_id(1) - t * CB) * BLOCK_N
        ci = ci0 + tl.arange(0, BLOCK_N)
        n_ok = ci < CIN
        offs_n = t * CIN + ci
    kd, kh, kw = _unravel(t, KD, KH, KW)
    shift = ((kd * H + kh) * W + kw) * CIN + ci                             # [BLOCK_N]
    d_k = d_ptr + k * B * P * COUT
    x_k = x_ptr + k * B * D * H * W * CIN
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    q_end = tl.minimum((split + 1) * Q_SPLIT, B * P)
    for q0 in range(split * Q_SPLIT, q_end, BLOCK_K):
        q = q0 + q_cols
        q_ok = q < q_end
        od, oh, ow = _unravel(q % P, OD, OH, OW)
        i_d, i_h, i_w = od * SD - PD, oh * SH - PH, ow * SW - PW
        row = ((((q // P) * D + i_d) * H + i_h) * W + i_w) * CIN
        g = tl.load(d_k + q[None, :] * COUT + offs_m[:, None], mask=m_ok[:, None] & q_ok[None, :], other=0.0)
        if PACKED:
            ok = (q_ok[:, None] & n_ok[None, :]
                  & (i_d[:, None] + kd[None, :] >= 0) & (i_d[:, None] + kd[None, :] < D)
                  & (i_h[:, None] + kh[None, :] >= 0) & (i_h[:, None] + kh[None, :] < H)
                  & (i_w[:, None] + kw[None, :] >= 0) & (i_w[:, None] + kw[None, :] < W))
        else:
            ok = (q_ok & (i_d + kd >= 0) & (i_d + kd < D) & (i_h + kh >= 0) & (i_h + kh < H)
                  & (i_w + kw >= 0) & (i_w + kw < W))[:, None]
            if not EVEN_N:
                ok = ok & n_ok[None, :]
        xs = tl.load(x_k + row[:, None] + shift[None, :], mask=ok, other=0.0)
        acc = mma(g, xs, acc, PRECISION)
    if UPDATE:
        # In column eighths (two halves, each in quarters), so the w and v tiles read are never all live beside the
        # accumulator: at 128 x 256 on sm_90 halves spilled 744-1,048 bytes and quarters 430-520, eighths none
        # (222-242 registers, Triton 3.6 and 3.9; tests/test_compile_gate.py).
        if LR_FROM_PTR:
            rate = tl.load(lr_ptr).to(tl.float32)
        else:
            rate = lr
        if PACKED:
            col0, col_end = tl.program_id(1) * BLOCK_N, N
        else:
            col0, col_end = t * CIN + ci0, t * CIN + CIN
        at_k = k * COUT * N                        # this discriminator's weight; 32-bit offsets inside it
        rows = offs_m * N
        lo, hi = column_halves(acc, BLOCK_M, BLOCK_N)
        w_k, v_k, c_k = w_ptr + at_k, v_ptr + at_k, c_ptr + at_k
        _rmsprop_store_quarters(lo, rows, m_ok, col0, col_end, w_k, v_k, c_k, rate, alpha, one_minus_alpha, eps,
                                COPY, BLOCK_M, BLOCK_N // 2)
        _rmsprop_store_quarters(hi, rows, m_ok, col0 + BLOCK_N // 2, col_end, w_k, v_k, c_k, rate, alpha,
                                one_minus_alpha, eps, COPY, BLOCK_M, BLOCK_N // 2)
        if STEP:
            if (tl.program_id(0) == 0) & (tl.program_id(1) == 0) & (tl.program_id(2) == 0):
                tl.store(step_ptr, tl.load(step_ptr) + 1)
    else:
        out = dw_ptr + tl.program_id(2).to(tl.int64) * COUT * N + offs_m[:, None] * N + offs_n[None, :]
        tl.store(out, acc, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _rmsprop_store_quarters(g, rows, m_ok, col0, col_end, w_ptr, v_ptr, c_ptr, rate, alpha, one_minus_alpha, eps,
                            COPY: tl.constexpr, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr):
    """_rmsprop_store of the tile g (WIDTH columns from col0) in four column quarters."""
    lo, hi = column_halves(g, BLOCK_M, WIDTH)
    q0, q1 = column_halves(lo, BLOCK_M, WIDTH // 2)
    q2, q3 = column_halves(hi, BLOCK_M, WIDTH // 2)
    QUARTER: tl.constexpr = WIDTH // 4
    cols = col0 + tl.arange(0, QUARTER)
    _rmsprop_store(q0, rows, m_ok, cols, col_end, w_ptr, v_ptr, c_ptr, rate, alpha, one_minus_alpha, eps, COPY)
    _rmsprop_store(q1, rows, m_ok, cols + QUARTER, col_end, w_ptr, v_ptr, c_ptr, rate, alpha, one_minus_alpha, eps,
                   COPY)
    _rmsprop_store(q2, rows, m_ok, cols + 2 * QUARTER, col_end, w_ptr, v_ptr, c_ptr, rate, alpha, one_minus_alpha,
                   eps, COPY)
    _rmsprop_store(q3, rows, m_ok, cols + 3 * QUARTER, col_end, w_ptr, v_ptr, c_ptr, rate, alpha, one_minus_alpha,
                   eps, COPY)


@triton.jit
def _rmsprop_store(g, rows, m_ok, cols, col_end, w_ptr, v_ptr, c_ptr, rate, alpha, one_minus_alpha, eps,
                   COPY: tl.constexpr):
    """One RMSprop step of w[rows, cols] with the gradient tile g (kernels/rmsprop.py's math), and its copy. The copy
    is stored first: stored last, Triton 3.6 kept more of the tile live and spilled 16 bytes on sm_80 in bf16."""
    at = rows[:, None] + cols[None, :]
    ok = m_ok[:, None] & (cols < col_end)[None, :]
    w, v = rmsprop_math(tl.load(w_ptr + at, mask=ok, other=0.0), g, tl.load(v_ptr + at, mask=ok, other=0.0),
                        rate, alpha, one_minus_alpha, eps)
    if COPY:
        tl.store(c_ptr + at, cast_for_store(w, c_ptr.dtype.element_ty), mask=ok)
    tl.store(w_ptr + at, w, mask=ok)
    tl.store(v_ptr + at, v, mask=ok)


# ------------------------------------------------------------------------------------------- launch wrappers

def output_size(in_size, kernel, stride, padding) -> tuple:
    return tuple((i + 2 * p - k) // s + 1 for i, k, s, p in zip(in_size, kernel, stride, padding))


def _constexprs(in_size, kernel, stride, padding) -> dict:
    """The geometry constexprs of a layer (3-D; a 2-D layer has D = KD = SD = 1, PD = 0)."""
    (D, H, W), (KD, KH, KW), (SD, SH, SW), (PD, PH, PW) = in_size, kernel, stride, padding
    OD, OH, OW = output_size(in_size, kernel, stride, padding)
    if min(OD, OH, OW) < 1:
        raise ValueError(f"conv: input {tuple(in_size)} is too small for kernel {tuple(kernel)} with padding "
                         f"{tuple(padding)}")
    return dict(D=D, H=H, W=W, OD=OD, OH=OH, OW=OW, KD=KD, KH=KH, KW=KW, SD=SD, SH=SH, SW=SW, PD=PD, PH=PH, PW=PW)


STORAGE_DTYPES = (torch.float32, torch.bfloat16)     # activations, weights read, input gradients


def _check(name: str, t: torch.Tensor, shape: tuple, dtypes=STORAGE_DTYPES) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"conv: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"conv: {name} must be {' or '.join(str(d).removeprefix('torch.') for d in dtypes)}, "
                         f"got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"conv: {name} must be contiguous (channels last)")


def _block(n: int, cap: int) -> int:
    """A power-of-two block for a dimension of n elements: the tile's `cap`, or less for a small n (at least 16,
    tl.dot's minimum)."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def _launch(kernel: str, precision: str, device, tile: Tile | None, problem, launch, final=None) -> None:
    """launch(tile) at `tile`, or at the tile kernels/autotune.py picks for this layer among kernels/tiles.py's
    candidates (the fixed first one off a GPU, under the interpreter, during capture without a cached winner).
    `final`: what runs at the chosen tile instead of `launch` (which alone is timed: a launch with side effects
    beyond its outputs, such as an optimizer step, must not run once per candidate)."""
    if tile is None:
        tile = choose(kernel, problem, precision, conv_tiles(kernel, target_family(device), precision), launch,
                      device)
    (final or launch)(tile)


def conv_forward(x, w, bias, kernel, stride, padding, leaky: bool, precision: str = "fp32",
                 out_dtype=torch.float32, tile: Tile | None = None, transpose_out: bool = False) -> torch.Tensor:
    """y [K, B, OD, OH, OW, COUT] (out_dtype) = act(conv(x, w) + bias) for x [K, B, D, H, W, CIN] and
    w [K, COUT, KD, KH, KW, CIN], both channels last; bias [K, COUT] fp32 or None; act = LeakyReLU(0.2) if `leaky`.
    transpose_out: y is written channels first, [K, COUT, B, OD, OH, OW] (for a col2im that reads it by channel)."""
    K, B, D, H, W, CIN = x.shape
    COUT = w.shape[1]
    geo = _constexprs((D, H, W), kernel, stride, padding)
    _check("x", x, x.shape)
    _check("w", w, (K, COUT, *kernel, CIN))
    if bias is not None:
        _check("bias", bias, (K, COUT), (torch.float32,))
    packed = CIN < 16
    out = (geo["OD"], geo["OH"], geo["OW"])
    y = torch.empty((K, COUT, B, *out) if transpose_out else (K, B, *out, COUT), device=x.device, dtype=out_dtype)
    M = B * math.prod(out)

    def launch(t: Tile):
        bk = PACKED_BLOCK_K if packed else _block(CIN, t.block_k)
        bn = _block(COUT, t.block_n)
        _conv_fwd_kernel[(triton.cdiv(M, t.block_m), triton.cdiv(COUT, bn), K)](
            x, w, y if bias is None else bias, y, B, CIN, COUT, **geo, HAS_BIAS=bias is not None, LEAKY=leaky,
            TRANSPOSE_OUT=transpose_out, PRECISION=dot_precision(precision), PACKED=packed, EVEN_K=CIN % bk == 0,
            BLOCK_M=t.block_m, BLOCK_N=bn, BLOCK_K=bk, **t.options())
    _launch("forward", precision, x.device, tile, (K, B, CIN, COUT, tuple(geo.values()), str(x.dtype)), launch)
    return y


def conv_dgrad(d, w, x, kernel, stride, padding, act_in: bool, precision: str = "fp32", out_dtype=torch.float32,
               tile: Tile | None = None) -> torch.Tensor:
    """The input gradient [K, B, D, H, W, CIN] (out_dtype) of conv_forward given d = dL/d(pre-activation output)
    [K, B, OD, OH, OW, COUT]; times LeakyReLU'(x) (the slope of the layer below, from the sign of x, the layer's
    input) when `act_in`, i.e. the gradient with respect to the pre-activation of the layer below."""
    K, B, D, H, W, CIN = x.shape
    COUT = w.shape[1]
    geo = _constexprs((D, H, W), kernel, stride, padding)
    _check("x", x, x.shape)
    _check("w", w, (K, COUT, *kernel, CIN))
    _check("d", d, (K, B, geo["OD"], geo["OH"], geo["OW"], COUT))
    dx = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    classes = math.prod(stride)
    per_class = B * math.prod(-(-n // s) for n, s in zip((D, H, W), stride))

    def launch(t: Tile):
        bk, bn = _block(COUT, t.block_k), _block(CIN, t.block_n)
        _conv_dgrad_kernel[(classes * triton.cdiv(per_class, t.block_m), triton.cdiv(CIN, bn), K)](
            d, w, x, dx, B, CIN, COUT, **geo, ACT_IN=act_in, PRECISION=dot_precision(precision),
            EVEN_K=COUT % bk == 0, BLOCK_M=t.block_m, BLOCK_N=bn, BLOCK_K=bk, **t.options())
    _launch("dgrad", precision, x.device, tile, (K, B, CIN, COUT, tuple(geo.values()), act_in, str(x.dtype)), launch)
    return dx


def _splits(programs: int, sms: int, most: int) -> int:
    """The split of a reduction (at most `most`) that gives the busiest SM the least of it: programs x splits
    programs take ceil(programs x splits / sms) rounds of 1 / splits each (the smallest split among equals)."""
    return min(range(1, max(1, most) + 1), key=lambda s: (math.ceil(programs * s / sms) / s, s))


def conv_wgrad(d, x, kernel, stride, padding, cout: int, precision: str = "fp32", tile: Tile | None = None,
               sms: int | None = None, update: RMSpropStep | None = None) -> torch.Tensor | None:
    """dw [K, COUT, KD, KH, KW, CIN] (fp32) of conv_forward given d = dL/d(pre-activation output). The reduction
    over batch x output positions is split into chunks (fp32 partials, summed in a fixed order) when the weight
    tiles alone would give fewer than two programs per SM (`sms`: the GPU's; default the device's).

    update: instead of returning dw, apply this RMSprop step with it (update.weight [K, COUT, KD, KH, KW, CIN],
    fp32, laid out like dw) and return None. Unsplit, each program applies the step to its weight tile in its
    epilogue, so dw is never stored; split, the summed dw goes to kernels/rmsprop.py's launch."""
    K, B, D, H, W, CIN = x.shape
    geo = _constexprs((D, H, W), kernel, stride, padding)
    _check("x", x, x.shape)
    _check("d", d, (K, B, geo["OD"], geo["OH"], geo["OW"], cout))
    if update is not None:
        _check("the updated weight", update.weight, (K, cout, *kernel, CIN), (torch.float32,))
        update.check()
    taps = math.prod(kernel)
    packed = CIN < 16
    Q = B * geo["OD"] * geo["OH"] * geo["OW"]
    sms = sms or target_sms(x.device)
    result = {}

    def launch(t: Tile, step: RMSpropStep | None = None):
        bm = _block(cout, t.block_m)
        bn = _block(taps * CIN, t.block_n) if packed else _block(CIN, t.block_n)
        columns = triton.cdiv(taps * CIN, bn) if packed else taps * triton.cdiv(CIN, bn)
        programs = triton.cdiv(cout, bm) * columns * K
        splits = _splits(programs, sms, min(triton.cdiv(2 * sms, programs), Q // (4 * t.block_k)))
        q_split = triton.cdiv(triton.cdiv(Q, splits), t.block_k) * t.block_k
        splits = triton.cdiv(Q, q_split)
        fused = step is not None and splits == 1
        out = x if fused else torch.empty((K, splits, cout, *kernel, CIN), device=x.device, dtype=torch.float32)
        _conv_wgrad_kernel[(triton.cdiv(cout, bm), columns, K * splits)](
            d, x, out, B, CIN, cout, q_split, splits,
            **(step.kernel_args() if fused else RMSpropStep.no_update_args(out)), **geo,
            PRECISION=dot_precision(precision), PACKED=packed, EVEN_N=packed or CIN % bn == 0, BLOCK_M=bm,
            BLOCK_N=bn, BLOCK_K=t.block_k, **t.options())
        result["dw"] = None if fused else out[:, 0] if splits == 1 else out.sum(1)
        if step is not None and not fused:
            step.apply(result.pop("dw"))
    _launch("wgrad", precision, x.device, tile, (K, B, CIN, cout, tuple(geo.values()), sms, str(x.dtype)), launch,
            final=None if update is None else lambda t: launch(t, update))
    return result.get("dw")


def conv_input_grad(d, w, x, kernel, stride, padding, act_in: bool, precision: str = "fp32",
                    out_dtype=torch.float32, tile: Tile | None = None) -> torch.Tensor:
    """conv_dgrad for any layer: a 1-channel input (the projection into conv1) takes e = d @ w^T (conv_forward as a
    GEMM: one row per output position, one column per tap) and then col2im (each input position sums the e of the
    taps that reached it): no 16-wide padding of the one input channel, and d is read once."""
    K, B, D, H, W, CIN = x.shape
    if CIN != 1:
        return conv_dgrad(d, w, x, kernel, stride, padding, act_in, precision, out_dtype, tile)
    if act_in:
        raise ValueError("conv_input_grad: a 1-channel input is the projection, which has no activation")
    COUT, taps = w.shape[1], math.prod(kernel)
    geo = _constexprs((D, H, W), kernel, stride, padding)
    _check("d", d, (K, B, geo["OD"], geo["OH"], geo["OW"], COUT))
    P = geo["OD"] * geo["OH"] * geo["OW"]
    w_t = w.reshape(K, COUT, taps).transpose(1, 2).contiguous().view(K, taps, 1, 1, 1, COUT)
    e = conv_forward(d.view(K, B * P, 1, 1, 1, COUT), w_t, None, (1, 1, 1), (1, 1, 1), (0, 0, 0), False, precision,
                     torch.float32, tile, transpose_out=True)                   # e[k, t, (b, o)]
    dx = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    col2im(e, (taps * B * P, 0, B * P, P, 1), dx.view(K, B, D, H, W), (D, H, W),
           (geo["OD"], geo["OH"], geo["OW"]), kernel, stride, padding)
    return dx
