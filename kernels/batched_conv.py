"""Batched convolution over K independent discriminators: one launch per layer for all K.

Each kernel is an implicit GEMM (no im2col buffer) with the discriminator index k as the third grid axis:
    forward  y[k] = act(conv(x[k], w[k]) + b[k])      M = B*out positions, N = Cout, reduction = Cin*kvol
    (act = LeakyReLU(0.2) or identity; the backward kernels apply act' from the sign of the saved output y)
    dgrad    dx[k] = sum over (co, taps) of dy[k] w[k]  M = B*in positions,  N = Cin,  reduction = Cout*kvol/stride
             (gather form, no atomics: each input position reads the outputs it fed; positions are grouped by
             their residue modulo the stride and a tile loops over its box of taps that reach an in-range output
             only, so neither the taps a stride skips nor those past the border are executed)
    wgrad    dw[k] = sum over (b, out positions) of dy[k] x[k] patches; db[k] = sum of dy[k]
Layouts (contiguous): x [K, B, Cin, D, H, W], w [K, Cout, Cin, kd, kh, kw], b [K, Cout], y [K, B, Cout, OD, OH, OW].
2D convolutions are the 3D kernels with D = kd = 1 (the wrappers accept 5-D x / 5-D w for that).

precision: "fp32" (exact products), "tf32" or "bf16" (tensor cores, fp32 accumulation): kernels/common.py.
Storage: x, w, dy and y may each be float32 or bfloat16 (read, then computed in fp32 registers); y and dx are
written in `out_dtype` (float32 or bfloat16); b, dw and db are always float32 (the master weights and their
optimizer read them).
tiles: "auto" (GPU tiles when compiled, larger ones under the interpreter) or "gpu" / "interpreter".
A logit layer (Cout = 1, one output position: conv4 of both discriminators) is routed to kernels/logit.py's batched
GEMVs; every other layer's tile is picked per layer by kernels/autotune.py from CANDIDATES (fixed off a GPU).
These are launch wrappers only: no autograd (see vidgan_fast.fast.bank).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vidgan_fast.kernels.autotune import choose
from vidgan_fast.kernels.common import cast_for_store, dot_precision, gpu_tiles, mma, tile
from vidgan_fast.kernels.logit import is_logit_layer, logit_forward, logit_input_grad, logit_weight_grad

NEGATIVE_SLOPE = tl.constexpr(0.2)     # a plain Python global would be rejected by the compiler (not the interpreter)


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
                     B, CIN, D, H, W, COUT, OD, OH, OW,
                     SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                     PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                     KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                     LEAKY: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    k = tl.program_id(2).to(tl.int64)
    P = OD * OH * OW
    M = B * P
    R = CIN * KD * KH * KW
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)   # output positions (b, od, oh, ow)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)   # output channels
    p = offs_m % P
    b = offs_m // P
    ow = p % OW
    oh = (p // OW) % OH
    od = p // (OW * OH)
    x_k = x_ptr + k * B * CIN * D * H * W
    w_k = w_ptr + k * COUT * R
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)                        # reduction index (ci, kd, kh, kw)
        kw = offs_r % KW
        kh = (offs_r // KW) % KH
        kd = (offs_r // (KW * KH)) % KD
        ci = offs_r // (KW * KH * KD)
        i_d = od[:, None] * SD - PD + kd[None, :]
        i_h = oh[:, None] * SH - PH + kh[None, :]
        i_w = ow[:, None] * SW - PW + kw[None, :]
        a_mask = ((offs_m[:, None] < M) & (offs_r[None, :] < R) & (i_d >= 0) & (i_d < D)
                  & (i_h >= 0) & (i_h < H) & (i_w >= 0) & (i_w < W))
        a_off = (((b[:, None] * CIN + ci[None, :]) * D + i_d) * H + i_h) * W + i_w
        a = tl.load(x_k + a_off, mask=a_mask, other=0.0).to(tl.float32)
        w_mask = (offs_r[:, None] < R) & (offs_n[None, :] < COUT)
        w = tl.load(w_k + offs_n[None, :] * R + offs_r[:, None], mask=w_mask, other=0.0).to(tl.float32)
        acc = mma(a, w, acc, PRECISION)
    acc += tl.load(b_ptr + k * COUT + offs_n, mask=offs_n < COUT, other=0.0)[None, :]
    if LEAKY:
        acc = tl.where(acc > 0, acc, acc * NEGATIVE_SLOPE)
    y_off = (b[:, None] * COUT + offs_n[None, :]) * P + p[:, None]
    y_mask = (offs_m[:, None] < M) & (offs_n[None, :] < COUT)
    tl.store(y_ptr + k * B * COUT * P + y_off, cast_for_store(acc, y_ptr.dtype.element_ty), mask=y_mask)


@triton.jit
def _tap_range(i, ok, P, r, S: tl.constexpr, J: tl.constexpr, O):
    """(first j, count) of the taps kk = r + S * j (j < J) that feed an output o = (i + P - kk) / S in [0, O) for
    at least one valid row i of the tile: the tile's tap box along one dimension. i + P - r >= 0 is a multiple of
    S for every i of the residue class, so the divisions are exact."""
    i_min = tl.min(tl.where(ok, i, 1 << 30), axis=0)
    i_max = tl.max(tl.where(ok, i, -S), axis=0)
    lo = tl.maximum((i_min + P - r) // S - (O - 1), 0)
    hi = tl.minimum((i_max + P - r) // S, J - 1)
    return lo, tl.maximum(hi - lo + 1, 0)


@triton.jit
def _conv_dgrad_kernel(dy_ptr, y_ptr, w_ptr, dx_ptr,
                       B, CIN, D, H, W, COUT, OD, OH, OW,
                       SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                       PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                       KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                       LEAKY: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    # Sub-pixel form: a program takes input positions of one residue class (id % SD, ih % SH, iw % SW); in a
    # class exactly the taps kd = rd + SD * jd (etc.) fed each position, so no reduction step is spent on taps
    # that a stride skips. Rows run position-major, batch fastest, so a tile holds few positions, and its
    # reduction visits only its tap box (_tap_range): the border taps whose output is out of range for every
    # row are not executed either (they are most taps when the output is small: D_V conv3, 7 -> 4 in depth).
    JD = (KD + SD - 1) // SD                                       # taps per class, per dimension (constexpr)
    JH = (KH + SH - 1) // SH
    JW = (KW + SW - 1) // SW
    k = tl.program_id(2).to(tl.int64)
    cls = tl.program_id(0) % (SD * SH * SW)
    c_d = cls // (SH * SW)
    c_h = (cls // SW) % SH
    c_w = cls % SW
    r_d = (c_d + PD) % SD                                          # first tap of this class, per dimension
    r_h = (c_h + PH) % SH
    r_w = (c_w + PW) % SW
    CD = (D + SD - 1) // SD                                        # positions per class (at most)
    CH = (H + SH - 1) // SH
    CW = (W + SW - 1) // SW
    MC = B * CD * CH * CW
    KVOL = KD * KH * KW
    offs_m = (tl.program_id(0) // (SD * SH * SW)) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)   # input channels
    b = offs_m % B                                                 # rows (u_d, u_h, u_w, b)
    u_w = (offs_m // B) % CW
    u_h = (offs_m // (B * CW)) % CH
    u_d = offs_m // (B * CW * CH)
    i_d = c_d + SD * u_d
    i_h = c_h + SH * u_h
    i_w = c_w + SW * u_w
    m_ok = (offs_m < MC) & (i_d < D) & (i_h < H) & (i_w < W)
    lo_d, n_d = _tap_range(i_d, m_ok, PD, r_d, SD, JD, OD)
    lo_h, n_h = _tap_range(i_h, m_ok, PH, r_h, SH, JH, OH)
    lo_w, n_w = _tap_range(i_w, m_ok, PW, r_w, SW, JW, OW)
    R = n_d * n_h * n_w * COUT
    dy_k = dy_ptr + k * B * COUT * OD * OH * OW
    w_k = w_ptr + k * COUT * CIN * KVOL
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)                        # reduction index (tap in the box, co)
        co = offs_r % COUT
        t = offs_r // COUT
        kw = r_w + SW * (lo_w + t % n_w)
        kh = r_h + SH * (lo_h + (t // n_w) % n_h)
        kd = r_d + SD * (lo_d + t // (n_w * n_h))
        r_ok = (offs_r < R) & (kd < KD) & (kh < KH) & (kw < KW)
        o_d = (i_d[:, None] + PD - kd[None, :]) // SD              # exact: the class fixes the residue
        o_h = (i_h[:, None] + PH - kh[None, :]) // SH
        o_w = (i_w[:, None] + PW - kw[None, :]) // SW
        a_mask = (m_ok[:, None] & r_ok[None, :] & (i_d[:, None] + PD >= kd[None, :]) & (o_d < OD)
                  & (i_h[:, None] + PH >= kh[None, :]) & (o_h < OH)
                  & (i_w[:, None] + PW >= kw[None, :]) & (o_w < OW))
        a_off = (b[:, None] * COUT + co[None, :]) * (OD * OH * OW) + (o_d * OH + o_h) * OW + o_w
        a = tl.load(dy_k + a_off, mask=a_mask, other=0.0).to(tl.float32)
        if LEAKY:                                                  # dL/dpre from dL/dy and the sign of y
            y = tl.load(y_ptr + k * B * COUT * OD * OH * OW + a_off, mask=a_mask, other=0.0).to(tl.float32)
            a = tl.where(y > 0, a, a * NEGATIVE_SLOPE)
        w_off = (co[:, None] * CIN + offs_n[None, :]) * KVOL + ((kd * KH + kh) * KW + kw)[:, None]
        w_mask = r_ok[:, None] & (offs_n[None, :] < CIN)
        w = tl.load(w_k + w_off, mask=w_mask, other=0.0).to(tl.float32)
        acc = mma(a, w, acc, PRECISION)
    dx_off = ((b[:, None] * CIN + offs_n[None, :]) * D + i_d[:, None]) * (H * W) + (i_h * W + i_w)[:, None]
    dx_mask = m_ok[:, None] & (offs_n[None, :] < CIN)
    tl.store(dx_ptr + k * B * CIN * D * H * W + dx_off, cast_for_store(acc, dx_ptr.dtype.element_ty), mask=dx_mask)


@triton.jit
def _conv_wgrad_kernel(dy_ptr, y_ptr, x_ptr, dw_ptr, db_ptr,
                       B, CIN, D, H, W, COUT, OD, OH, OW,
                       SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                       PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                       KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                       LEAKY: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    k = tl.program_id(2).to(tl.int64)
    KVOL = KD * KH * KW
    P = OD * OH * OW
    N = CIN * KVOL
    Q = B * P
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)   # output channels
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)   # weight columns (ci, kd, kh, kw)
    kw = offs_n % KW
    kh = (offs_n // KW) % KH
    kd = (offs_n // (KW * KH)) % KD
    ci = offs_n // KVOL
    dy_k = dy_ptr + k * B * COUT * P
    x_k = x_ptr + k * B * CIN * D * H * W
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for q0 in range(0, Q, BLOCK_R):
        offs_q = q0 + tl.arange(0, BLOCK_R)                        # reduction index (b, od, oh, ow)
        p = offs_q % P
        b = offs_q // P
        ow = p % OW
        oh = (p // OW) % OH
        od = p // (OW * OH)
        g_mask = (offs_m[:, None] < COUT) & (offs_q[None, :] < Q)
        g_off = (b[None, :] * COUT + offs_m[:, None]) * P + p[None, :]
        g = tl.load(dy_k + g_off, mask=g_mask, other=0.0).to(tl.float32)
        if LEAKY:                                                  # dL/dpre from dL/dy and the sign of y
            y = tl.load(y_ptr + k * B * COUT * P + g_off, mask=g_mask, other=0.0).to(tl.float32)
            g = tl.where(y > 0, g, g * NEGATIVE_SLOPE)
        i_d = od[:, None] * SD - PD + kd[None, :]
        i_h = oh[:, None] * SH - PH + kh[None, :]
        i_w = ow[:, None] * SW - PW + kw[None, :]
        x_mask = ((offs_q[:, None] < Q) & (offs_n[None, :] < N) & (i_d >= 0) & (i_d < D)
                  & (i_h >= 0) & (i_h < H) & (i_w >= 0) & (i_w < W))
        x_off = (((b[:, None] * CIN + ci[None, :]) * D + i_d) * H + i_h) * W + i_w
        xs = tl.load(x_k + x_off, mask=x_mask, other=0.0).to(tl.float32)
        acc = mma(g, xs, acc, PRECISION)
        bias_acc += tl.sum(g, axis=1)
    dw_mask = (offs_m[:, None] < COUT) & (offs_n[None, :] < N)
    tl.store(dw_ptr + k * COUT * N + offs_m[:, None] * N + offs_n[None, :], acc, mask=dw_mask)
    bias_rows = tl.where(tl.program_id(1) == 0, COUT, 0)          # only the first column block writes db
    tl.store(db_ptr + k * COUT + offs_m, bias_acc, mask=offs_m < bias_rows)


def _tuple(v, n):
    v = (v,) * n if isinstance(v, int) else tuple(v)
    if len(v) != n:
        raise ValueError(f"batched conv: expected {n} strides/paddings, got {v}")
    return v


def output_shape(in_spatial, kernel, stride, padding):
    return tuple((i + 2 * p - k) // s + 1 for i, k, s, p in zip(in_spatial, kernel, stride, padding))


def _geometry(x_shape, w_shape, stride, padding):
    """Sizes and constexprs of the 3D problem; a 2D problem (5-D shapes) becomes D = kd = 1, stride/pad (1, 0)."""
    if len(x_shape) not in (5, 6) or len(w_shape) != len(x_shape):
        raise ValueError(f"batched conv: expected x [K,B,C,(D,)H,W] and w [K,Cout,Cin,(kd,)kh,kw] of matching "
                         f"rank, got {tuple(x_shape)} and {tuple(w_shape)}")
    dims = len(x_shape) - 3
    stride, padding = _tuple(stride, dims), _tuple(padding, dims)
    if dims == 2:
        x_shape, w_shape = (*x_shape[:3], 1, *x_shape[3:]), (*w_shape[:3], 1, *w_shape[3:])
        stride, padding = (1, *stride), (0, *padding)
    K, B, CIN, D, H, W = x_shape
    if w_shape[0] != K or w_shape[2] != CIN:
        raise ValueError(f"batched conv: weight {tuple(w_shape)} does not match input {tuple(x_shape)} "
                         f"(need [K={K}, Cout, Cin={CIN}, ...])")
    COUT = w_shape[1]
    OD, OH, OW = output_shape((D, H, W), w_shape[3:], stride, padding)
    if min(OD, OH, OW) < 1:
        raise ValueError(f"batched conv: input {tuple(x_shape[3:])} is too small for kernel {tuple(w_shape[3:])} "
                         f"with padding {padding}")
    consts = dict(SD=stride[0], SH=stride[1], SW=stride[2], PD=padding[0], PH=padding[1], PW=padding[2],
                  KD=w_shape[3], KH=w_shape[4], KW=w_shape[5])
    return (K, B, CIN, D, H, W, COUT, OD, OH, OW), consts


# GPU tiles: (BLOCK_M, BLOCK_N, BLOCK_R, warps) per kernel. 64x64 output tiles with 32-deep reduction steps; the
# backward kernels gather with 3-D index arithmetic on [BLOCK_M, BLOCK_R] tiles, which at 4 warps spilled registers
# on sm_80/sm_90 (the compile gate measured 32-72 bytes; vidgan kernels shows it), so they run 8 warps: half the
# accumulator and index registers per thread. A dimension of 1 (the one projected input channel; the logit layer's
# output channel before kernels/logit.py) takes a block of 16, tl.dot's minimum; any other the full tile (common.tile).
# The dgrad's tap box (runtime loop bounds and tap decoding) costs registers: 120-215 at paper/tf32 (sm_80/90, no
# spills; was 76-196), 1 CTA of 8 warps per SM on the heavy layers. A tap-outer loop with Cout inner spilled.
GPU_TILES = {"forward": (64, 64, 32, 4), "dgrad": (64, 64, 32, 8), "wgrad": (64, 64, 32, 8)}
INTERPRETER_TILE_CAPS = (256, 64, 128)    # the interpreter: same code, fewer and larger numpy steps
# Candidates kernels/autotune.py times on a GPU, per layer; the first is GPU_TILES (what runs untuned). Each
# compiles without spills on sm_80/sm_90 at the paper shapes in tf32 (the compile gate checks; 2026-12-04: forward
# 150-250 registers, dgrad 128-186, wgrad 70-228). Rejected for spills there: dgrad (32, 64, 32, 4), (64, 32, 32, 4),
# (128, 64, 32, 8); forward and wgrad (32, 64, 64, 4). (64, 128, 32, 8) dgrad/wgrad sit at the 255-register cap.
CANDIDATES = {"forward": (GPU_TILES["forward"], (128, 64, 32, 8), (32, 64, 32, 4)),
              "dgrad": (GPU_TILES["dgrad"], (32, 64, 32, 8), (64, 64, 16, 8)),
              "wgrad": (GPU_TILES["wgrad"], (128, 64, 32, 8), (32, 64, 32, 8))}


def _blocks(candidate, m: int, n: int, r: int, gpu: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_R, num_warps) of a candidate tile for an M x N output with an R-long reduction."""
    *caps, warps = candidate if gpu else (*INTERPRETER_TILE_CAPS, 4)
    return (*(tile(v, cap, gpu) for v, cap in zip((m, n, r), caps)), warps)


