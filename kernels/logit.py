"""The logit layer of both discriminators (conv4) as batched GEMVs: fp32 FMA, no tensor core, no padding.

conv4 has one output channel and its kernel covers the whole remaining input (one output position per sample:
D_F 2x2 -> 1x1 with padding 1, D_V 4x2x2 -> 1x1x1 with padding (0, 1, 1)). So input element r = (d, h, w, c) of
sample b (channels last, the banks' layout) meets exactly one tap, t(r) = (d + PD, h + PH, w + PW, c) (none if that
is past the kernel), and with g = dL/dy:
    forward  y[k, b]  = sum_r x[k, b, r] w[k, t(r)] + bias[k]              a GEMV per k over a contiguous row
    dgrad    dx[k, b, r] = g[k, b] w[k, t(r)]  (x LeakyReLU'(x[k, b, r]) when ACT_IN: the pre-activation gradient
             of the layer below, whose output x is)                         an outer product
    wgrad    dw[k, t(r)] = sum_b g[k, b] x[k, b, r],  db[k] = sum_b g[k, b]   (taps that meet no input: 0)
Each k's rows (forward, dgrad) or columns (wgrad) are spread over many programs, every reduction is an
elementwise fp32 FMA into a [BLOCK_M, BLOCK_R] accumulator summed once at the end, and x / dx are read and written as
BLOCK_R consecutive elements of a row (16-byte vectors). Deterministic: no atomics, a fixed summation order.
Precision: "tf32" runs exact fp32 products (no tl.dot here); "bf16" rounds the operands of every product to bf16
(ties to even), as the tensor-core layers do. Storage: x, w, g may be float32 or bfloat16; y (fp32) and dx
(out_dtype); dw and db are float32. Launch wrappers only (fast/bank.py runs conv4 here).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from vidgan_fast.kernels.common import cast_for_store, round_to_bf16, target_family
from vidgan_fast.kernels.mode import PRECISIONS
from vidgan_fast.kernels.tiles import logit_tile

NEGATIVE_SLOPE = tl.constexpr(0.2)


@triton.jit
def _weight_offset(r, C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, W: tl.constexpr, KD: tl.constexpr,
                   KH: tl.constexpr, KW: tl.constexpr, PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr):
    """(offset in w[k] of the tap t(r) that input element r = (d, h, w, c) meets, whether that tap exists)."""
    c = r % C
    s = r // C
    td, th, tw = s // (W * H) + PD, (s // W) % H + PH, s % W + PW
    return ((td * KH + th) * KW + tw) * C + c, (td < KD) & (th < KH) & (tw < KW)


@triton.jit
def _logit_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, B,
                      C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                      KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                      PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                      BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    R_X: tl.constexpr = D * H * W * C
    k = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)          # samples b
    row_ok = rows < B
    x_rows = x_ptr + (k * B + rows) * R_X
    w_k = w_ptr + k * (KD * KH * KW * C)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for r0 in range(0, R_X, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)                                  # consecutive elements of a row
        r_ok = r < R_X
        w_off, tap_ok = _weight_offset(r, C, D, H, W, KD, KH, KW, PD, PH, PW)
        w = tl.load(w_k + w_off, mask=r_ok & tap_ok, other=0.0).to(tl.float32)
        x = tl.load(x_rows[:, None] + r[None, :], mask=row_ok[:, None] & r_ok[None, :], other=0.0).to(tl.float32)
        if BF16:
            x, w = round_to_bf16(x), round_to_bf16(w)
        acc += x * w[None, :]
    y = tl.sum(acc, axis=1) + tl.load(b_ptr + k)
    tl.store(y_ptr + k * B + rows, y, mask=row_ok)


@triton.jit
def _logit_dgrad_kernel(g_ptr, w_ptr, x_ptr, dx_ptr, B,
                        C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                        PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                        ACT_IN: tl.constexpr, BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    R_X: tl.constexpr = D * H * W * C
    k = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R_X
    g = tl.load(g_ptr + k * B + rows, mask=row_ok, other=0.0).to(tl.float32)
    w_off, tap_ok = _weight_offset(r, C, D, H, W, KD, KH, KW, PD, PH, PW)
    w = tl.load(w_ptr + k * (KD * KH * KW * C) + w_off, mask=r_ok & tap_ok, other=0.0).to(tl.float32)
    if BF16:
        g, w = round_to_bf16(g), round_to_bf16(w)
    io = ((k * B + rows) * R_X)[:, None] + r[None, :]
    ok = row_ok[:, None] & r_ok[None, :]
    dx = g[:, None] * w[None, :]
    if ACT_IN:                                                          # LeakyReLU' of the layer below
        xv = tl.load(x_ptr + io, mask=ok, other=0.0)
        dx = tl.where(xv > 0, dx, dx * NEGATIVE_SLOPE)
    tl.store(dx_ptr + io, cast_for_store(dx, dx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _logit_wgrad_kernel(g_ptr, x_ptr, dw_ptr, db_ptr, B,
                        C: tl.constexpr, D: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                        PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                        BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    R_X: tl.constexpr = D * H * W * C
    k = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)              # a block of columns: elements of x rows
    r_ok = r < R_X
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for b0 in range(0, B, BLOCK_M):                                     # the whole batch, in a fixed order
        rows = b0 + tl.arange(0, BLOCK_M)
        row_ok = rows < B
        g = tl.load(g_ptr + k * B + rows, mask=row_ok, other=0.0).to(tl.float32)
        bias_acc += g
        x = tl.load(x_ptr + ((k * B + rows) * R_X)[:, None] + r[None, :], mask=row_ok[:, None] & r_ok[None, :],
                    other=0.0).to(tl.float32)
        if BF16:
            g, x = round_to_bf16(g), round_to_bf16(x)
        acc += g[:, None] * x
    w_off, tap_ok = _weight_offset(r, C, D, H, W, KD, KH, KW, PD, PH, PW)
    tl.store(dw_ptr + k * (KD * KH * KW * C) + w_off, tl.sum(acc, axis=0), mask=r_ok & tap_ok)
    first = tl.arange(0, 2)                                             # only program 0 of each k writes db
    tl.store(db_ptr + k + first, tl.zeros((2,), tl.float32) + tl.sum(bias_acc, axis=0),
             mask=first < tl.where(tl.program_id(0) == 0, 1, 0))


def is_logit_layer(cout: int, out_spatial) -> bool:
    """Whether a convolution is a logit layer these kernels run: one output channel, one output position."""
    return cout == 1 and all(o == 1 for o in out_spatial)


def _constexprs(x, kernel, padding, precision: str) -> dict:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    _, _, D, H, W, C = x.shape
    (KD, KH, KW), (PD, PH, PW) = kernel, padding
    if not is_logit_layer(1, [(i + 2 * p - kk) + 1 for i, kk, p in zip((D, H, W), kernel, padding)]):
        raise ValueError(f"logit layer: kernel {tuple(kernel)} with padding {tuple(padding)} does not cover the "
                         f"input {(D, H, W)} in one position")
    return dict(C=C, D=D, H=H, W=W, KD=KD, KH=KH, KW=KW, PD=PD, PH=PH, PW=PW, BF16=precision == "bf16")


def _blocks(name: str, x, rows: int, cols: int):
    t = logit_tile(name, target_family(x.device))
    return min(t.block_m, max(2, triton.next_power_of_2(rows))), min(t.block_n, triton.next_power_of_2(cols)), \
        t.warps


def logit_forward(x, w, bias, kernel, padding, precision: str = "fp32") -> torch.Tensor:
    """y [K, B] (fp32) = conv(x, w) + bias for x [K, B, D, H, W, C] and w [K, 1, KD, KH, KW, C] (channels last,
    float32 or bfloat16), bias [K, 1] (float32), where the kernel covers the whole input (is_logit_layer)."""
    K, B = x.shape[:2]
    consts = _constexprs(x, kernel, padding, precision)
    y = torch.empty((K, B), device=x.device, dtype=torch.float32)
    bm, br, warps = _blocks("forward", x, B, x[0, 0].numel())
    _logit_fwd_kernel[(triton.cdiv(B, bm), K)](x, w, bias, y, B, **consts, BLOCK_M=bm, BLOCK_R=br, num_warps=warps)
    return y


def logit_dgrad(g, w, x, kernel, padding, act_in: bool, precision: str = "fp32", out_dtype=torch.float32):
    """dL/dx (x's shape, out_dtype) of logit_forward given g = dL/dy [K, B]; times LeakyReLU'(x) when `act_in`."""
    K, B = x.shape[:2]
    consts = _constexprs(x, kernel, padding, precision)
    R_X = x[0, 0].numel()
    dx = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    bm, br, warps = _blocks("dgrad", x, B, R_X)
    _logit_dgrad_kernel[(triton.cdiv(R_X, br), triton.cdiv(B, bm), K)](g, w, x, dx, B, **consts, ACT_IN=act_in,
                                                                      BLOCK_M=bm, BLOCK_R=br, num_warps=warps)
    return dx


def logit_wgrad(g, x, kernel, padding, precision: str = "fp32"):
    """(dw [K, 1, KD, KH, KW, C], db [K, 1]), float32, of logit_forward given g = dL/dy [K, B]."""
    K, B, D, H, W, C = x.shape
    consts = _constexprs(x, kernel, padding, precision)
    R_X = x[0, 0].numel()
    covered = (D, H, W) == tuple(kernel) and not any(padding)           # every tap meets an input element
    dw = (torch.empty if covered else torch.zeros)((K, 1, *kernel, C), device=x.device, dtype=torch.float32)
    db = torch.empty((K, 1), device=x.device, dtype=torch.float32)
    bm, br, warps = _blocks("wgrad", x, B, R_X)
    _logit_wgrad_kernel[(triton.cdiv(R_X, br), K)](g, x, dw, db, B, **consts, BLOCK_M=bm, BLOCK_R=br,
                                                   num_warps=warps)
    return dw, db
