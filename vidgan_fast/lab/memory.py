"""Projected GPU memory of `--fast` training without a GPU: reserved bytes, as PyTorch's caching allocator would hold
them, under CUDA graphs, against the paper's 11 GiB.

    rows = project(preset("paper"), "tf32")      # one dict per phase
    vidgan bench --static                         # prints them (lab/report.py)

How: the `--fast` training state of each phase is built on the meta device (the real banks, frozen G_F, optimizers
and their state), and the run's life is replayed on meta tensors with no kernel launched: the state is created, the
CUDA-graph warm-up runs its D and G steps, then the two steps are captured (fast/graphs.py). A dispatch mode sees
every storage PyTorch allocates and a weak reference sees it die, and each allocation and free is fed, in order, to
`CachingAllocator`, a model of PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp, as of torch
2.x): requests rounded up to 512 B; requests up to 1 MiB served from 2 MiB segments, up to 10 MiB from 20 MiB
segments, larger ones from segments of their own size rounded up to 2 MiB; a free block is reused best-fit within
its pool and split when what remains is at least 512 B (small pool) or more than 1 MiB (large pool); freed blocks
merge with free neighbours; segments are given back only by empty_cache(). So `reserved` counts fragmentation and
cached free blocks, which is what decides whether a run fits (torch.cuda.max_memory_reserved), not just the live
bytes (max_memory_allocated).

Under CUDA graphs (torch.cuda.graph) the captured steps allocate from a private pool of their own, beside the
regular pool that holds the state and whatever the warm-up left cached. fast/graphs.py frees the warm-up's gradients
and empties the cache before capture (`release_before_capture`), so the regular pool keeps only the state; the
projection shows both policies. Beside the pools: the CUDA context, cuBLAS's workspace, an allowance for cuDNN's
workspace, the autotuner's L2-flush buffer (triton.testing.do_bench: 256 MB, freed before capture) and the data set
(uint8 videos, fast/device_data.py), placed on the GPU after capture and only when it fits, with that module's
margin, in what an 11 GiB card has left (else batches come from the host).
The figures that are not the model's own (context, workspaces) are stated once below and measured by
benchmarks/gpu_verify.py's memory stage.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MiB, GiB = 2 ** 20, 2 ** 30
BUDGET = 11 * GiB                 # the paper's GTX 1080 Ti
CONTEXT = 500 * MiB               # CUDA context with lazily loaded modules (CUDA 12; about 0.3-0.6 GiB on Hopper:
                                  # an assumption until gpu_verify measures it as total used - reserved)
CUBLAS_WORKSPACE = 32 * MiB       # torch's default cuBLAS workspace on sm_90 (CUBLAS_WORKSPACE_CONFIG :4096:8)
CUDNN_WORKSPACE = 256 * MiB       # allowance for cuDNN's convolution and LSTM workspaces (phase 1's G_F, G_V)
AUTOTUNE_FLUSH = 256 * 10 ** 6    # triton.testing.do_bench's L2-flush buffer, allocated while tiles are timed
FRAMES, SIZE = 30, 30             # a video of the data set (data.py), uint8 on the device

_SMALL, _SMALL_BUFFER, _LARGE_BUFFER, _MIN_LARGE, _ROUND_LARGE, _MIN_BLOCK = \
    MiB, 2 * MiB, 20 * MiB, 10 * MiB, 2 * MiB, 512


@dataclass
class _Block:
    segment: int
    start: int
    size: int
    free: bool = True


@dataclass
class CachingAllocator:
    """A model of one pool set (small and large) of PyTorch's CUDA caching allocator."""
    blocks: dict = field(default_factory=dict)       # segment -> [_Block] in address order
    live: dict = field(default_factory=dict)         # key -> _Block
    reserved: int = 0
    allocated: int = 0
    peak_reserved: int = 0
    peak_allocated: int = 0
    joint_peak: int = 0                              # set by Allocations: reserved of all its pools at once
    _segments: int = 0

    @staticmethod
    def round_size(n: int) -> int:
        return _MIN_BLOCK if n < _MIN_BLOCK else -(-n // _MIN_BLOCK) * _MIN_BLOCK

    @staticmethod
    def segment_size(n: int) -> int:
        if n <= _SMALL:
            return _SMALL_BUFFER
        if n < _MIN_LARGE:
            return _LARGE_BUFFER
        return -(-n // _ROUND_LARGE) * _ROUND_LARGE

    def peak_reserved_with(self, other: "CachingAllocator") -> int:
        """The peak of this pool's and `other`'s reserved bytes together (both must have been fed through the
        same Allocations mode, which records the joint peak)."""
        return max(self.joint_peak, other.joint_peak)

    def malloc(self, key, nbytes: int) -> None:
        size = self.round_size(nbytes)
        small = size <= _SMALL
        fits = [b for seg, bs in self.blocks.items() if self._small[seg] == small for b in bs
                if b.free and b.size >= size]
        if fits:
            block = min(fits, key=lambda b: (b.size, b.segment, b.start))
        else:
            seg_size = self.segment_size(size)
            seg = self._segments
            self._segments += 1
            block = _Block(seg, 0, seg_size)
            self.blocks[seg] = [block]
            self._small[seg] = small
            self.reserved += seg_size
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        remaining = block.size - size
        if (small and remaining >= _MIN_BLOCK) or (not small and remaining > _SMALL):
            blocks = self.blocks[block.segment]
            rest = _Block(block.segment, block.start + size, remaining)
            blocks.insert(blocks.index(block) + 1, rest)
            block.size = size
        block.free = False
        self.live[key] = block
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)

    def free(self, key) -> None:
        block = self.live.pop(key, None)
        if block is None:
            return
        self.allocated -= block.size
        block.free = True
        blocks = self.blocks[block.segment]
        i = blocks.index(block)
        if i + 1 < len(blocks) and blocks[i + 1].free:            # merge with the next free block
            block.size += blocks.pop(i + 1).size
        if i > 0 and blocks[i - 1].free:                          # and with the previous one
            blocks[i - 1].size += blocks.pop(i).size

    def empty_cache(self) -> None:
        for seg in [s for s, bs in self.blocks.items() if len(bs) == 1 and bs[0].free]:
            self.reserved -= self.blocks.pop(seg)[0].size
            self._small.pop(seg)

    def __post_init__(self):
        self._small = {}


class Allocations(TorchDispatchMode):
    """Every storage allocated under the mode (or `adopt`ed) is malloc'ed from the pool `self.pool` of the moment,
    and freed from its pool when it dies; live bytes and their peak as LiveBytes counted them."""

    def __init__(self, pool: CachingAllocator):
        super().__init__()
        self._pools: dict = {}
        self.pool = pool
        self.owner: dict = {}            # storage key -> pool
        self.now = self.peak = 0

    @property
    def pool(self) -> CachingAllocator:
        """The pool new allocations come from (a CUDA-graph capture switches it to the graphs' private pool)."""
        return self._pool

    @pool.setter
    def pool(self, pool: CachingAllocator) -> None:
        self._pool = self._pools.setdefault(id(pool), pool)

    def adopt(self, tensors) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._count(t.untyped_storage())

    def _count(self, storage) -> None:
        key = storage._cdata
        if key in self.owner:
            return
        size = storage.nbytes()
        self.owner[key] = self.pool
        self.pool.malloc(key, size)
        self.now += size
        self.peak = max(self.peak, self.now)
        joint = sum(p.reserved for p in self._pools.values())
        for p in self._pools.values():
            p.joint_peak = max(p.joint_peak, joint)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key, size: int) -> None:
        pool = self.owner.pop(key, None)
        if pool is not None:
            pool.free(key)
            self.now -= size

    def reset_peak(self) -> None:
        self.peak = self.now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.adopt(tree_leaves(out))
        return out