STORAGE_DTYPES = (torch.float32, torch.bfloat16)     # activations, weights read, input gradients


def _stored(**tensors):
    """The tensors, contiguous; each must be float32 or bfloat16 (what the kernels read and convert to fp32)."""
    for name, t in tensors.items():
        if t.dtype not in STORAGE_DTYPES:
            raise ValueError(f"batched conv: {name} must be float32 or bfloat16, got {t.dtype}")
    return [t.contiguous() for t in tensors.values()]


def _fp32(**tensors):
    """The tensors, contiguous; each must be float32 (biases: the fp32 master values)."""
    for name, t in tensors.items():
        if t.dtype != torch.float32:
            raise ValueError(f"batched conv: {name} must be float32, got {t.dtype}")
    return [t.contiguous() for t in tensors.values()]


def _out_dtype(dtype):
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"batched conv: out_dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    return dtype


def _launch(name: str, kernel, grid_of, args, dims, consts, leaky, precision, tiles, mnr):
    """Launch `kernel` at the tile autotune.choose picks for this layer (fixed, forced or timed on a GPU)."""
    gpu = gpu_tiles(tiles)

    def launch(candidate):
        BM, BN, BR, warps = _blocks(candidate, *mnr, gpu)
        kernel[grid_of(BM, BN)](*args, *dims, **consts, LEAKY=leaky, PRECISION=dot_precision(precision),
                                BLOCK_M=BM, BLOCK_N=BN, BLOCK_R=BR, num_warps=warps)

    problem = (dims, tuple(consts.values()), leaky, tuple(str(a.dtype) for a in args))
    launch(choose(name, problem, precision, CANDIDATES[name], launch, args[0].device, gpu))


