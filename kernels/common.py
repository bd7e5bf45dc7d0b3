"""What the kernel modules share: compiled-or-interpreted, the precision of products, and the tile policy.

Precision (the `precision` argument of every launch wrapper that multiplies):
    "fp32"  exact fp32 products (tl.dot input_precision "ieee": FMA, no tensor core)
    "tf32"  TF32 tensor-core products (10-bit mantissa), fp32 accumulation
    "bf16"  operands rounded to bf16 (round-to-nearest-even), bf16 tensor-core products, fp32 accumulation
Storage is separate from precision: the kernels that carry activations (conv, col2im, frame_generator) read fp32
or bf16 tensors (the dtype of each pointer), compute in fp32 registers, and write their activation / input-gradient
outputs in the dtype of the output tensor the wrapper allocates (`cast_for_store`); weight gradients are fp32.
The interpreter ignores input_precision and mishandles bf16 dots, so there "bf16" rounds the operands with
integer bit operations and multiplies them exactly: the same products the tensor cores form. Its fp32 -> bf16
cast truncates, so `cast_for_store` rounds first there (the compiled cast rounds to nearest even itself). (TF32 cannot be
seen under the interpreter; tests read the compiled PTX for it, see vidgan_fast/lab/aot.py.)

Tiles: each launcher has GPU tiles (what a GPU runs; what the compile gate checks for registers and spills)
and larger interpreter tiles (the same code in fewer, larger numpy steps). `tiles="auto"` takes the GPU tiles
when compiled and the interpreter tiles when interpreted; tests pass `tiles="gpu"` to run the GPU tiling under
the interpreter.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from vidgan_fast.kernels.mode import PRECISIONS, interpreting
from vidgan_fast.kernels.tiles import family

TILE_POLICIES = ("auto", "gpu", "interpreter")


# Fixed at import, exactly like triton.jit's own choice between compiling and interpreting.
INTERPRETED = tl.constexpr(interpreting())


_FORCED: dict = {}          # forced_target()'s settings


@contextlib.contextmanager
def forced_target(arch: int | None = None, sms: int | None = None, tile_family: str | None = None):
    """Inside: launches on any device pick their tiles for GPU `arch` (and size split reductions for `sms`
    multiprocessors), or for the named tile family (kernels/tiles.py): the lab's shape-only runs on meta tensors
    project a chosen GPU, and tests run the GPU tiles under the interpreter."""
    saved = dict(_FORCED)
    _FORCED.update({k: v for k, v in (("arch", arch), ("sms", sms), ("family", tile_family)) if v is not None})
    try:
        yield
    finally:
        _FORCED.clear()
        _FORCED.update(saved)


def target_family(device) -> str:
    """The tile family (kernels/tiles.py) of launches on `device`: the forced one, else the interpreter's under
    TRITON_INTERPRET, else the CUDA device's (a meta tensor, outside forced_target, projects an H100)."""
    if "family" in _FORCED:
        return _FORCED["family"]
    if "arch" in _FORCED:
        return family(_FORCED["arch"])
    if interpreting():
        return "interpreter"
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return family(10 * major + minor)
    return family(90)


def target_sms(device) -> int:
    """Multiprocessors of the GPU the launch runs on (or is projected for: forced_target; 132, an H100's,
    for meta and CPU tensors)."""
    if "sms" in _FORCED:
        return _FORCED["sms"]
    device = torch.device(device)
    if device.type == "cuda" and not interpreting():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def dot_precision(precision: str) -> str:
    """The kernels' PRECISION constexpr for a user-facing precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"fp32": "ieee", "tf32": "tf32", "bf16": "bf16"}[precision]


def gpu_tiles(tiles: str) -> bool:
    """Whether a launcher uses its GPU tiles under the policy `tiles`."""
    if tiles not in TILE_POLICIES:
        raise ValueError(f"tiles must be one of {TILE_POLICIES}, got {tiles!r}")
    return tiles == "gpu" or (tiles == "auto" and not interpreting())


def block(n: int, cap: int) -> int:
    """Power-of-two block for a dimension of size n: at least 16 (tl.dot's minimum), at most cap."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def tile(n: int, cap: int, gpu: bool) -> int:
    """The block of a dimension of size n. On a GPU the full tile `cap` at any size but 1 (which takes 16, tl.dot's
    minimum): every width then launches the same specialization, so the tiny and paper configurations compile and
    are gated as one. Under the interpreter the smallest power of two that holds n (fewer wasted numpy lanes)."""
    if gpu:
        return 16 if n == 1 else cap
    return block(n, cap)


@triton.jit
def round_to_bf16(x):
    """fp32 -> the nearest bf16 value (ties to even), kept in fp32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation at PRECISION ("ieee", "tf32" or "bf16"); bf16 operands (bf16 storage)
    go to the tensor cores as they were loaded."""
    if PRECISION == "bf16":
        if INTERPRETED:
            return tl.dot(round_to_bf16(a.to(tl.float32)), round_to_bf16(b.to(tl.float32)), acc,
                          input_precision="ieee")
        else:
            return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        if INTERPRETED:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
        else:
            return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def column_halves(acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """acc[:, :BLOCK_N // 2], acc[:, BLOCK_N // 2:]. An epilogue that reads a saved activation per output element
    (an activation's derivative) stores in two halves, so the tile it reads is never all live beside the whole
    accumulator: at 128 x 256 on sm_90 that is what spilled."""
    return tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))


@triton.jit
def cast_for_store(x, dtype: tl.constexpr):
    """fp32 x as `dtype` (a store's element type) rounded to nearest even: the compiled fp32 -> bf16 cast rounds
    so; the interpreter's truncates, so there x is rounded first with integer bit operations (the cast is then
    exact)."""
    if INTERPRETED:
        if dtype == tl.bfloat16:
            return round_to_bf16(x).to(dtype)
    return x.to(dtype)
