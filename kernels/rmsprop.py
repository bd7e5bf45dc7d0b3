"""Fused RMSprop: one launch updates every tensor of a parameter group (a bank's weights and biases; under bf16
storage two: the biases, then the weights with their bf16 copies, COPY=True).

Per element, exactly torch.optim.RMSprop without momentum, centering, weight decay or maximize
(torch's _single_tensor_rmsprop / _multi_tensor_rmsprop, in the same order of operations):
    v = v * alpha + (1 - alpha) * g * g         square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
    w = w - lr * (g / (sqrt(v) + eps))          param.addcdiv_(g, square_avg.sqrt().add_(eps), value=-lr)
    step = step + 1                             (once per tensor)
`sqrt` and `/` are the IEEE-rounded ones (sqrt.rn / div.rn, as PyTorch's CUDA kernels: no fast math); `1 - alpha`
is rounded once on the host from the Python float, as torch does. Each of w, g and v is read once and w, v written
once: 20 bytes per fp32 parameter (torch's foreach RMSprop makes about 13 weight-sized passes).

copies (optional, one per tensor): a low-precision copy of each updated w (bf16 storage, fast/weight_copy.py) written
in the same pass, w_new rounded to the copy's dtype (round to nearest even, as torch's .to()): 2 more bytes per
parameter, where a separate cast before the next forward would read 4 B and write 2 B.

The launch takes the tensors as Triton tuples (one specialization per tensor count), so every address is a plain
kernel argument: nothing to build on the device, so the launch can be captured in a CUDA graph as is (the
addresses and sizes are baked into the graph, as for any kernel), and it runs under TRITON_INTERPRET=1 on CPU
tensors. Triton's specialization marks 16-byte-aligned pointers, so the unmasked full blocks compile to 16-byte
vector loads and stores (ld.global.v4); only the last block of each tensor is masked. The grid is the sum of the
tensors' block counts; program p finds its tensor by comparing p with the tuple of block starts.

lr is either a float (baked into a CUDA graph at capture) or a 1-element tensor on the parameters' device (read by
the kernel: a captured graph follows later changes to it). The `step` counters are incremented by the kernel when
they live on the parameters' device (capturable optimizers, and CPU tensors under the interpreter); otherwise
(torch keeps them on the CPU for non-capturable optimizers) pass steps=None and increment them on the host.
A launch wrapper only: no autograd, no modules (see vidgan_fast.fast.rmsprop for the optimizer).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from vidgan_fast.kernels.common import cast_for_store, gpu_tiles


@triton.jit
def _rmsprop_math(w, g, v, lr, alpha, one_minus_alpha, eps):
    v = v * alpha + one_minus_alpha * g * g
    w = w - lr * tl.div_rn(g, tl.sqrt_rn(v) + eps)
    return w, v


@triton.jit
def _rmsprop_block(w_ptr, g_ptr, v_ptr, c_ptr, step_ptr, n, local, lr, alpha, one_minus_alpha, eps,
                   COPY: tl.constexpr, STEP: tl.constexpr, BLOCK: tl.constexpr):
    """Block `local` of one tensor of n elements."""
    start = local.to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:                     # a full block: no mask, so aligned pointers give 16-byte accesses
        w, v = _rmsprop_math(tl.load(w_ptr + offs), tl.load(g_ptr + offs), tl.load(v_ptr + offs),
                             lr, alpha, one_minus_alpha, eps)
        tl.store(v_ptr + offs, v)
        tl.store(w_ptr + offs, w)
        if COPY:
            tl.store(c_ptr + offs, cast_for_store(w, c_ptr.dtype.element_ty))
    else:                                      # the tensor's last block (or the one empty block of an empty tensor)
        mask = offs < n
        w, v = _rmsprop_math(tl.load(w_ptr + offs, mask=mask, other=0.0), tl.load(g_ptr + offs, mask=mask, other=0.0),
                             tl.load(v_ptr + offs, mask=mask, other=0.0), lr, alpha, one_minus_alpha, eps)
        tl.store(v_ptr + offs, v, mask=mask)
        tl.store(w_ptr + offs, w, mask=mask)
        if COPY:
            tl.store(c_ptr + offs, cast_for_store(w, c_ptr.dtype.element_ty), mask=mask)
    if STEP:
        if local == 0:
            tl.store(step_ptr, tl.load(step_ptr) + 1)


@triton.jit
def _rmsprop_kernel(ws, gs, vs, cs, steps, numels, starts, lr, lr_ptr, alpha, one_minus_alpha, eps,
                    LR_FROM_PTR: tl.constexpr, COPY: tl.constexpr, STEP: tl.constexpr, BLOCK: tl.constexpr):
    # ws, gs, vs, cs, steps: tuples of pointers (one per tensor; cs the copies when COPY, else unused); numels: their
    # sizes; starts: cumulative block starts
    # (len(ws) + 1 entries). Program p updates block p - starts[k] of the tensor k with starts[k] <= p < starts[k+1].
    pid = tl.program_id(0)
    if LR_FROM_PTR:
        rate = tl.load(lr_ptr).to(tl.float32)
    else:
        rate = lr
    for k in tl.static_range(len(ws)):
        if (pid >= starts[k]) & (pid < starts[k + 1]):
            _rmsprop_block(ws[k], gs[k], vs[k], cs[k], steps[k], numels[k], pid - starts[k], rate, alpha,
                           one_minus_alpha, eps, COPY=COPY, STEP=STEP, BLOCK=BLOCK)


# (elements per program, warps). On a GPU 1,024 fp32 per program = 8 per thread at 4 warps: two 16-byte accesses
# per tensor per thread; ptxas: 54-56 registers, no spills, 9 CTAs (36 warps) per SM on sm_80/sm_90 for a phase-1
# bank (2,048 per program takes 88-90 registers, 5 CTAs per SM). Not measured on a GPU yet: see
# benchmarks/bench_rmsprop.py, which sweeps these. Under the interpreter, large blocks (fewer numpy steps).
GPU_TILES = (1024, 4)
INTERPRETER_TILES = (1 << 16, 1)
MAX_TENSORS = 16       # tensors per launch: the kernel holds one unrolled copy of the update per tensor


def dense(t: torch.Tensor) -> bool:
    """Whether t's elements fill exactly t.numel() consecutive slots from t.data_ptr() (in some dimension order)."""
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def compatible(param: torch.Tensor, grad: torch.Tensor, square_avg: torch.Tensor) -> bool:
    """Whether the kernel can update this (param, grad, square_avg): fp32, one device, and one dense layout
    (the update is elementwise, so any dense layout works when the three share it: contiguous, channels-last...)."""
    return (param.dtype == grad.dtype == square_avg.dtype == torch.float32
            and param.device == grad.device == square_avg.device
            and param.shape == grad.shape == square_avg.shape
            and dense(param)
            and param.stride() == grad.stride() == square_avg.stride())


