"""The tiles the kernels run, in one place (neither torch nor triton imported, so the lab reads it anywhere).

A Tile is a program's block sizes and launch options. Each tunable kernel has candidate tiles per GPU family and
operand width; the first candidate is the fixed tile (what runs untuned, what the compile gate checks for spills
and what the lab's per-launch model projects); kernels/autotune.py may time the others on a GPU.

    tile = conv_tile("forward", family(90), "bf16")        # Tile(block_m=128, block_n=128, block_k=64, ...)

Families: "hopper" (sm_90: wgmma, 228 KB of shared memory per SM), "ampere" (sm_80 to sm_89: mma.sync; sm_86/89
have 100 KB per SM, so tiles stay under about 96 KB), "interpreter" (Triton's CPU interpreter: large blocks, fewer
numpy steps). Why these sizes: a BLOCK_M x BLOCK_N tile's loads carry 2 BLOCK_M BLOCK_N BLOCK_K MMA FLOPs over
(BLOCK_M + BLOCK_N) BLOCK_K elements: 64 FLOPs per element loaded at 128 x 128, 85 at 128 x 256. On sm_90 the
tensor cores outrun the L2 at 128 x 128 (the lab's per-launch model: D_F conv2's input gradient L2-bound at 2.3x
its floor on H100, 1.8x at 128 x 256), so every bank pass there takes 128 x 256 with two warpgroups; 64 x 64 tiles
were L2-bound on every GPU (benchmarks/RESULTS.md). BLOCK_K 32 at 4-byte operands and 64 at 2-byte ones is 128 bytes of
contiguous channels per row: a full 128-byte line per row of a tile load.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    block_m: int
    block_n: int
    block_k: int
    warps: int
    stages: int = 3

    def options(self) -> dict:
        """The launch options of this tile."""
        return {"num_warps": self.warps, "num_stages": self.stages}


FAMILIES = ("hopper", "ampere", "interpreter")


def family(arch: int | None) -> str:
    """The tile family of a compute capability (x 10, e.g. 90), or None for Triton's interpreter."""
    if arch is None:
        return "interpreter"
    return "hopper" if arch >= 90 else "ampere"


def operand_bytes(precision: str) -> int:
    return 2 if precision == "bf16" else 4


# (family, operand bytes) -> {pass: (fixed tile, other candidates...)}
CONV_TILES = {
    ("hopper", 4): {"forward": (Tile(128, 256, 32, 8), Tile(128, 128, 32, 8), Tile(64, 128, 32, 4, 4)),
                    "dgrad": (Tile(128, 256, 32, 8), Tile(128, 128, 32, 8), Tile(64, 128, 32, 4, 4)),
                    "wgrad": (Tile(128, 256, 32, 8), Tile(128, 128, 32, 8), Tile(64, 128, 32, 4, 4))},
    ("hopper", 2): {"forward": (Tile(128, 256, 64, 8), Tile(128, 128, 64, 8), Tile(64, 128, 64, 4, 4)),
                    "dgrad": (Tile(128, 256, 64, 8), Tile(128, 128, 64, 8), Tile(64, 128, 64, 4, 4)),
                    "wgrad": (Tile(128, 256, 64, 8), Tile(128, 128, 64, 8), Tile(64, 128, 64, 4, 4))},
    ("ampere", 4): {"forward": (Tile(128, 128, 32, 8), Tile(64, 128, 32, 4)),
                    "dgrad": (Tile(128, 128, 32, 8), Tile(64, 128, 32, 4)),
                    "wgrad": (Tile(128, 128, 32, 8), Tile(64, 128, 32, 4))},
    ("ampere", 2): {"forward": (Tile(128, 128, 64, 8), Tile(64, 128, 64, 4)),
                    "dgrad": (Tile(128, 128, 64, 8), Tile(64, 128, 64, 4)),
                    "wgrad": (Tile(128, 128, 64, 8), Tile(64, 128, 64, 4))},
}
# Exact fp32 products (--no-tf32: an FMA dot, no tensor cores) on any GPU: Triton holds an FMA dot's operand slices
# per thread, and the tensor-core tiles above spill there (sm_90's 128 x 256: 300-1,300 bytes; sm_86/89's 128 x 128:
# 8-56 bytes; Triton 3.6 and 3.9). The FMA rate, not L2, bounds these launches, so a smaller tile costs nothing.
FMA_CONV_TILES = {"forward": (Tile(64, 64, 16, 4),), "dgrad": (Tile(64, 64, 16, 4),),
                  "wgrad": (Tile(64, 64, 16, 4),)}
