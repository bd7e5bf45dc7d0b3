"""Triton kernels of the frozen frame generator G_F (batch norm already folded into weights and biases).

One launch per layer over all M frames. Activations are NHWC ([M, H, W, C] contiguous) so that every tile
load and store is contiguous along channels; the module converts at the edges (the dense layer's output
columns are pre-permuted so it writes NHWC [M, 2, 2, c0] directly, and the 1-channel frames are the same
memory in NHWC and NCHW).

Forward
    dense            y = relu(x @ w + b)                          a plain GEMM [M, z] x [z, 4*c0]
    conv_transpose   k4 s2, padding 1 (2 -> 4 -> 8 -> 16) + bias + ReLU, as 4 sub-pixel phases: output pixel
                     (2a + py, 2b + px) is a 2x2 convolution of the input around (a, b), so each phase is an
                     implicit GEMM with rows = M*(OH/2)*(OW/2), N = Cout, reduction = 4 taps * Cin; the
                     phase is the third grid axis
    conv_transpose_tanh   the last layer, k4 s2 padding 2 (16 -> 30), Cout = 1, + tanh: the same phases, but
                     GEMV-shaped (N = 1), so a row-block times a weight vector reduced with tl.sum
Backward (input gradient only; the frozen weights need none)
    conv_transpose_input_grad   the input gradient of a transposed convolution is a regular stride-2
                     convolution of the output gradient with the same weights: an implicit GEMM with
                     rows = M*H*W input positions, N = Cin, reduction = 16 taps * Cout (gather form, no
                     atomics). Optional fused prologue tanh' = 1 - y^2 (last layer) and fused epilogue ReLU
                     mask (saved activation > 0) of the layer below. Where the output tiles are fewer than the
                     SMs (the first layer: 32 tiles at paper size), the reduction is split (fp32 partials).
    dense (again)    grad_codes = grad @ w_fc

precision: "fp32" (exact products), "tf32" or "bf16" (tensor cores, fp32 accumulation): kernels/common.py.
Storage: inputs, weights, saved activations and output gradients may each be float32 or bfloat16 (read, then
computed in fp32 registers); each op writes its output in `out_dtype` (float32 or bfloat16). Biases are float32.
Launch wrappers only: no autograd (see vidgan_fast.fast.frozen_generator).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vidgan_fast.kernels.common import (cast_for_store, column_halves, dot_precision, mma, target_family,
                                       target_sms)
from vidgan_fast.kernels.tiles import generator_tile


def _tiles(device, precision: str, *operands: torch.Tensor) -> dict:
    """BLOCK_M, MAX_BLOCK_N, MAX_BLOCK_K, NUM_WARPS, NUM_STAGES of the launches on `device` (kernels/tiles.py), for
    the widest of the operands as stored (an fp32 operand of a bf16 product takes the fp32 tile's shared memory)."""
    t = generator_tile(target_family(device), precision, max(o.element_size() for o in operands))
    return dict(BLOCK_M=t.block_m, MAX_BLOCK_N=t.block_n, MAX_BLOCK_K=t.block_k, NUM_WARPS=t.warps,
                NUM_STAGES=t.stages)


def tile(n: int, cap: int) -> int:
    """A power-of-two block for a dimension of n: `cap`, or less for a small n (at least 16, tl.dot's minimum)."""
    return max(16, min(cap, triton.next_power_of_2(n)))


STORAGE_DTYPES = (torch.float32, torch.bfloat16)


def _check(t: torch.Tensor, name: str, dims: int) -> None:
    if t.dim() != dims or t.dtype not in STORAGE_DTYPES or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous float32 or bfloat16 tensor with {dims} dims, "
                         f"got {tuple(t.shape)} {t.dtype} contiguous={t.is_contiguous()}")
    if t.numel() >= 2 ** 31:
        raise ValueError(f"{name}: {t.numel()} elements is too many for 32-bit offsets; split the batch")