LiveBytes = Allocations      # the live-bytes view of the same counter (tests/test_memory_model.py)


def _state_tensors(state) -> list:
    from vidgan_fast.fast.graphs import trained_parts
    modules, optimizers = trained_parts(state)
    tensors = [t for _, m in modules for t in (*m.parameters(), *m.buffers())]
    tensors += [t for _, opt in optimizers for s in opt.state.values() for t in s.values()]
    for module in (state.renderer, state.frame_generator):     # phase 2: the frozen renderer, and the reference
        if module is not None:                                 # G_F that to_fast keeps beside it (checkpoints)
            tensors += [t for t in vars(module).values() if isinstance(t, torch.Tensor)]
            tensors += [*module.parameters(), *module.buffers()]
    return tensors


class MetaRuntime:
    """fast/graphs.GraphedSteps' runtime on meta tensors, for the projection: the warm-up runs its steps in the
    regular pool (the first round with do_bench's L2-flush buffer, as the autotuner times tiles then), a capture
    runs its step with the graphs' private pool, release_cache empties the regular pool's cache, and snapshots
    keep the tensors themselves (nothing to copy on meta)."""

    def __init__(self, mode: "Allocations", regular: CachingAllocator, graph: CachingAllocator, autotune: bool):
        self.mode, self.regular, self.graph, self.autotune = mode, regular, graph, autotune
        self.peaks: dict = {}

    get_rng, set_rng = staticmethod(torch.get_rng_state), staticmethod(torch.set_rng_state)

    def synchronize(self) -> None:
        pass

    @staticmethod
    def save(t):
        return t

    def release_cache(self) -> None:
        self.regular.empty_cache()

    def warm_up(self, fn, n: int) -> None:
        if self.autotune:
            flush = torch.empty(AUTOTUNE_FLUSH, dtype=torch.uint8, device="meta")
            del flush
        for _ in range(n):
            fn()

    def capture(self, fn, share_pool_with=None):
        self.mode.pool = self.graph
        try:
            return None, fn()
        finally:
            self.mode.pool = self.regular


