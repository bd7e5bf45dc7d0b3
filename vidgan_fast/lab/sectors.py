"""L2 -> SM traffic of a launch, read from the kernel's own addresses: the kernel's code runs under Triton's
interpreter on a sample of the real grid's programs, with every load and store hooked, and the unique 32-byte
sectors each load or store touches are counted against the bytes it uses.

    traffic = measure(call, samples=8)           # call: lab/aot.Call (or its CallSpec); in an interpreted process
    traffic.sectors_read, traffic.read_efficiency, traffic.spread, traffic.sites

No hand-written mirror of a kernel: whatever the kernel computes as addresses is what is counted, so the count
follows the kernels when they change. Nothing is read or written: every pointer argument gets a fake address
(storages 2**40 bytes apart, aligned as the CUDA allocator aligns them), loads return zeros, stores are dropped, so
paper sizes cost no memory. What a load costs is counted per tile load per program: the unique sectors of the
elements its mask keeps (a CTA's warps share what one of them fetched; across loop iterations and across programs
nothing is assumed to stay in L1). Loop trips per program are the most times one load site ran in that program;
dots (tl.dot) are counted with their M x N x K.

The launches' programs are not all alike (edge tiles, residue classes), so the sample is the first and the last
program plus uniformly drawn ones (fixed seed), and the report gives the spread across the sample beside the
extrapolation (mean per program x programs). A grid no larger than the sample is traced whole (exact).

Needs Triton's interpreter: call it in a process with TRITON_INTERPRET=1 (trace_in_subprocess starts one).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import random
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

SECTOR = 32
_SLOT = 40          # storage i lives at (i + 1) << _SLOT: 1 TiB apart, so an address names its storage


@dataclass(frozen=True)
class CallSpec:
    """What another process needs to replay a launch: where the kernel lives, the grid, the arguments."""
    module: str
    name: str
    grid: tuple
    args: tuple
    kwargs: dict

    @classmethod
    def of(cls, call) -> "CallSpec":
        return cls(call.module, call.name, call.grid, call.args, dict(call.kwargs))


@dataclass
class SiteCount:
    """One load or store site of the kernel source, summed over the traced programs."""
    calls: int = 0
    sectors: int = 0
    used_bytes: int = 0


@dataclass
class ProgramTrace:
    pid: tuple
    sectors_read: int = 0
    sectors_written: int = 0
    used_read: int = 0            # bytes the loads keep (unique addresses x element size)
    used_written: int = 0
    dots: int = 0
    dot_flops: int = 0
    trips: int = 0                # the most times one load site ran: the main loop's iterations
    sites: dict = field(default_factory=lambda: defaultdict(SiteCount))   # (kind, "file:line") -> SiteCount
    read_storages: set = field(default_factory=set)
    written_storages: set = field(default_factory=set)


@dataclass
class Traffic:
    """A launch's traffic, extrapolated from its traced programs to the whole grid."""
    programs: int
    traced: int
    sectors_read: float
    sectors_written: float
    used_read: float
    used_written: float
    dots: float
    dot_flops: float
    trips: float                                   # mean main-loop iterations per program
    spread: dict                                   # per-program sectors (read + written): min, mean, max
    sites: dict                                    # (kind, site) -> SiteCount, per program (mean)
    read_args: set                                 # arguments (position or keyword) the kernel loads from
    written_args: set                              # ... and stores to

    @property
    def l2_bytes(self) -> float:
        return SECTOR * (self.sectors_read + self.sectors_written)

    @property
    def read_efficiency(self) -> float:
        return self.used_read / (SECTOR * self.sectors_read) if self.sectors_read else 1.0

    @property
    def write_efficiency(self) -> float:
        return self.used_written / (SECTOR * self.sectors_written) if self.sectors_written else 1.0


