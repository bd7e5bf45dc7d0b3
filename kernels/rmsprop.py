"""Fused RMSprop: one launch per tensor reads w, g and v once and writes w and v once (and the tensor's bf16 copy,
COPY=True, under bf16 storage).

Per element, exactly torch.optim.RMSprop without momentum, centering, weight decay or maximize
(torch's _single_tensor_rmsprop / _multi_tensor_rmsprop, in the same order of operations):
    v = v * alpha + (1 - alpha) * g * g         square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
    w = w - lr * (g / (sqrt(v) + eps))          param.addcdiv_(g, square_avg.sqrt().add_(eps), value=-lr)
    step = step + 1                             (once per tensor)
`sqrt` and `/` are the IEEE-rounded ones (sqrt.rn / div.rn, as PyTorch's CUDA kernels: no fast math); `1 - alpha`
is rounded once on the host from the Python float, as torch does. Each of w, g and v is read once and w, v written
once: 20 bytes per fp32 parameter (torch's foreach RMSprop makes about 13 weight-sized passes).

copies (optional, one per tensor): a low-precision copy of each updated w (bf16 storage, owned by fast/bank.py) written
in the same pass, w_new rounded to the copy's dtype (round to nearest even, as torch's .to()): 2 more bytes per
parameter, where a separate cast before the next forward would read 4 B and write 2 B.

One launch per tensor, straight-line code: every address is a plain kernel argument (a CUDA graph captures the
launch as is), and a tensor whose size is a multiple of the block (EVEN, every bank weight at the paper widths)
runs without masks, so Triton's 16-byte alignment of the pointers gives 16-byte vector loads and stores
(ld.global.v4). A bank's 8 tensors are 8 launches, about 2 us each in a CUDA graph beside milliseconds of traffic.

The update itself is `rmsprop_math`, one @triton.jit function: kernels/conv.py's weight gradient applies it in
its epilogue too, given an `RMSpropStep` (the weight, its state and hyper-parameters), so that the gradient is never
stored (fast/bank.py's backward, fed by FusedRMSprop.update_of).

lr is either a float (baked into a CUDA graph at capture) or a 1-element tensor on the parameters' device (read by
the kernel: a captured graph follows later changes to it). The `step` counters are incremented by the kernel when
they live on the parameters' device (capturable optimizers, and CPU tensors under the interpreter); otherwise
(torch keeps them on the CPU for non-capturable optimizers) pass steps=None and increment them on the host.
A launch wrapper only: no autograd, no modules (see vidgan_fast.fast.rmsprop for the optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from vidgan_fast.kernels.common import cast_for_store, target_family
from vidgan_fast.kernels.tiles import RMSPROP_TILES


@triton.jit
def rmsprop_math(w, g, v, rate, alpha, one_minus_alpha, eps):
    """(new w, new v) of one RMSprop step, elementwise: the one definition of the update, shared by this module's
    kernel and the weight-gradient launches that apply it in their epilogue (kernels/conv.py)."""
    v = v * alpha + one_minus_alpha * g * g
    return w - rate * tl.div_rn(g, tl.sqrt_rn(v) + eps), v


@triton.jit
def _rmsprop_kernel(w_ptr, g_ptr, v_ptr, c_ptr, step_ptr, n, lr, lr_ptr, alpha, one_minus_alpha, eps,
                    LR_FROM_PTR: tl.constexpr, COPY: tl.constexpr, STEP: tl.constexpr, EVEN: tl.constexpr,
                    BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if LR_FROM_PTR:
        rate = tl.load(lr_ptr).to(tl.float32)
    else:
        rate = lr
    if EVEN:                                   # no mask: aligned pointers give 16-byte vector accesses
        mask = None
        w, g, v = tl.load(w_ptr + offs), tl.load(g_ptr + offs), tl.load(v_ptr + offs)
    else:
        w = tl.load(w_ptr + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    w, v = rmsprop_math(w, g, v, rate, alpha, one_minus_alpha, eps)
    tl.store(v_ptr + offs, v, mask=mask)
    tl.store(w_ptr + offs, w, mask=mask)
    if COPY:
        tl.store(c_ptr + offs, cast_for_store(w, c_ptr.dtype.element_ty), mask=mask)
    if STEP:
        if pid == 0:
            tl.store(step_ptr, tl.load(step_ptr) + 1)


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


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and the same strides along every dimension longer than 1 (a size-1 dimension's stride is
    arbitrary: it never moves)."""
    return a.shape == b.shape and all(sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()) if n != 1)


def compatible(param: torch.Tensor, grad: torch.Tensor, square_avg: torch.Tensor) -> bool:
    """Whether the kernel can update this (param, grad, square_avg): fp32, one device, and one dense layout
    (the update is elementwise, so any dense layout works when the three share it: contiguous, channels-last...)."""
    return (param.dtype == grad.dtype == square_avg.dtype == torch.float32
            and param.device == grad.device == square_avg.device
            and dense(param) and same_layout(param, grad) and same_layout(param, square_avg))


def copy_compatible(param: torch.Tensor, copy: torch.Tensor) -> bool:
    """Whether the kernel can write `copy` (a bf16 or fp16 copy of param) in the update: same shape, layout and
    device."""
    return copy.dtype in (torch.bfloat16, torch.float16) and same_layout(param, copy) and copy.device == param.device


