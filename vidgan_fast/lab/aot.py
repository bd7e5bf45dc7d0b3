"""Kernel launches recorded without a GPU, and compiled ahead of time for real GPU targets.

    with record_calls() as calls:             # kernel[grid](...) records, launches nothing
        run_the_fast_step_on_meta_tensors()
    calls[0].launch                           # the specialization a GPU would compile (deduplicated: Launch)
    calls[0].grid, calls[0].args              # the launch itself: programs and arguments (tensors as TensorArg)
    report = compile_launch(calls[0].launch, GPUTarget("cuda", 90, 32))   # PTX + cubin via the wheel's ptxas
    report.registers, report.spill_bytes, report.shared_bytes, report.mma, report.cubin

The Triton interpreter (TRITON_INTERPRET=1) runs kernels on CPU tensors but accepts code the real compiler rejects
and ignores `input_precision`. The recorder binds the launch arguments with Triton's own binder for a CUDA backend,
so the signature, constexprs and divisibility attributes are exactly those a launch on a GPU would compile (tensors
may live on the `meta` device: only their dtype and alignment matter). It needs compiled-mode kernels: import them in
a process without TRITON_INTERPRET. Registers and spills come from ptxas' own -v report (each compile uses a fresh
Triton cache, so that ptxas always runs). The recorded calls also feed the per-launch cost model (lab/cost.py): the
grid says how many programs run, and TensorArg says which memory each pointer argument addresses.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from dataclasses import dataclass, field

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
_BINDING_TARGET = GPUTarget("cuda", 80, 32)        # binding (dtype, alignment) does not depend on the arch


@dataclass(frozen=True)
class Launch:
    """One kernel specialization as a GPU launch would compile it."""
    kernel: JITFunction
    signature: tuple          # ((name, type), ...): '*fp32', 'i32', 'constexpr', ...
    constexprs: tuple         # ((path, value), ...)
    attrs: tuple              # ((path, attributes), ...): e.g. tt.divisibility 16
    options: tuple            # ((name, value), ...) of LAUNCH_OPTIONS given at the launch

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def constant(self, name: str):
        index = self.kernel.arg_names.index(name)
        return dict(self.constexprs).get((index,))

    def option(self, name: str, default=None):
        return dict(self.options).get(name, default)

    def describe(self) -> str:
        """The constexprs and launch options, short: the row label of a specialization."""
        names = self.kernel.arg_names
        parts = [f"{names[path[0]]}={value}" for path, value in self.constexprs if len(path) == 1]
        parts += [f"{k}={v}" for k, v in self.options]
        return " ".join(parts)


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument as the kernel sees it: a pointer into some storage (meta tensors carry no address)."""
    dtype: str                # torch dtype name, e.g. 'float32'
    storage: int              # identity of its storage within one recording
    offset: int               # bytes from the start of the storage
    nbytes: int               # bytes of the tensor itself (numel x element size)

    @property
    def element_bytes(self) -> int:
        return {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8, "int32": 4, "int64": 8, "uint8": 1,
                "int8": 1, "bool": 1}[self.dtype]


@dataclass
class Call:
    """One launch: its specialization, grid and arguments (tensors as TensorArg, tuples kept)."""
    launch: Launch
    module: str               # where the kernel is defined (to find it in another process)
    grid: tuple               # (x, y, z) programs
    args: tuple               # positional arguments
    kwargs: dict = field(default_factory=dict)      # constexprs and launch options given by keyword

    @property
    def name(self) -> str:
        return self.launch.name

    @property
    def programs(self) -> int:
        x, y, z = self.grid
        return x * y * z

    def tensors(self, arguments=None) -> list[TensorArg]:
        """The TensorArgs of the call (of `arguments` only: positions or keywords), each storage once."""
        out, seen = [], set()

        def walk(v):
            if isinstance(v, TensorArg):
                if v.storage not in seen:
                    seen.add(v.storage)
                    out.append(v)
            elif isinstance(v, tuple):
                for item in v:
                    walk(item)
        for where, v in [*enumerate(self.args), *self.kwargs.items()]:
            if arguments is None or where in arguments:
                walk(v)
        return out

    def argument_bytes(self, arguments) -> int:
        """Bytes of the tensors held by `arguments` (each storage once)."""
        return sum(t.nbytes for t in self.tensors(arguments))