def _check_dtypes(op: str, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype) -> None:
    """Weights are read as float32 or bfloat16, biases as float32; outputs are float32 or bfloat16."""
    if weight.dtype not in STORAGE_DTYPES:
        raise ValueError(f"{op}: weight must be float32 or bfloat16, got {weight.dtype}")
    if bias is not None and bias.dtype != torch.float32:
        raise ValueError(f"{op}: bias must be float32, got {bias.dtype}")
    if out_dtype not in STORAGE_DTYPES:
        raise ValueError(f"{op}: out_dtype must be torch.float32 or torch.bfloat16, got {out_dtype}")


# ---------------------------------------------------------------------------------------------- dense

@triton.jit
def _dense_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K, K_SPLIT,
                  stride_am, stride_ak, stride_bk, stride_bn,
                  HAS_BIAS: tl.constexpr, RELU: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # program axis 2: split s sums k in [s * K_SPLIT, (s + 1) * K_SPLIT) into its own slab c_ptr[s] (fp32
    # partials, summed in a fixed order by the wrapper; no bias or ReLU then)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    split = tl.program_id(2)
    k_end = tl.minimum((split + 1) * K_SPLIT, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(split * K_SPLIT, k_end, BLOCK_K):
        k = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * stride_am + k[None, :] * stride_ak,
                    mask=(rm[:, None] < M) & (k[None, :] < k_end), other=0.0)
        b = tl.load(b_ptr + k[:, None] * stride_bk + rn[None, :] * stride_bn,
                    mask=(k[:, None] < k_end) & (rn[None, :] < N), other=0.0)
        acc = mma(a, b, acc, PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    c = c_ptr + split.to(tl.int64) * M * N + rm[:, None] * N + rn[None, :]
    tl.store(c, cast_for_store(acc, c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def dense(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False,
          precision: str = "fp32", out_dtype=torch.float32) -> torch.Tensor:
    """x [M, K] @ w [K, N] (+ bias [N]) (then ReLU) -> [M, N] in out_dtype. x and w may be strided views (e.g. a
    transpose). A long reduction over few output tiles (the code gradient: 240 x 100 from 4096) is split over
    several programs (fp32 partials summed in a fixed order: deterministic) so that the GPU's SMs share it."""
    if x.dim() != 2 or x.dtype not in STORAGE_DTYPES:
        raise ValueError(f"dense input: expected a 2-D float32 or bfloat16 tensor, got {tuple(x.shape)} {x.dtype}")
    if w.dim() != 2 or w.shape[0] != x.shape[1]:
        raise ValueError(f"dense: weight {tuple(w.shape)} does not fit input {tuple(x.shape)}")
    _check_dtypes("dense", w, bias, out_dtype)
    M, K = x.shape
    N = w.shape[1]
    t = _tiles(x.device, precision, x, w)
    # at most 128 columns: converting an fp32 operand for bf16 products in registers spilled 496 bytes at 256
    # (sm_90); the dense launches sit at the launch minimum either way (the lab's per-launch model)
    bm, bn, bk = tile(M, t["BLOCK_M"]), tile(N, min(t["MAX_BLOCK_N"], 128)), tile(K, t["MAX_BLOCK_K"])
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    splits = 1 if bias is not None or relu else max(1, min(target_sms(x.device) // tiles, K // (2 * bk)))
    k_split = triton.cdiv(triton.cdiv(K, splits), bk) * bk
    splits = triton.cdiv(K, k_split)
    out = torch.empty(M, N, device=x.device, dtype=out_dtype) if splits == 1 else \
        torch.empty(splits, M, N, device=x.device, dtype=torch.float32)
    _dense_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn), splits)](
        x, w, bias if bias is not None else out, out, M, N, K, k_split, x.stride(0), x.stride(1), w.stride(0),
        w.stride(1), HAS_BIAS=bias is not None, RELU=relu, PRECISION=dot_precision(precision), BLOCK_M=bm,
        BLOCK_N=bn, BLOCK_K=bk, num_warps=t["NUM_WARPS"], num_stages=t["NUM_STAGES"])
    return out if splits == 1 else out.sum(0).to(out_dtype)


# ------------------------------------------------------------------------- transposed conv, forward

def pack_forward_weight(w: torch.Tensor, pad: int) -> torch.Tensor:
    """ConvTranspose2d weight [Cin, Cout, 4, 4] -> per-phase GEMM operands [4, 4 * Cin, Cout].

    Phase (py, px) = output pixel parity. With stride 2, output row 2a + py takes kernel rows
    ky = ry + 2 * ty (ry = (py + pad) % 2, ty in {0, 1}) from input row a + (py + pad - ry) // 2 - ty.
    Reduction index = (ty * 2 + tx) * Cin + ci.
    """
    phases = []
    for py in (0, 1):
        for px in (0, 1):
            ry, rx = (py + pad) % 2, (px + pad) % 2
            phases.append(torch.cat([w[:, :, ry + 2 * ty, rx + 2 * tx] for ty in (0, 1) for tx in (0, 1)]))
    return torch.stack(phases).contiguous()


@triton.jit
def _phase_rows(pid_m, phase, PAD: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, BLOCK_M: tl.constexpr):
    """Rows of one phase tile: frame m, phase-grid position (a, b), and the input offset (dy, dx)."""
    HA: tl.constexpr = OH // 2
    WA: tl.constexpr = OW // 2
    py = phase // 2
    px = phase % 2
    dy = (py + PAD - (py + PAD) % 2) // 2
    dx = (px + PAD - (px + PAD) % 2) // 2
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m = rows // (HA * WA)
    a = (rows // WA) % HA
    b = rows % WA
    return rows, m, a, b, py, px, dy, dx


@triton.jit
def _gather_input(x_ptr, k, rows, m, a, b, dy, dx, M,
                  H: tl.constexpr, W: tl.constexpr, CIN, HA: tl.constexpr, WA: tl.constexpr):
    """The [rows, k] tile of a phase's implicit-GEMM input: x[m, a + dy - ty, b + dx - tx, ci]."""
    tap = k // CIN
    ci = k % CIN
    iy = a[:, None] + dy - (tap // 2)[None, :]
    ix = b[:, None] + dx - (tap % 2)[None, :]
    ok = ((rows[:, None] < M * HA * WA) & (k[None, :] < 4 * CIN)
          & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W))
    return tl.load(x_ptr + ((m[:, None] * H + iy) * W + ix) * CIN + ci[None, :], mask=ok, other=0.0)


@triton.jit
def _conv_transpose_relu_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, M,
                                H: tl.constexpr, W: tl.constexpr, CIN, COUT,
                                PAD: tl.constexpr, PRECISION: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    OH: tl.constexpr = 2 * H + 2 - 2 * PAD
    OW: tl.constexpr = 2 * W + 2 - 2 * PAD
    phase = tl.program_id(2)
    rows, m, a, b, py, px, dy, dx = _phase_rows(tl.program_id(0), phase, PAD, OH, OW, BLOCK_M)
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    w_phase = w_ptr + phase * 4 * CIN * COUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, 4 * CIN, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        xa = _gather_input(x_ptr, k, rows, m, a, b, dy, dx, M, H, W, CIN, OH // 2, OW // 2)
        wb = tl.load(w_phase + k[:, None] * COUT + co[None, :],
                     mask=(k[:, None] < 4 * CIN) & (co[None, :] < COUT), other=0.0)
        acc = mma(xa, wb, acc, PRECISION)
    acc = tl.maximum(acc + tl.load(bias_ptr + co, mask=co < COUT, other=0.0)[None, :], 0.0)
    oy = 2 * a + py
    ox = 2 * b + px
    out = ((m[:, None] * OH + oy[:, None]) * OW + ox[:, None]) * COUT + co[None, :]
    tl.store(y_ptr + out, cast_for_store(acc, y_ptr.dtype.element_ty),
             mask=(rows[:, None] < M * (OH // 2) * (OW // 2)) & (co[None, :] < COUT))


def _out_size(h: int, pad: int) -> int:
    return 2 * h + 2 - 2 * pad


def conv_transpose_relu(x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor, pad: int,
                        precision: str = "fp32", out_dtype=torch.float32) -> torch.Tensor:
    """relu(conv_transpose2d(x, w, bias, stride=2, padding=pad)), k4; NHWC x [M, H, W, Cin] -> NHWC out
    (out_dtype)."""
    _check(x, "conv_transpose input", 4)
    _check_dtypes("conv_transpose", w_packed, bias, out_dtype)
    M, H, W, cin = x.shape
    if w_packed.shape[:2] != (4, 4 * cin) or bias.shape != (w_packed.shape[2],):
        raise ValueError(f"conv_transpose: packed weight {tuple(w_packed.shape)} / bias {tuple(bias.shape)} "
                         f"do not fit input with {cin} channels")
    cout = w_packed.shape[2]
    OH, OW = _out_size(H, pad), _out_size(W, pad)
    y = torch.empty(M, OH, OW, cout, device=x.device, dtype=out_dtype)
    _check(y, "conv_transpose output", 4)
    t = _tiles(x.device, precision, x, w_packed)
    bn, bk = tile(cout, t["MAX_BLOCK_N"]), tile(4 * cin, t["MAX_BLOCK_K"])
    grid = (triton.cdiv(M * (OH // 2) * (OW // 2), t["BLOCK_M"]), triton.cdiv(cout, bn), 4)
    _conv_transpose_relu_kernel[grid](x, w_packed, bias, y, M, H=H, W=W, CIN=cin, COUT=cout, PAD=pad,
                                      PRECISION=dot_precision(precision), BLOCK_M=t["BLOCK_M"], BLOCK_N=bn,
                                      BLOCK_K=bk, num_warps=t["NUM_WARPS"], num_stages=t["NUM_STAGES"])
    return y


def pack_tap_weight(w: torch.Tensor) -> torch.Tensor:
    """ConvTranspose2d weight [Cin, 1, 4, 4] of the last layer -> [16 taps, Cin], tap = ky * 4 + kx."""
    return w[:, 0].permute(1, 2, 0).reshape(16, w.shape[0]).contiguous()


def conv_transpose_tanh(x: torch.Tensor, w_taps: torch.Tensor, bias: torch.Tensor, pad: int,
                        precision: str = "fp32") -> torch.Tensor:
    """tanh(conv_transpose2d(x, w, bias, stride=2, padding=pad)), k4, Cout = 1; NHWC x [M, H, W, Cin] -> float32
    [M, OH, OW]. Two launches: e = x @ w_taps^T (every input position's 16 tap products, a GEMM on the tensor cores,
    kernels/conv.py's forward as a 1x1 convolution) and the tap sums with bias and tanh (kernels/col2im.py): x is read
    once, where a gather per output position would read each input position 16 / 4 times per phase."""
    from vidgan_fast.kernels.col2im import col2im
    from vidgan_fast.kernels.conv import conv_forward
    _check(x, "conv_transpose_tanh input", 4)
    _check_dtypes("conv_transpose_tanh", w_taps, bias, torch.float32)
    M, H, W, cin = x.shape
    if w_taps.shape != (16, cin) or bias.shape != (1,):
        raise ValueError(f"conv_transpose_tanh: tap weight {tuple(w_taps.shape)} / bias {tuple(bias.shape)} "
                         f"do not fit input with {cin} channels and 1 output channel")
    OH, OW = _out_size(H, pad), _out_size(W, pad)
    e = conv_forward(x.view(1, M * H * W, 1, 1, 1, cin), w_taps.view(1, 16, 1, 1, 1, cin), None, (1, 1, 1),
                     (1, 1, 1), (0, 0, 0), False, precision, torch.float32, transpose_out=True)   # e[tap, m, position]
    y = torch.empty(M, OH, OW, device=x.device, dtype=torch.float32)
    col2im(e, (0, 0, M * H * W, H * W, 1), y.view(1, M, 1, OH, OW), (1, OH, OW), (1, H, W), (1, 4, 4), (1, 2, 2),
           (0, pad, pad), bias=bias, tanh_out=True)
    return y


# ------------------------------------------------------------------------ transposed conv, backward

def pack_backward_weight(w: torch.Tensor) -> torch.Tensor:
    """ConvTranspose2d weight [Cin, Cout, 4, 4] -> input-gradient GEMM operand [16 * Cout, Cin],
    reduction index = (ky * 4 + kx) * Cout + co."""
    cin, cout = w.shape[:2]
    return w.permute(2, 3, 1, 0).reshape(16 * cout, cin).contiguous()


@triton.jit
def _conv_transpose_input_grad_kernel(g_ptr, y_ptr, w_ptr, h_ptr, dx_ptr, M, K_SPLIT,
                                      H: tl.constexpr, W: tl.constexpr, CIN, COUT,
                                      PAD: tl.constexpr,
                                      TANH_GRAD: tl.constexpr, RELU_MASK: tl.constexpr,
                                      PRECISION: tl.constexpr,
                                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # program axis 2: split s reduces k in [s * K_SPLIT, (s + 1) * K_SPLIT) into its own slab dx_ptr[s] (fp32
    # partials, the ReLU mask applied to each, summed in a fixed order by the wrapper)
    OH: tl.constexpr = 2 * H + 2 - 2 * PAD
    OW: tl.constexpr = 2 * W + 2 - 2 * PAD
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)       # input positions (m, iy, ix)
    m = rows // (H * W)
    iy = (rows // W) % H
    ix = rows % W
    ci = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(2)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(split * K_SPLIT, tl.minimum((split + 1) * K_SPLIT, 16 * COUT), BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        tap = k // COUT
        co = k % COUT
        oy = 2 * iy[:, None] - PAD + (tap // 4)[None, :]
        ox = 2 * ix[:, None] - PAD + (tap % 4)[None, :]
        ok = ((rows[:, None] < M * H * W) & (k[None, :] < 16 * COUT)
              & (oy >= 0) & (oy < OH) & (ox >= 0) & (ox < OW))
        off = ((m[:, None] * OH + oy) * OW + ox) * COUT + co[None, :]
        ga = tl.load(g_ptr + off, mask=ok, other=0.0).to(tl.float32)
        if TANH_GRAD:                                                # d tanh = 1 - y^2, y the saved output
            yv = tl.load(y_ptr + off, mask=ok, other=0.0).to(tl.float32)
            ga = ga * (1.0 - yv * yv)
        wb = tl.load(w_ptr + k[:, None] * CIN + ci[None, :],
                     mask=(k[:, None] < 16 * COUT) & (ci[None, :] < CIN), other=0.0)
        acc = mma(ga, wb, acc, PRECISION)
    slab = dx_ptr + split.to(tl.int64) * M * H * W * CIN
    if RELU_MASK:       # ReLU' of the layer below (saved h > 0), in two column halves (kernels/common.py)
        acc_lo, acc_hi = column_halves(acc, BLOCK_M, BLOCK_N)
        ci_lo = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _store_relu_masked(acc_lo, rows, ci_lo, M * H * W, CIN, h_ptr, slab)
        _store_relu_masked(acc_hi, rows, ci_lo + BLOCK_N // 2, M * H * W, CIN, h_ptr, slab)
    else:
        io = rows[:, None] * CIN + ci[None, :]
        tl.store(slab + io, cast_for_store(acc, dx_ptr.dtype.element_ty),
                 mask=(rows[:, None] < M * H * W) & (ci[None, :] < CIN))


@triton.jit
def _store_relu_masked(acc, rows, ci, ROWS, CIN, h_ptr, out_ptr):
    """out[rows, ci] = acc where the saved ReLU output h[rows, ci] > 0, else 0."""
    io = rows[:, None] * CIN + ci[None, :]
    io_ok = (rows[:, None] < ROWS) & (ci[None, :] < CIN)
    h = tl.load(h_ptr + io, mask=io_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + io, cast_for_store(tl.where(h > 0, acc, 0.0), out_ptr.dtype.element_ty), mask=io_ok)


def conv_transpose_input_grad(grad_out: torch.Tensor, w_packed: torch.Tensor, pad: int,
                              relu_input: torch.Tensor | None = None, tanh_out: torch.Tensor | None = None,
                              precision: str = "fp32", out_dtype=torch.float32, sms: int | None = None
                              ) -> torch.Tensor:
    """Gradient (in out_dtype) of a k4 s2 transposed convolution with respect to its NHWC input [M, H, W, Cin].
    When the output tiles alone would leave SMs idle (`sms`: the GPU's; default the device's), the reduction is
    split over several programs (fp32 partials summed in a fixed order: deterministic), as in dense().

    grad_out: NHWC [M, OH, OW, Cout], the gradient of the layer's output (of tanh's output when tanh_out, the
    saved tanh output, is given: then 1 - y^2 is applied on the fly). relu_input: the saved NHWC input h of
    this layer, itself a ReLU output; the result is then masked by h > 0, i.e. it is the gradient with respect
    to the pre-activation of the layer below.
    """
    _check(grad_out, "conv_transpose_input_grad grad_out", 4)
    _check_dtypes("conv_transpose_input_grad", w_packed, None, out_dtype)
    M, OH, OW, cout = grad_out.shape
    cin = w_packed.shape[1]
    if w_packed.shape != (16 * cout, cin):
        raise ValueError(f"conv_transpose_input_grad: packed weight {tuple(w_packed.shape)} does not fit "
                         f"an output gradient with {cout} channels")
    H, W = (OH + 2 * pad - 2) // 2, (OW + 2 * pad - 2) // 2
    for t, name in ((relu_input, "relu_input"), (tanh_out, "tanh_out")):
        want = (M, H, W, cin) if name == "relu_input" else tuple(grad_out.shape)
        if t is not None and (tuple(t.shape) != want or not t.is_contiguous() or t.dtype not in STORAGE_DTYPES):
            raise ValueError(f"conv_transpose_input_grad: {name} {tuple(t.shape)} {t.dtype} should be contiguous "
                             f"{want} float32 or bfloat16")
    t = _tiles(grad_out.device, precision, grad_out, w_packed)
    bn, bk = tile(cin, t["MAX_BLOCK_N"]), tile(16 * cout, t["MAX_BLOCK_K"])
    tiles = triton.cdiv(M * H * W, t["BLOCK_M"]) * triton.cdiv(cin, bn)
    splits = max(1, min((sms or target_sms(grad_out.device)) // tiles, 16 * cout // (8 * bk)))
    k_split = triton.cdiv(triton.cdiv(16 * cout, splits), bk) * bk
    splits = triton.cdiv(16 * cout, k_split)
    dx = torch.empty(M, H, W, cin, device=grad_out.device, dtype=out_dtype) if splits == 1 else \
        torch.empty(splits, M, H, W, cin, device=grad_out.device, dtype=torch.float32)
    _check(dx, "conv_transpose_input_grad output", dx.dim())
    _conv_transpose_input_grad_kernel[(triton.cdiv(M * H * W, t["BLOCK_M"]), triton.cdiv(cin, bn), splits)](
        grad_out, tanh_out if tanh_out is not None else grad_out, w_packed,
        relu_input if relu_input is not None else dx, dx, M, k_split, H=H, W=W, CIN=cin, COUT=cout, PAD=pad,
        TANH_GRAD=tanh_out is not None, RELU_MASK=relu_input is not None, PRECISION=dot_precision(precision),
        BLOCK_M=t["BLOCK_M"], BLOCK_N=bn, BLOCK_K=bk, num_warps=t["NUM_WARPS"], num_stages=t["NUM_STAGES"])
    return dx if splits == 1 else dx.sum(0).to(out_dtype)