def _logit_args(dims, consts):
    """(x spatial, kernel, padding) of a logit layer, for kernels/logit.py."""
    return dims[2:5], (consts["KD"], consts["KH"], consts["KW"]), (consts["PD"], consts["PH"], consts["PW"])


def conv_forward(x, w, bias, stride, padding, leaky: bool, precision: str = "fp32",
                 tiles: str = "auto", out_dtype=torch.float32) -> torch.Tensor:
    """y[k] = conv(x[k], w[k]) + bias[k], then LeakyReLU(0.2) if `leaky`. 2D or 3D; returns y [K, B, Cout, ...]
    in out_dtype."""
    (K, B, CIN, D, H, W, COUT, OD, OH, OW), consts = _geometry(x.shape, w.shape, stride, padding)
    if tuple(bias.shape) != (K, COUT):
        raise ValueError(f"batched conv: bias {tuple(bias.shape)} should be [K={K}, Cout={COUT}]")
    (x, w), (bias,) = _stored(x=x, w=w), _fp32(bias=bias)
    dims = (B, CIN, D, H, W, COUT, OD, OH, OW)
    if is_logit_layer(COUT, (OD, OH, OW)):
        y = logit_forward(x, w, bias, *_logit_args(dims, consts), leaky, precision, tiles,
                          out_dtype=_out_dtype(out_dtype)).view(K, B, 1, 1, 1, 1)
        return y.view(K, B, 1, 1, 1) if x.dim() == 5 else y
    y = torch.empty((K, B, COUT, OD, OH, OW), device=x.device, dtype=_out_dtype(out_dtype))
    M, R = B * OD * OH * OW, CIN * consts["KD"] * consts["KH"] * consts["KW"]
    _launch("forward", _conv_fwd_kernel, lambda BM, BN: (triton.cdiv(M, BM), triton.cdiv(COUT, BN), K),
            (x, w, bias, y), dims, consts, leaky, precision, tiles, (M, COUT, R))
    return y.view(K, B, COUT, OH, OW) if x.dim() == 5 else y