def copy_compatible(param: torch.Tensor, copy: torch.Tensor) -> bool:
    """Whether the kernel can write `copy` (a bf16 or fp16 copy of param) in the update: same shape, layout and
    device."""
    return (copy.dtype in (torch.bfloat16, torch.float16) and copy.shape == param.shape
            and copy.stride() == param.stride() and copy.device == param.device)


def rmsprop_update(params, grads, square_avgs, steps, lr, alpha: float, eps: float, tiles: str = "auto",
                   max_tensors: int = MAX_TENSORS, tile: tuple[int, int] | None = None, copies=None) -> int:
    """In place, for every i: square_avgs[i] and params[i] take one RMSprop step with grads[i]; steps[i] += 1
    unless steps is None (the caller then increments them); copies[i] (if copies is given) = params[i] rounded to
    copies[i]'s dtype. lr: a float or a 1-element tensor on the params' device. One launch per `max_tensors`
    tensors; returns the number of launches. `tile` (elements per program, warps) overrides the tile policy
    `tiles` (benchmarks sweep it)."""
    params, grads, square_avgs = list(params), list(grads), list(square_avgs)
    copies = None if copies is None else list(copies)
    if not (len(params) == len(grads) == len(square_avgs)) or any(
            x is not None and len(x) != len(params) for x in (steps, copies)):
        raise ValueError("rmsprop_update: params, grads, square_avgs (and steps, copies) must have the same length")
    if not params:
        return 0
    device = params[0].device
    for p, g, v in zip(params, grads, square_avgs):
        if p.device != device or not compatible(p, g, v):
            raise ValueError(f"rmsprop_update: fp32 tensors of one device and one dense layout only; got "
                             f"{p.dtype}/{g.dtype}/{v.dtype} {tuple(p.shape)} strides {p.stride()}/{g.stride()}/"
                             f"{v.stride()} on {p.device}/{g.device}/{v.device}")
    if copies is not None and not all(copy_compatible(p, c) for p, c in zip(params, copies)):
        raise ValueError("rmsprop_update: each copy must be bf16 or fp16 with its parameter's shape, strides and "
                         "device")
    if steps is not None and any(s.device != device or s.numel() != 1 for s in steps):
        raise ValueError("rmsprop_update: steps must be 1-element tensors on the params' device (or None)")
    lr_from_ptr = isinstance(lr, torch.Tensor)
    if lr_from_ptr and (lr.numel() != 1 or lr.device != device):
        raise ValueError("rmsprop_update: a tensor lr must have 1 element and live on the params' device")
    block, warps = tile or (GPU_TILES if gpu_tiles(tiles) else INTERPRETER_TILES)
    launches = 0
    for first in range(0, len(params), max_tensors):
        chunk = slice(first, first + max_tensors)
        numels = tuple(p.numel() for p in params[chunk])
        starts = [0]
        for n in numels:                              # an empty tensor gets one (masked) block: its step counts
            starts.append(starts[-1] + max(1, triton.cdiv(n, block)))
        ws = tuple(params[chunk])
        _rmsprop_kernel[(starts[-1],)](
            ws, tuple(grads[chunk]), tuple(square_avgs[chunk]), ws if copies is None else tuple(copies[chunk]),
            ws if steps is None else tuple(steps[chunk]),
            numels, tuple(starts), 0.0 if lr_from_ptr else float(lr), lr if lr_from_ptr else ws[0],
            float(alpha), float(1 - alpha), float(eps),
            LR_FROM_PTR=lr_from_ptr, COPY=copies is not None, STEP=steps is not None, BLOCK=block, num_warps=warps)
        launches += 1
    return launches