def check_update(who: str, params, grads, square_avgs, copies, steps, lr) -> None:
    """ValueError (its text begins with `who`) unless a launch can update these lists of equal length (params not
    empty): what rmsprop_update and an RMSpropStep require of their tensors."""
    device = params[0].device
    for p, g, v, c in zip(params, grads, square_avgs, copies):
        if p.device != device or not compatible(p, g, v):
            raise ValueError(f"{who}: fp32 tensors of one device and one dense layout only; got "
                             f"{p.dtype}/{g.dtype}/{v.dtype} {tuple(p.shape)} strides {p.stride()}/{g.stride()}/"
                             f"{v.stride()} on {p.device}/{g.device}/{v.device}")
        if c is not None and not copy_compatible(p, c):
            raise ValueError(f"{who}: each copy must be bf16 or fp16 with its parameter's shape, strides and device")
    if steps is not None and any(s.device != device or s.numel() != 1 for s in steps):
        raise ValueError(f"{who}: steps must be 1-element tensors on the params' device (or None)")
    if isinstance(lr, torch.Tensor) and (lr.numel() != 1 or lr.device != device):
        raise ValueError(f"{who}: a tensor lr must have 1 element and live on the params' device")


def rmsprop_update(params, grads, square_avgs, steps, lr, alpha: float, eps: float, copies=None,
                   block: int | None = None) -> int:
    """In place, for every i: square_avgs[i] and params[i] take one RMSprop step with grads[i]; steps[i] += 1
    unless steps is None (the caller then increments them); copies[i] (if copies is given and copies[i] is not
    None) = params[i] rounded to copies[i]'s dtype. lr: a float or a 1-element tensor on the params' device. One
    launch per tensor; returns the number of launches. `block` (elements per program) overrides the tile."""
    params, grads, square_avgs = list(params), list(grads), list(square_avgs)
    copies = [None] * len(params) if copies is None else list(copies)
    if not (len(params) == len(grads) == len(square_avgs) == len(copies)) or (
            steps is not None and len(steps) != len(params)):
        raise ValueError("rmsprop_update: params, grads, square_avgs (and steps, copies) must have the same length")
    if not params:
        return 0
    check_update("rmsprop_update", params, grads, square_avgs, copies, steps, lr)
    device, lr_from_ptr = params[0].device, isinstance(lr, torch.Tensor)
    tile = RMSPROP_TILES[target_family(device) == "interpreter"]
    block = block or tile.block_m
    for i, (p, g, v, c) in enumerate(zip(params, grads, square_avgs, copies)):
        n = p.numel()
        _rmsprop_kernel[(max(1, triton.cdiv(n, block)),)](
            p, g, v, p if c is None else c, p if steps is None else steps[i], n,
            0.0 if lr_from_ptr else float(lr), lr if lr_from_ptr else p, float(alpha), float(1 - alpha), float(eps),
            LR_FROM_PTR=lr_from_ptr, COPY=c is not None, STEP=steps is not None, EVEN=n > 0 and n % block == 0,
            BLOCK=block, num_warps=tile.warps)
    return len(params)


@dataclass(frozen=True)
class RMSpropStep:
    """One RMSprop step of one fp32 weight, handed to the launch that computes the weight's gradient so that the
    gradient is applied where it is made and never stored (kernels/conv.py's conv_wgrad, `update=`).

    weight, square_avg and copy (the weight's bf16 copy, or None) share one dense layout, the one the launch writes
    its gradient in; lr is a float or a 1-element tensor on the weight's device; `step` is the weight's step counter
    when it lives on the weight's device (the launch increments it), else None (the caller increments it)."""
    weight: torch.Tensor
    square_avg: torch.Tensor
    lr: float | torch.Tensor
    alpha: float
    eps: float
    step: torch.Tensor | None = None
    copy: torch.Tensor | None = None

    def check(self) -> None:
        """ValueError unless a launch can apply this step (rmsprop_update's checks, the weight as its own gradient)."""
        check_update("RMSpropStep", [self.weight], [self.weight], [self.square_avg], [self.copy],
                     None if self.step is None else [self.step], self.lr)

    def kernel_args(self) -> dict:
        """The arguments of a launch that applies this step (the epilogue of kernels/conv.py's wgrad)."""
        from_ptr = isinstance(self.lr, torch.Tensor)
        return dict(w_ptr=self.weight, v_ptr=self.square_avg,
                    c_ptr=self.weight if self.copy is None else self.copy,
                    step_ptr=self.weight if self.step is None else self.step,
                    lr=0.0 if from_ptr else float(self.lr), lr_ptr=self.lr if from_ptr else self.weight,
                    alpha=float(self.alpha), one_minus_alpha=float(1 - self.alpha), eps=float(self.eps),
                    UPDATE=True, LR_FROM_PTR=from_ptr, COPY=self.copy is not None, STEP=self.step is not None)

    @staticmethod
    def no_update_args(placeholder: torch.Tensor) -> dict:
        """kernel_args() of a launch that applies no step (every pointer a placeholder, never read)."""
        return dict(w_ptr=placeholder, v_ptr=placeholder, c_ptr=placeholder, step_ptr=placeholder, lr=0.0,
                    lr_ptr=placeholder, alpha=0.0, one_minus_alpha=0.0, eps=0.0, UPDATE=False, LR_FROM_PTR=False,
                    COPY=False, STEP=False)

    def apply(self, grad: torch.Tensor) -> None:
        """The step with a gradient that was stored after all (a split reduction): one rmsprop_update launch."""
        rmsprop_update([self.weight], [grad], [self.square_avg], None if self.step is None else [self.step],
                       self.lr, self.alpha, self.eps, copies=[self.copy])