def conv_input_grad(dy, w, x_shape, stride, padding, y=None, precision: str = "fp32", tiles: str = "auto",
                    out_dtype=torch.float32) -> torch.Tensor:
    """dx (shape x_shape, in out_dtype) of y = act(conv(x, w) + b) given dy = dL/dy [K, B, Cout, ...]; pass the
    forward's output y when act is LeakyReLU(0.2) (its derivative is read from the sign of y), None when act is
    identity."""
    (K, B, CIN, D, H, W, COUT, OD, OH, OW), consts = _geometry(x_shape, w.shape, stride, padding)
    if dy.numel() != K * B * COUT * OD * OH * OW:
        raise ValueError(f"batched conv dgrad: dy {tuple(dy.shape)} does not match the output of x {tuple(x_shape)}")
    leaky = y is not None
    dy, w, y = _stored(dy=dy, w=w, y=y if leaky else dy)      # y is not read when not leaky
    dims = (B, CIN, D, H, W, COUT, OD, OH, OW)
    if is_logit_layer(COUT, (OD, OH, OW)):
        return logit_input_grad(dy, w, y if leaky else None, x_shape, *_logit_args(dims, consts), precision, tiles,
                                out_dtype=_out_dtype(out_dtype))
    dx = torch.empty(x_shape, device=dy.device, dtype=_out_dtype(out_dtype))
    classes = consts["SD"] * consts["SH"] * consts["SW"]
    per_class = B * triton.cdiv(D, consts["SD"]) * triton.cdiv(H, consts["SH"]) * triton.cdiv(W, consts["SW"])
    taps = triton.cdiv(consts["KD"], consts["SD"]) * triton.cdiv(consts["KH"], consts["SH"]) * \
        triton.cdiv(consts["KW"], consts["SW"])
    _launch("dgrad", _conv_dgrad_kernel,
            lambda BM, BN: (classes * triton.cdiv(per_class, BM), triton.cdiv(CIN, BN), K),
            (dy, y, w, dx), dims, consts, leaky, precision, tiles, (per_class, CIN, COUT * taps))
    return dx