INTERPRETER_CONV_TILE = Tile(256, 64, 64, 4, 1)     # the interpreter: the same code in fewer, larger numpy steps
PACKED_BLOCK_K = 16                                  # a reduction over taps of a 1-channel input (conv1): taps x 1


def conv_tiles(kernel: str, fam: str, precision: str) -> tuple:
    """The candidate tiles of a bank convolution pass ('forward', 'dgrad', 'wgrad'), the fixed one first."""
    if fam == "interpreter":
        return (INTERPRETER_CONV_TILE,)
    if precision == "fp32":
        return FMA_CONV_TILES[kernel]
    return CONV_TILES[(fam, operand_bytes(precision))][kernel]


# The logit layer's GEMVs (kernels/logit.py): block_m rows of the batch x block_n consecutive elements of a row
# (block_k unused). A [block_m, block_n] fp32 tile over 4 warps is 16 accumulators and four 16-byte loads per thread.
LOGIT_TILES = {"forward": Tile(4, 512, 1, 4), "dgrad": Tile(4, 512, 1, 4), "wgrad": Tile(8, 256, 1, 4)}
INTERPRETER_LOGIT_TILE = Tile(64, 1024, 1, 4)


def logit_tile(kernel: str, fam: str) -> Tile:
    return INTERPRETER_LOGIT_TILE if fam == "interpreter" else LOGIT_TILES[kernel]


# The projections (kernels/projection.py): (pixels per program, projections per program in the forward, projections
# per reduction step in the backward); index: interpreted or not.
PROJECTION_TILES = {False: (128, 64, 1), True: (512, 64, 4)}
# Exact fp32 products (FMA, no tensor cores): at most 16 projections per program on a GPU. Triton lowers a
# [128 x 64] @ [64 x 64] FMA dot with every operand held per thread: 10-24 KB of spills per thread at 32 or 64
# (Triton 3.6 and 3.9, sm_80/90); at 16, 80 registers and none.
PROJECTION_FP32_MAX_K = 16


# The frozen G_F (kernels/frame_generator.py): BLOCK_M rows, output channels up to block_n, reduction steps of
# block_k, per family and operand width (the same reasoning as CONV_TILES).
GENERATOR_TILES = {("hopper", 4): Tile(128, 256, 32, 8), ("hopper", 2): Tile(128, 256, 64, 8),
                   ("ampere", 4): Tile(128, 128, 32, 8), ("ampere", 2): Tile(128, 128, 64, 8)}
INTERPRETER_GENERATOR_TILE = Tile(256, 128, 128, 4, 1)
FMA_GENERATOR_TILE = Tile(64, 64, 16, 4)     # exact fp32 (FMA dot), as FMA_CONV_TILES: sm_90's dense spilled at 128


def generator_tile(fam: str, precision: str, widest: int = 4) -> Tile:
    """The tile for products at `precision` whose widest operand, as stored, has `widest` bytes per element."""
    if fam == "interpreter":
        return INTERPRETER_GENERATOR_TILE
    if precision == "fp32":
        return FMA_GENERATOR_TILE
    return GENERATOR_TILES[(fam, max(operand_bytes(precision), widest))]


# The fused RMSprop (kernels/rmsprop.py): block_m elements per program (others unused); index: interpreted or not.
# 1,024 fp32 per program over 4 warps is 8 per thread: two 16-byte accesses per tensor per thread.
RMSPROP_TILES = {False: Tile(1024, 1, 1, 4), True: Tile(1 << 16, 1, 1, 1)}