def _tensor_arg(t) -> TensorArg:
    storage = t.untyped_storage()
    return TensorArg(str(t.dtype).removeprefix("torch."), storage._cdata, t.storage_offset() * t.element_size(),
                     t.numel() * t.element_size())


def _describe_args(value):
    if hasattr(value, "data_ptr") and hasattr(value, "untyped_storage"):
        return _tensor_arg(value)
    if isinstance(value, tuple):
        return tuple(_describe_args(v) for v in value)
    return value


def described_call(grid, bound: dict, args: tuple, kwargs: dict) -> tuple:
    """What both launch recorders (here and sectors.record_specs) keep of a `kernel[grid](*args, **kwargs)`: the
    grid as three ints (a callable grid called with the bound arguments), the positional arguments and the keyword
    arguments described (tensors as TensorArg)."""
    if callable(grid):
        grid = grid(bound)
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    return grid, _describe_args(tuple(args)), {k: _describe_args(v) for k, v in kwargs.items()}


@contextlib.contextmanager
def record_calls():
    """Inside: every `kernel[grid](...)` of a compiled-mode kernel appends its Call to the yielded list and returns
    without running anything."""
    calls: list[Call] = []
    launches: dict = {}
    backend = make_backend(_BINDING_TARGET)
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        binder = create_function_from_signature(self.signature, self.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        _, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, specialization, options)
        launch = Launch(self, tuple(signature.items()), tuple(sorted(constexprs.items())),
                        tuple(sorted((k, tuple(map(tuple, v))) for k, v in attrs.items())),
                        tuple((k, kwargs[k]) for k in LAUNCH_OPTIONS if k in kwargs))
        launch = launches.setdefault(launch, launch)
        calls.append(Call(launch, self.fn.__module__, *described_call(grid, dict(bound), args, kwargs)))

    JITFunction.run = record
    try:
        yield calls
    finally:
        JITFunction.run = original


@contextlib.contextmanager
def record_launches():
    """Inside: every `kernel[grid](...)` appends its Launch (deduplicated, in first-launch order) to the yielded
    list and returns without running anything."""
    launches: list[Launch] = []
    with record_calls() as calls:
        yield launches
    for call in calls:
        if call.launch not in launches:
            launches.append(call.launch)