def sample_programs(grid, samples: int, seed: int = 0) -> list[tuple]:
    """The programs to trace: all of them when the grid has at most `samples`, else the first, the last and
    uniformly drawn others (fixed seed)."""
    gx, gy, gz = grid
    n = gx * gy * gz

    def pid(i):
        return (i % gx, (i // gx) % gy, i // (gx * gy))
    if n <= samples:
        return [pid(i) for i in range(n)]
    rest = random.Random(seed).sample(range(1, n - 1), max(0, samples - 2))
    return [pid(i) for i in [0, *sorted(rest), n - 1]]


class _Fake:
    """A pointer argument with a fake address: what Triton's interpreter needs of a tensor (data_ptr, dtype)."""

    def __init__(self, address: int, dtype: str):
        import torch
        self.address, self.dtype = address, getattr(torch, dtype)

    def data_ptr(self) -> int:
        return self.address


def _fake_args(spec: CallSpec):
    """(args, kwargs, {slot: argument}) with every TensorArg replaced by a fake pointer; `argument` is the
    position (or keyword) of the top-level argument that holds it (a tuple argument holds several)."""
    from vidgan_fast.lab.aot import TensorArg
    slots: dict = {}
    owner: dict = {}

    def fake(v, where):
        if isinstance(v, TensorArg):
            slot = slots.setdefault(v.storage, len(slots) + 1)
            owner.setdefault(slot, where)
            return _Fake((slot << _SLOT) + v.offset, v.dtype)
        if isinstance(v, tuple):
            return tuple(fake(x, where) for x in v)
        return v
    args = tuple(fake(a, i) for i, a in enumerate(spec.args))
    kwargs = {k: fake(v, k) for k, v in spec.kwargs.items()}
    return args, kwargs, owner


@functools.lru_cache(maxsize=None)
def _kernel_dir() -> str:
    return os.path.dirname(importlib.import_module("vidgan_fast.kernels").__file__)


def _site() -> str:
    """file:line of the innermost kernel-source frame that made the current load or store."""
    frame, kernels = sys._getframe(2), _kernel_dir()
    while frame is not None:
        if frame.f_code.co_filename.startswith(kernels):
            return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


@contextlib.contextmanager
def _hooked(trace_of):
    """Inside: the interpreter's loads and stores are counted into trace_of() (and return zeros / do nothing),
    its dots are counted too."""
    from triton.runtime import interpreter as interp
    b = interp.interpreter_builder
    saved = {name: getattr(b, name) for name in ("create_masked_load", "create_masked_store", "create_dot")}

    def count(kind, ptrs, mask, elem):
        t = trace_of()
        addrs = np.asarray(ptrs.data).astype(np.uint64).ravel()
        keep = np.broadcast_to(np.asarray(mask.data, dtype=bool), np.asarray(ptrs.data).shape).ravel()
        addrs = np.unique(addrs[keep])
        sectors = np.unique(addrs >> np.uint64(5)).size
        used = addrs.size * elem
        s = t.sites[(kind, _site())]
        s.calls, s.sectors, s.used_bytes = s.calls + 1, s.sectors + sectors, s.used_bytes + used
        storages = set((addrs >> np.uint64(_SLOT)).tolist())
        if kind == "load":
            t.sectors_read += sectors
            t.used_read += used
            t.read_storages |= storages
        else:
            t.sectors_written += sectors
            t.used_written += used
            t.written_storages |= storages

    def load(ptrs, mask, other, cache_policy, is_volatile):
        dtype_tt = ptrs.get_element_ty()
        np_dtype = interp._get_np_dtype(dtype_tt)
        count("load", ptrs, mask, np.dtype(np_dtype).itemsize)
        return interp.TensorHandle(np.zeros(np.asarray(ptrs.data).shape, dtype=np_dtype), dtype_tt)

    def store(ptrs, value, mask, cache_policy):
        count("store", ptrs, mask, np.asarray(value.data).dtype.itemsize)

    def dot(a, bb, d, input_precision, max_num_imprecise_acc):
        t = trace_of()
        shape_a, shape_b = np.asarray(a.data).shape, np.asarray(bb.data).shape
        t.dots += 1
        t.dot_flops += 2 * int(np.prod(shape_a[:-1])) * shape_a[-1] * shape_b[-1]
        return saved["create_dot"](a, bb, d, input_precision, max_num_imprecise_acc)

    b.create_masked_load, b.create_masked_store, b.create_dot = load, store, dot
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        for name, fn in saved.items():
            setattr(b, name, fn)


@contextlib.contextmanager
def record_specs():
    """Inside, under the interpreter: every `kernel[grid](...)` appends its CallSpec to the yielded list and runs
    nothing (the interpreted twin of lab/aot.record_calls, for tests and for tracing in one process)."""
    from triton.runtime.interpreter import InterpretedFunction
    from vidgan_fast.lab.aot import described_call
    specs: list[CallSpec] = []
    run = InterpretedFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        bound = {**dict(zip(self.arg_names, args)), **kwargs}
        specs.append(CallSpec(self.fn.__module__, self.fn.__name__, *described_call(grid, bound, args, kwargs)))

    InterpretedFunction.run = record
    try:
        yield specs
    finally:
        InterpretedFunction.run = run


def trace(spec: CallSpec, programs) -> tuple[list[ProgramTrace], dict]:
    """Run the programs `programs` of the launch `spec` under the interpreter with fake addresses; returns their
    traces and {slot: argument} (slot = address >> 40; argument: lab/sectors._fake_args)."""
    from triton.runtime import interpreter as interp
    from vidgan_fast.kernels.mode import interpreting
    if not interpreting():
        raise RuntimeError("sectors.trace needs Triton's interpreter: set TRITON_INTERPRET=1 before importing triton "
                           "(or use trace_in_subprocess)")
    kernel = getattr(importlib.import_module(spec.module), spec.name)
    fn = kernel.rewrite()
    args, kwargs, owners = _fake_args(spec)
    argspec = inspect.getfullargspec(fn)
    kwargs = {k: v for k, v in kwargs.items() if k in argspec.args or k in argspec.kwonlyargs}
    constexprs = interp.GridExecutor(fn, kernel.arg_names, spec.grid).constexprs
    bound = inspect.getcallargs(fn, *args, **kwargs)
    bound = {name: v if name in constexprs else interp._implicit_cvt(v) for name, v in bound.items()}
    traces: list[ProgramTrace] = []
    scope = interp._patch_lang(fn)
    try:
        with _hooked(lambda: traces[-1]):
            interp.interpreter_builder.set_grid_dim(*spec.grid)
            for pid in programs:
                traces.append(ProgramTrace(tuple(pid)))
                interp.interpreter_builder.set_grid_idx(*pid)
                fn(**bound)
                t = traces[-1]
                t.trips = max((s.calls for (kind, _), s in t.sites.items() if kind == "load"), default=0)
    finally:
        scope.restore()
    return traces, owners


def measure(spec, samples: int = 8, seed: int = 0) -> Traffic:
    """The launch's traffic from `samples` traced programs, extrapolated to its grid."""
    spec = spec if isinstance(spec, CallSpec) else CallSpec.of(spec)
    programs = sample_programs(spec.grid, samples, seed)
    traces, owners = trace(spec, programs)
    n, k = spec.grid[0] * spec.grid[1] * spec.grid[2], len(traces)
    scale = n / k

    def total(attr):
        return scale * sum(getattr(t, attr) for t in traces)
    per_program = [t.sectors_read + t.sectors_written for t in traces]
    sites: dict = defaultdict(SiteCount)
    for t in traces:
        for key, s in t.sites.items():
            acc = sites[key]
            acc.calls, acc.sectors, acc.used_bytes = acc.calls + s.calls, acc.sectors + s.sectors, \
                acc.used_bytes + s.used_bytes
    sites = {key: SiteCount(s.calls / k, s.sectors / k, s.used_bytes / k) for key, s in sites.items()}
    read = {owners[s] for t in traces for s in t.read_storages if s in owners}
    written = {owners[s] for t in traces for s in t.written_storages if s in owners}
    return Traffic(n, k, total("sectors_read"), total("sectors_written"), total("used_read"),
                   total("used_written"), total("dots"), total("dot_flops"), sum(t.trips for t in traces) / k,
                   {"min": min(per_program), "mean": sum(per_program) / k, "max": max(per_program)}, sites, read,
                   written)


def measure_all(specs, samples: int = 8, seed: int = 0) -> list[Traffic]:
    return [measure(s, samples, seed) for s in specs]


def trace_in_subprocess(specs, samples: int = 8, seed: int = 0) -> list[Traffic]:
    """measure() of every spec, in a fresh Python process running Triton's interpreter (for callers in a
    compiled-mode process, such as the per-launch model, whose calls come from the compiled-mode recorder)."""
    from vidgan_fast.lab.processes import call_in_mode
    specs = [s if isinstance(s, CallSpec) else CallSpec.of(s) for s in specs]
    return call_in_mode("interpreted", __name__, "measure_all", specs, samples, seed)
