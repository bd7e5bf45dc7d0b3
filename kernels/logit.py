"""The logit layer of both discriminators (conv4) as batched GEMV kernels: fp32 FMA, no tensor core, no padding.

conv4 has one output channel and its kernel covers the whole remaining input (one output position per sample:
D_F 2x2 -> 1x1 with padding 1, D_V 4x2x2 -> 1x1x1 with padding (0, 1, 1)). So input element r = (ci, d, h, w)
of sample b meets exactly one tap, t(r) = (ci, d + PD, h + PH, w + PW) (none if that is past the kernel), and
    forward  y[k, b]  = act(sum_r x[k, b, r] w[k, t(r)] + bias[k])      a GEMV per k over a contiguous row
    dgrad    dx[k, b, r] = g[k, b] w[k, t(r)]                            an outer product
    wgrad    dw[k, t(r)] = sum_b g[k, b] x[k, b, r],  db[k] = sum_b g[k, b]   (taps that meet no input: 0)
with g = dL/dy, times LeakyReLU' (read from the sign of y) when act is LeakyReLU. The implicit-GEMM kernels of
kernels/batched_conv.py would pad N = 1 to 16 (tl.dot's minimum) and give each k a single program that loops over
the whole reduction; here each k's rows (forward, dgrad) or columns (wgrad) are spread over many programs, every
reduction is an elementwise fp32 FMA into a [BLOCK_M, BLOCK_R] accumulator summed once at the end, and x / dx are
read and written as BLOCK_R consecutive elements of a row (16-byte vector loads and stores when the row length is
a multiple of 4: Triton specializes integer arguments divisible by 16). Deterministic: no atomics, one program
per output element, a fixed summation order (wgrad reduces the batch inside the program).

Precision: no tl.dot, so TF32 does not apply: precision "tf32" runs exact fp32 products (at least as accurate
as tf32, within its bound). "bf16" rounds the operands of every product to bf16 (ties to even), exactly like the
tensor-core layers (kernels/common.py), so a bf16 run means the same thing in every layer; sums stay fp32.
Storage: x, w, dy and y may be float32 or bfloat16 (read into fp32 registers); y and dx are written in out_dtype;
dw and db are float32. Launch wrappers only (no autograd); kernels/batched_conv.py routes conv4 here (is_logit_layer).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from vidgan_fast.kernels.autotune import choose
from vidgan_fast.kernels.common import cast_for_store, gpu_tiles, round_to_bf16
from vidgan_fast.kernels.mode import PRECISIONS

NEGATIVE_SLOPE = tl.constexpr(0.2)

# Candidate tiles (BLOCK_M rows of the batch, BLOCK_R consecutive elements of a row, num_warps) per kernel; the
# first is the fixed GPU tile (kernels/autotune.py times the others on a GPU). A [BLOCK_M, BLOCK_R] fp32 tile
# spread over the warps' threads: 4 x 512 over 4 warps is 16 accumulators and 4 16-byte loads per thread.
# ptxas at the paper shapes (2026-12-04, sm_80/sm_90): 28-64 registers for every candidate, no spills; the PTX of x
# and dx shows ld.global.v4.b32 / st.global.v4.b32 (the weight taps are a gather: scalar loads, read once per row).
CANDIDATES = {
    "logit_forward": ((4, 512, 4), (1, 1024, 4), (8, 256, 4), (2, 1024, 8)),
    "logit_dgrad": ((4, 512, 4), (1, 1024, 4), (8, 1024, 8)),
    "logit_wgrad": ((8, 256, 4), (32, 128, 4), (16, 512, 8), (4, 512, 4)),
}
GPU_TILES = {"forward": (4, 512, 4), "dgrad": (4, 512, 4), "wgrad": (8, 256, 4)}   # = CANDIDATES[...][0]
INTERPRETER_TILE_CAPS = (64, 1024)     # the interpreter: fewer, larger numpy steps


def is_logit_layer(cout: int, out_spatial) -> bool:
    """Whether a convolution is a logit layer these kernels run: one output channel, one output position."""
    return cout == 1 and all(o == 1 for o in out_spatial)


@triton.jit
def _weight_offset(r, D: tl.constexpr, H: tl.constexpr, W: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr,
                   KW: tl.constexpr, PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr):
    """(offset in w[k, 0] of the tap t(r) that input element r = (ci, d, h, w) meets, whether that tap exists)."""
    iw = r % W
    ih = (r // W) % H
    i_d = (r // (W * H)) % D
    ci = r // (W * H * D)
    td, th, tw = i_d + PD, ih + PH, iw + PW
    return ((ci * KD + td) * KH + th) * KW + tw, (td < KD) & (th < KH) & (tw < KW)


@triton.jit
def _masked_grad(dy_ptr, y_ptr, off, mask, LEAKY: tl.constexpr):
    """dL/dpre of the samples at `off`: dy, times LeakyReLU' from the sign of y when LEAKY."""
    g = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if LEAKY:
        y = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
        g = tl.where(y > 0, g, g * NEGATIVE_SLOPE)
    return g