def conv_weight_grad(dy, x, w_shape, stride, padding, y=None, precision: str = "fp32", tiles: str = "auto"):
    """(dw of shape w_shape, db [K, Cout]), both float32, of y = act(conv(x, w) + b) given dy = dL/dy
    [K, B, Cout, ...]; y as in conv_input_grad."""
    (K, B, CIN, D, H, W, COUT, OD, OH, OW), consts = _geometry(x.shape, w_shape, stride, padding)
    if dy.numel() != K * B * COUT * OD * OH * OW:
        raise ValueError(f"batched conv wgrad: dy {tuple(dy.shape)} does not match the output of x {tuple(x.shape)}")
    leaky = y is not None
    dy, x, y = _stored(dy=dy, x=x, y=y if leaky else dy)      # y is not read when not leaky
    dims = (B, CIN, D, H, W, COUT, OD, OH, OW)
    if is_logit_layer(COUT, (OD, OH, OW)):
        return logit_weight_grad(dy, x, y if leaky else None, w_shape, *_logit_args(dims, consts), precision, tiles)
    N = CIN * consts["KD"] * consts["KH"] * consts["KW"]
    dw = torch.empty(w_shape, device=x.device, dtype=torch.float32)
    db = torch.empty((K, COUT), device=x.device, dtype=torch.float32)
    _launch("wgrad", _conv_wgrad_kernel, lambda BM, BN: (triton.cdiv(COUT, BM), triton.cdiv(N, BN), K),
            (dy, y, x, dw, db), dims, consts, leaky, precision, tiles, (COUT, N, B * OD * OH * OW))
    return dw, db
