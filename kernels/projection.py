"""All K fixed random projections in one launch, and their input-gradient backward in one launch.

A projection is a 1->1 channel 2D convolution with a fixed filter f[k] (8x8). Frames [B, 1, H, W] and videos
[B, 1, T, H, W] (the same 2D filter on every frame) are both seen as N = B*T single-channel images [N, H, W]:
    forward   out[k, n] = conv2d(x[n], f[k], stride, padding)           -> [K, N, OH, OW]
    backward  dx[n] = sum_k conv_transpose2d(dout[k, n], f[k], stride, padding)
The backward is written as a gather (each input pixel reads the outputs it fed), so there are no atomics.
The forward is a [pixels x taps] @ [taps x K] product per program (one gather of x serves all K filters); the
backward reduces over (projection, tap) pairs in vector chunks.
These are launch wrappers only: no autograd (see vidgan_fast.fast.projection).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vidgan_fast.kernels.common import block, dot_precision, gpu_tiles, mma


@triton.jit
def _project_fwd_kernel(x_ptr, f_ptr, out_ptr, N, H, W, OH, OW, K,
                        STRIDE: tl.constexpr, PAD: tl.constexpr, KS: tl.constexpr, TAPS: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    # out[k, p] = sum over taps t of patch[p, t] * f[k, t]: a [BLOCK_P x TAPS] @ [TAPS x BLOCK_K] product
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)   # output pixels (n, oh, ow)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)   # projections
    offs_t = tl.arange(0, TAPS)                                    # filter taps (kh, kw), padded to a power of 2
    P = N * OH * OW
    ow = offs_p % OW
    oh = (offs_p // OW) % OH
    n = offs_p // (OW * OH)
    ih = oh[:, None] * STRIDE - PAD + (offs_t // KS)[None, :]
    iw = ow[:, None] * STRIDE - PAD + (offs_t % KS)[None, :]
    x_mask = ((offs_p[:, None] < P) & (offs_t[None, :] < KS * KS)
              & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
    patch = tl.load(x_ptr + (n[:, None] * H + ih) * W + iw, mask=x_mask, other=0.0)
    f_mask = (offs_t[:, None] < KS * KS) & (offs_k[None, :] < K)
    f = tl.load(f_ptr + offs_k[None, :] * KS * KS + offs_t[:, None], mask=f_mask, other=0.0)
    out = mma(patch, f, tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32), PRECISION)
    out_mask = (offs_p[:, None] < P) & (offs_k[None, :] < K)
    tl.store(out_ptr + offs_k[None, :].to(tl.int64) * P + offs_p[:, None], out, mask=out_mask)


@triton.jit
def _project_bwd_kernel(dout_ptr, f_ptr, dx_ptr, N, H, W, OH, OW, K,
                        STRIDE: tl.constexpr, PAD: tl.constexpr, KS: tl.constexpr, TAPS: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    # dx[p] = sum over (k, t) of dout[k, the output pixel that tap t of p fed] * f[k, t]
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)   # input pixels (n, ih, iw)
    offs_r = tl.arange(0, BLOCK_K * TAPS)                          # (k, t) pairs of one block of projections
    S = N * H * W
    P = N * OH * OW
    iw = offs_p % W
    ih = (offs_p // W) % H
    n = offs_p // (W * H)
    t = offs_r % TAPS
    th = ih[:, None] + PAD - (t // KS)[None, :]                    # = oh * STRIDE where tap t fed row ih
    tw = iw[:, None] + PAD - (t % KS)[None, :]
    oh = th // STRIDE
    ow = tw // STRIDE
    fed = ((offs_p[:, None] < S) & (t[None, :] < KS * KS)
           & (th >= 0) & (th % STRIDE == 0) & (oh < OH) & (tw >= 0) & (tw % STRIDE == 0) & (ow < OW))
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_r // TAPS
        g_off = k[None, :].to(tl.int64) * P + (n[:, None] * OH + oh) * OW + ow
        g = tl.load(dout_ptr + g_off, mask=fed & (k[None, :] < K), other=0.0)
        f = tl.load(f_ptr + k * KS * KS + t, mask=(k < K) & (t < KS * KS), other=0.0)
        acc += tl.sum(g * f[None, :], axis=1)
    tl.store(dx_ptr + offs_p, acc, mask=offs_p < S)


# (pixels per program, projections per program (forward) or per reduction step (backward)).
GPU_TILES = (64, 32, 1)
INTERPRETER_TILES = (512, 64, 4)


def _check(images: torch.Tensor, filters: torch.Tensor):
    if images.dim() != 3:
        raise ValueError(f"projection: expected images [N, H, W], got shape {tuple(images.shape)}")
    if filters.dim() != 3 or filters.shape[1] != filters.shape[2]:
        raise ValueError(f"projection: expected filters [K, k, k], got shape {tuple(filters.shape)}")
    if images.dtype != torch.float32 or filters.dtype != torch.float32:
        raise ValueError(f"projection: float32 tensors only, got {images.dtype} and {filters.dtype}")


def project_forward(images: torch.Tensor, filters: torch.Tensor, stride: int, padding: int, precision: str = "fp32",
                    tiles: str = "auto") -> torch.Tensor:
    """images [N, H, W], filters [K, k, k] -> [K, N, OH, OW]: every filter applied to every image."""
    _check(images, filters)
    images, filters = images.contiguous(), filters.contiguous()
    (N, H, W), (K, KS, _) = images.shape, filters.shape
    OH, OW = (H + 2 * padding - KS) // stride + 1, (W + 2 * padding - KS) // stride + 1
    out = torch.empty((K, N, OH, OW), device=images.device, dtype=torch.float32)
    block_p, max_k, _ = GPU_TILES if gpu_tiles(tiles) else INTERPRETER_TILES
    block_k = block(K, max_k)                                # tl.dot needs blocks of at least 16
    grid = (triton.cdiv(N * OH * OW, block_p), triton.cdiv(K, block_k))
    _project_fwd_kernel[grid](images, filters, out, N, H, W, OH, OW, K, STRIDE=stride, PAD=padding, KS=KS,
                              TAPS=triton.next_power_of_2(KS * KS), PRECISION=dot_precision(precision),
                              BLOCK_P=block_p, BLOCK_K=block_k)
    return out


def project_backward(dout: torch.Tensor, filters: torch.Tensor, image_shape, stride: int, padding: int,
                     tiles: str = "auto"):
    """dout [K, N, OH, OW] -> d images [N, H, W] = sum over k of the transposed projection k."""
    N, H, W = image_shape
    K, KS = filters.shape[0], filters.shape[1]
    OH, OW = (H + 2 * padding - KS) // stride + 1, (W + 2 * padding - KS) // stride + 1
    if tuple(dout.shape) != (K, N, OH, OW):
        raise ValueError(f"projection backward: expected dout {(K, N, OH, OW)}, got {tuple(dout.shape)}")
    _check(dout[0], filters)
    dx = torch.empty((N, H, W), device=dout.device, dtype=torch.float32)
    block_p, _, block_k = GPU_TILES if gpu_tiles(tiles) else INTERPRETER_TILES
    block_k = min(block_k, triton.next_power_of_2(K))         # block_k projections x 64 taps per step
    grid = (triton.cdiv(N * H * W, block_p),)
    _project_bwd_kernel[grid](dout.contiguous(), filters.contiguous(), dx, N, H, W, OH, OW, K,
                              STRIDE=stride, PAD=padding, KS=KS, TAPS=triton.next_power_of_2(KS * KS),
                              BLOCK_P=block_p, BLOCK_K=block_k)
    return dx