@triton.jit
def _logit_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, B, R_X, R_W,
                      D: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                      KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                      PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                      LEAKY: tl.constexpr, BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    k = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)          # samples b
    row_ok = rows < B
    x_rows = x_ptr + (k * B + rows) * R_X
    w_k = w_ptr + k * R_W
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for r0 in range(0, R_X, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)                                  # consecutive elements of a row
        r_ok = r < R_X
        w_off, tap_ok = _weight_offset(r, D, H, W, KD, KH, KW, PD, PH, PW)
        w = tl.load(w_k + w_off, mask=r_ok & tap_ok, other=0.0).to(tl.float32)
        x = tl.load(x_rows[:, None] + r[None, :], mask=row_ok[:, None] & r_ok[None, :], other=0.0).to(tl.float32)
        if BF16:
            x, w = round_to_bf16(x), round_to_bf16(w)
        acc += x * w[None, :]
    y = tl.sum(acc, axis=1) + tl.load(b_ptr + k)
    if LEAKY:
        y = tl.where(y > 0, y, y * NEGATIVE_SLOPE)
    tl.store(y_ptr + k * B + rows, cast_for_store(y, y_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _logit_dgrad_kernel(dy_ptr, y_ptr, w_ptr, dx_ptr, B, R_X, R_W,
                        D: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                        PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                        LEAKY: tl.constexpr, BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    k = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R_X
    g = _masked_grad(dy_ptr, y_ptr, k * B + rows, row_ok, LEAKY)
    w_off, tap_ok = _weight_offset(r, D, H, W, KD, KH, KW, PD, PH, PW)
    w = tl.load(w_ptr + k * R_W + w_off, mask=r_ok & tap_ok, other=0.0).to(tl.float32)
    if BF16:
        g, w = round_to_bf16(g), round_to_bf16(w)
    dx_rows = dx_ptr + (k * B + rows) * R_X
    tl.store(dx_rows[:, None] + r[None, :], cast_for_store(g[:, None] * w[None, :], dx_ptr.dtype.element_ty),
             mask=row_ok[:, None] & r_ok[None, :])


@triton.jit
def _logit_wgrad_kernel(dy_ptr, y_ptr, x_ptr, dw_ptr, db_ptr, B, R_X, R_W,
                        D: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                        KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                        PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                        LEAKY: tl.constexpr, BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    k = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)              # a block of columns: elements of x rows
    r_ok = r < R_X
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for b0 in range(0, B, BLOCK_M):                                     # the whole batch, in a fixed order
        rows = b0 + tl.arange(0, BLOCK_M)
        row_ok = rows < B
        g = _masked_grad(dy_ptr, y_ptr, k * B + rows, row_ok, LEAKY)
        bias_acc += g
        x = tl.load(x_ptr + ((k * B + rows) * R_X)[:, None] + r[None, :], mask=row_ok[:, None] & r_ok[None, :],
                    other=0.0).to(tl.float32)
        if BF16:
            g, x = round_to_bf16(g), round_to_bf16(x)
        acc += g[:, None] * x
    w_off, tap_ok = _weight_offset(r, D, H, W, KD, KH, KW, PD, PH, PW)
    tl.store(dw_ptr + k * R_W + w_off, tl.sum(acc, axis=0), mask=r_ok & tap_ok)
    first = tl.arange(0, 2)                                             # only program 0 of each k writes db
    tl.store(db_ptr + k + first, tl.zeros((2,), tl.float32) + tl.sum(bias_acc, axis=0),
             mask=first < tl.where(tl.program_id(0) == 0, 1, 0))


def _constexprs(x_spatial, kernel, padding, leaky: bool, precision: str) -> dict:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    (D, H, W), (KD, KH, KW), (PD, PH, PW) = x_spatial, kernel, padding
    return dict(D=D, H=H, W=W, KD=KD, KH=KH, KW=KW, PD=PD, PH=PH, PW=PW, LEAKY=leaky, BF16=precision == "bf16")


def _launch(name: str, kernel, grid_of, args, consts, rows: int, cols: int, precision: str, tiles: str, device):
    """Choose the tile of `name` (fixed, forced or tuned: kernels/autotune.py) and launch with it."""
    gpu = gpu_tiles(tiles)

    def launch(candidate):
        bm, br, warps = candidate
        if not gpu:     # interpreter tiles: the whole batch (up to the cap) and long row blocks
            bm, br = (min(cap, max(2, triton.next_power_of_2(n))) for cap, n in zip(INTERPRETER_TILE_CAPS,
                                                                                     (rows, cols)))
        kernel[grid_of(bm, br)](*args, **consts, BLOCK_M=bm, BLOCK_R=br, num_warps=warps)

    problem = (args[-3:], tuple(consts.values()), grid_of(1, 1)[-1])     # (B, R_X, R_W), geometry, K
    launch(choose(name, problem, precision, CANDIDATES[name], launch, device, gpu))


def logit_forward(x, w, bias, x_spatial, kernel, padding, leaky: bool, precision: str, tiles: str,
                  out_dtype=torch.float32):
    """y [K, B] (out_dtype) of conv(x, w) + bias (then LeakyReLU if `leaky`) for x [K, B, Cin, D, H, W] and
    w [K, 1, Cin, kd, kh, kw] (contiguous, float32 or bfloat16, read into fp32), bias [K, 1] (float32), where the
    kernel covers the whole input (is_logit_layer)."""
    K, B = x.shape[:2]
    R_X, R_W = x[0, 0].numel(), w[0].numel()
    y = torch.empty((K, B), device=x.device, dtype=out_dtype)
    consts = _constexprs(x_spatial, kernel, padding, leaky, precision)
    _launch("logit_forward", _logit_fwd_kernel, lambda bm, br: (triton.cdiv(B, bm), K), (x, w, bias, y, B, R_X, R_W),
            consts, B, R_X, precision, tiles, x.device)
    return y


def logit_input_grad(dy, w, y, x_shape, x_spatial, kernel, padding, precision: str, tiles: str,
                     out_dtype=torch.float32):
    """dx (x_shape, out_dtype) of logit_forward given dy [K, B]; y is the forward's output when act is LeakyReLU, else None
    (then dy is passed in its place and not read)."""
    K, B = x_shape[:2]
    R_X, R_W = math.prod(x_shape[2:]), w[0].numel()
    dx = torch.empty(x_shape, device=dy.device, dtype=out_dtype)
    consts = _constexprs(x_spatial, kernel, padding, y is not None, precision)
    _launch("logit_dgrad", _logit_dgrad_kernel, lambda bm, br: (triton.cdiv(R_X, br), triton.cdiv(B, bm), K),
            (dy, dy if y is None else y, w, dx, B, R_X, R_W), consts, B, R_X, precision, tiles, dy.device)
    return dx


def logit_weight_grad(dy, x, y, w_shape, x_spatial, kernel, padding, precision: str, tiles: str):
    """(dw of w_shape, db [K, 1]) of logit_forward given dy [K, B]; y as in logit_input_grad."""
    K, B = x.shape[:2]
    R_X, R_W = x[0, 0].numel(), math.prod(w_shape[1:])
    covered = tuple(x_spatial) == tuple(kernel) and not any(padding)    # every tap meets an input element
    dw = (torch.empty if covered else torch.zeros)(w_shape, device=x.device, dtype=torch.float32)
    db = torch.empty((K, 1), device=x.device, dtype=torch.float32)
    consts = _constexprs(x_spatial, kernel, padding, y is not None, precision)
    _launch("logit_wgrad", _logit_wgrad_kernel, lambda bm, br: (triton.cdiv(R_X, br), K),
            (dy, dy if y is None else y, x, dw, db, B, R_X, R_W), consts, B, R_X, precision, tiles, x.device)
    return dw, db