@dataclass
class CompileReport:
    """What the compiler made of one Launch for one target."""
    launch: Launch
    arch: int
    error: str | None = None
    registers: int | None = None
    spill_bytes: int | None = None        # spill stores + spill loads (ptxas -v)
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    num_warps: int | None = None
    mma: str = "none"                     # tensor-core instruction kind in the PTX: wgmma / mma.<type> / none
    ctas_per_sm: int | None = None
    ptx: str = field(default="", repr=False)
    cubin: bytes = field(default=b"", repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


# Per-SM limits (CUDA occupancy tables): registers, shared memory bytes, threads, resident CTAs.
SM_LIMITS = {61: (65536, 98304, 2048, 32), 75: (65536, 65536, 1024, 16), 80: (65536, 167936, 2048, 32),
             86: (65536, 102400, 1536, 16), 89: (65536, 102400, 1536, 24), 90: (65536, 233472, 2048, 32)}


def ctas_per_sm(arch: int, registers: int, shared: int, num_warps: int) -> int:
    """Resident CTAs per SM from registers (allocated per warp in units of 256), shared memory and threads."""
    regs, smem, threads, max_ctas = SM_LIMITS[arch]
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = regs // (per_warp * num_warps)
    by_smem = smem // shared if shared else max_ctas
    return max(0, min(by_regs, by_smem, threads // (32 * num_warps), max_ctas))


def mma_kind(ptx: str) -> str:
    """The tensor-core instruction the PTX uses, e.g. 'wgmma.tf32', 'mma.bf16', or 'none' (FMA only)."""
    m = re.search(r"\bwgmma\.mma_async\.\S*?\.(tf32|bf16|f16)\b", ptx)
    if m:
        return f"wgmma.{m.group(1)}"
    m = re.search(r"\bmma\.sync\.aligned\.\S*?\.(tf32|bf16|f16)\b", ptx)
    return f"mma.{m.group(1)}" if m else "none"


_PTXAS_USAGE = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def assemble(base: CompileReport, arch: int) -> CompileReport:
    """`base`'s PTX assembled by ptxas for another arch of the same lowering (sm_86 or sm_89 from sm_80's PTX:
    Triton lowers them alike; only ptxas' register allocation and the SM's limits differ)."""
    import subprocess
    report = CompileReport(base.launch, arch, error=base.error, shared_bytes=base.shared_bytes,
                           num_warps=base.num_warps, mma=base.mma, ptx=base.ptx)
    if base.error:
        return report
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory(prefix="vidgan-ptxas-") as tmp:
        src, out = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(re.sub(r"^\.target sm_\d+a?", f".target sm_{arch}", base.ptx, flags=re.M))
        proc = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}", src, "-o", out], capture_output=True, text=True)
        if proc.returncode != 0:
            report.error = f"ptxas: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}"
            return report
        with open(out, "rb") as f:
            report.cubin = f.read()
    text = proc.stdout + proc.stderr
    used, spill = _PTXAS_USAGE.search(text), _PTXAS_SPILL.search(text)
    report.registers = int(used.group(1)) if used else None
    if spill:
        report.stack_bytes, report.spill_bytes = int(spill.group(1)), int(spill.group(2)) + int(spill.group(3))
    if report.registers is not None and arch in SM_LIMITS:
        report.ctas_per_sm = ctas_per_sm(arch, report.registers, report.shared_bytes, report.num_warps)
    return report


def compile_launch(launch: Launch, target: GPUTarget) -> CompileReport:
    """Compile `launch` for `target` down to a cubin; a compile error is reported, not raised."""
    report = CompileReport(launch, target.arch)
    src = ASTSource(launch.kernel, dict(launch.signature), dict(launch.constexprs),
                    {k: [list(a) for a in v] for k, v in launch.attrs})
    log = io.StringIO()
    saved = triton.knobs.nvidia.dump_ptxas_log, triton.knobs.cache.dir
    triton.knobs.nvidia.dump_ptxas_log = True            # ptxas -v's report goes to stdout
    try:
        # A fresh cache: a hit in Triton's cache would skip ptxas, and with it the register and spill report.
        with contextlib.redirect_stdout(log), tempfile.TemporaryDirectory(prefix="vidgan-aot-") as cache:
            triton.knobs.cache.dir = cache
            compiled = triton.compile(src, target=target, options=dict(launch.options))
    except Exception as e:                                # noqa: BLE001 - a failed compile is a result
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        where, why = (lines[0], lines[-1]) if lines else ("", "")
        report.error = f"{type(e).__name__}: {why}" + (f" ({where})" if where != why else "")
        return report
    finally:
        triton.knobs.nvidia.dump_ptxas_log, triton.knobs.cache.dir = saved
    text = log.getvalue()
    used, spill = _PTXAS_USAGE.search(text), _PTXAS_SPILL.search(text)
    report.registers = int(used.group(1)) if used else None
    if spill:
        report.stack_bytes, report.spill_bytes = int(spill.group(1)), int(spill.group(2)) + int(spill.group(3))
    report.shared_bytes = compiled.metadata.shared
    report.num_warps = compiled.metadata.num_warps
    report.ptx = compiled.asm["ptx"]
    report.cubin = compiled.asm.get("cubin", b"")
    report.mma = mma_kind(report.ptx)
    if report.registers is not None and target.arch in SM_LIMITS:
        report.ctas_per_sm = ctas_per_sm(target.arch, report.registers, report.shared_bytes, report.num_warps)
    return report


@contextlib.contextmanager
def launching_nothing():
    """Inside, compiled or interpreted Triton: every kernel launch returns without running (compiled: recorded as a
    Call and dropped). The fast modules run on meta tensors this way: their wrappers allocate outputs as on a GPU,
    nothing is computed (lab/memory.py counts the allocations)."""
    from vidgan_fast.kernels.mode import interpreting
    if not interpreting():
        with record_calls():
            yield
        return
    from triton.runtime.interpreter import InterpretedFunction
    run = InterpretedFunction.run
    InterpretedFunction.run = lambda self, *args, grid, warmup, **kwargs: None
    try:
        yield
    finally:
        InterpretedFunction.run = run