def project_phase(cfg, phase: str, n_videos: int | None = None, arch: int = 90, autotune: bool = True) -> dict:
    """Bytes of one phase of `cfg` (a TrainConfig with fast=True) under CUDA graphs on a GPU of compute capability
    `arch` (its tiles): fast/graphs.GraphedSteps itself runs on meta tensors (MetaRuntime), so the projection
    follows what it allocates, frees and releases. Returns the allocated and reserved peaks of the regular pool and
    of the graphs' private pool, the fixed costs, the data set and the total reserved."""
    from vidgan_fast.fast.graphs import GraphedSteps
    from vidgan_fast.kernels.common import forced_target
    from vidgan_fast.lab.aot import launching_nothing
    from vidgan_fast.lab.gate import meta_fast_state
    regular, graph = CachingAllocator(), CachingAllocator()
    mode = Allocations(regular)
    with forced_target(arch=arch), launching_nothing():
        state = meta_fast_state(cfg, phase)
        mode.adopt(_state_tensors(state))
        persistent = mode.now
        runtime = MetaRuntime(mode, regular, graph, autotune)
        with mode:
            steps = GraphedSteps(state, state.phase.sample_shape, state.phase.batch, runtime=lambda _: runtime)
        steady_live = mode.now
        del steps
    data = (cfg.n_videos if n_videos is None else n_videos) * FRAMES * SIZE * SIZE
    fixed = CONTEXT + CUBLAS_WORKSPACE + CUDNN_WORKSPACE
    reserved = regular.peak_reserved_with(graph)
    from vidgan_fast.fast.device_data import MARGIN          # the product's own rule (fast/device_data.py)
    data_fits = fixed + reserved + data + MARGIN <= BUDGET
    return {"phase": phase, "persistent": persistent, "steady_live": steady_live,
            "regular_reserved_peak": regular.peak_reserved, "graph_reserved": graph.peak_reserved,
            "reserved": reserved, "fixed": fixed, "data": data, "data_on_gpu": data_fits,
            "total": fixed + reserved + (data if data_fits else 0)}


def project(cfg, precision: str | None = None, arch: int = 90) -> list[dict]:
    """Both phases of `cfg` under `precision` (default: cfg's), as --fast trains them on a GPU."""
    from dataclasses import replace
    precision = precision or cfg.precision
    cfg = replace(cfg, fast=True, tf32=precision == "tf32", bf16=precision == "bf16")
    return [project_phase(cfg, phase, arch=arch) for phase in ("frames", "video")]
