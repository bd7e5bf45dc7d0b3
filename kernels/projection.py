"""All K fixed random projections in one launch, and their input-gradient backward in one launch.

A projection is a 1->1 channel 2D convolution with a fixed filter f[k] (8x8). Frames [B, 1, H, W] and videos
[B, 1, T, H, W] (the same 2D filter on every frame) are both seen as N = B*T single-channel images [N, H, W]:
    forward   out[k, n] = conv2d(x[n], f[k], stride, padding)           -> [K, N, OH, OW]
    backward  dx[n] = sum_k conv_transpose2d(dout[k, n], f[k], stride, padding)
The backward is a gather (each input pixel reads the outputs it fed, kernels/col2im.py), so there are no atomics.
The forward is a [pixels x taps] @ [taps x K] product per program (one gather of x serves all K filters).
These are launch wrappers only: no autograd (see vidgan_fast.fast.projection).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vidgan_fast.kernels.col2im import col2im
from vidgan_fast.kernels.common import dot_precision, mma, target_family
from vidgan_fast.kernels.tiles import PROJECTION_FP32_MAX_K, PROJECTION_TILES


@triton.jit
def _project_fwd_kernel(x_ptr, f_ptr, out_ptr, N, K,
                        H: tl.constexpr, W: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr,
                        STRIDE: tl.constexpr, PAD: tl.constexpr, KS: tl.constexpr, TAPS: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    # out[k, p] = sum over taps t of patch[p, t] * f[k, t]: a [BLOCK_P x TAPS] @ [TAPS x BLOCK_K] product. The
    # patch is gathered as its transpose [TAPS, BLOCK_P] with the taps ordered (kw, kh), so that no dimension looks
    # contiguous to Triton's layout analysis and each thread holds whole pixel columns: a pixel's (n, oh, ow) is
    # decoded once per thread, every tap is a compile-time constant offset from the pixel's corner (kh * W + kw,
    # folded into the load's immediate) and its bounds test one of KS unsigned compares per dimension.
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)   # output pixels (n, oh, ow)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)   # projections
    offs_t = tl.arange(0, TAPS)                                    # taps (kw, kh), padded to a power of 2
    P = N * (OH * OW)
    q = offs_p // OW                                               # constexpr divisors: multiply and shift
    ow = offs_p - q * OW
    n = q // OH
    oh = q - n * OH
    ih0, iw0 = oh * STRIDE - PAD, ow * STRIDE - PAD                 # the patch's corner (may lie in the padding)
    kw, kh = offs_t // KS, offs_t % KS
    in_h = (ih0[None, :] + kh[:, None]).to(tl.uint32) < H          # negative wraps to a large unsigned value
    in_w = (iw0[None, :] + kw[:, None]).to(tl.uint32) < W
    x_mask = (offs_p < P)[None, :] & in_h & in_w
    if TAPS > KS * KS:
        x_mask = x_mask & (offs_t < KS * KS)[:, None]
    corner = (n * H + ih0) * W + iw0
    patch_t = tl.load(x_ptr + corner[None, :] + (kh * W + kw)[:, None], mask=x_mask, other=0.0)
    f_mask = (offs_t[:, None] < KS * KS) & (offs_k[None, :] < K)
    f = tl.load(f_ptr + offs_k[None, :] * (KS * KS) + (kh * KS + kw)[:, None], mask=f_mask, other=0.0)
    out = mma(tl.trans(patch_t), f, tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32), PRECISION)
    out_mask = (offs_p[:, None] < P) & (offs_k[None, :] < K)
    tl.store(out_ptr + offs_k[None, :].to(tl.int64) * P + offs_p[:, None], out, mask=out_mask)


def _tiles(device):
    """(pixels per program, projections per program (forward), projections per reduction step (backward))."""
    return PROJECTION_TILES[target_family(device) == "interpreter"]


def _check(images: torch.Tensor, filters: torch.Tensor):
    if images.dim() != 3:
        raise ValueError(f"projection: expected images [N, H, W], got shape {tuple(images.shape)}")
    if filters.dim() != 3 or filters.shape[1] != filters.shape[2]:
        raise ValueError(f"projection: expected filters [K, k, k], got shape {tuple(filters.shape)}")
    if images.dtype != torch.float32 or filters.dtype != torch.float32:
        raise ValueError(f"projection: float32 tensors only, got {images.dtype} and {filters.dtype}")


def project_forward(images: torch.Tensor, filters: torch.Tensor, stride: int, padding: int,
                    precision: str = "fp32") -> torch.Tensor:
    """images [N, H, W], filters [K, k, k] -> [K, N, OH, OW]: every filter applied to every image."""
    _check(images, filters)
    images, filters = images.contiguous(), filters.contiguous()
    (N, H, W), (K, KS, _) = images.shape, filters.shape
    OH, OW = (H + 2 * padding - KS) // stride + 1, (W + 2 * padding - KS) // stride + 1
    out = torch.empty((K, N, OH, OW), device=images.device, dtype=torch.float32)
    block_p, max_k, _ = _tiles(images.device)
    if precision == "fp32" and target_family(images.device) != "interpreter":
        max_k = min(max_k, PROJECTION_FP32_MAX_K)                 # an FMA dot: wider blocks spill
    block_k = max(16, min(max_k, triton.next_power_of_2(K)))     # tl.dot needs blocks of at least 16
    grid = (triton.cdiv(N * OH * OW, block_p), triton.cdiv(K, block_k))
    _project_fwd_kernel[grid](images, filters, out, N, K, H=H, W=W, OH=OH, OW=OW, STRIDE=stride, PAD=padding, KS=KS,
                              TAPS=triton.next_power_of_2(KS * KS), PRECISION=dot_precision(precision),
                              BLOCK_P=block_p, BLOCK_K=block_k)
    return out


def project_backward(dout: torch.Tensor, filters: torch.Tensor, image_shape, stride: int, padding: int,
                     precision: str = "fp32"):
    """dout [K, N, OH, OW] -> d images [N, H, W] = sum over k of the transposed projection k. Two launches: the tap
    products summed over the K projections, e[t, (n, o)] = sum_k f[k, t] dout[k, n, o] (a GEMM on the tensor cores,
    kernels/frame_generator.dense), then each input pixel's sum over the taps that reached an output
    (kernels/col2im.py), reading e contiguously."""
    from vidgan_fast.kernels.frame_generator import dense
    N, H, W = image_shape
    K, KS = filters.shape[0], filters.shape[1]
    OH, OW = (H + 2 * padding - KS) // stride + 1, (W + 2 * padding - KS) // stride + 1
    if tuple(dout.shape) != (K, N, OH, OW):
        raise ValueError(f"projection backward: expected dout {(K, N, OH, OW)}, got {tuple(dout.shape)}")
    _check(dout[0], filters)
    taps = KS * KS
    e = dense(filters.reshape(K, taps).t(), dout.contiguous().view(K, N * OH * OW), precision=precision)
    dx = torch.empty((N, H, W), device=dout.device, dtype=torch.float32)
    col2im(e, (0, 0, N * OH * OW, OH * OW, 1), dx.view(1, N, 1, H, W), (1, H, W), (1, OH, OW), (1, KS, KS),
           (1, stride, stride), (0, padding, padding))
    return dx
