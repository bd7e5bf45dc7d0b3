"""Shared timing harness: warm-up, median of many repeats, inputs rotated over a few
pre-made buffers so that caches do not flatter, CUDA events on a GPU (perf_counter on CPU), peak GPU memory,
and the device's measured matrix rate (the denominator of "fraction of matrix rate").
"""
from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    peak_bytes: int | None     # torch.cuda.max_memory_allocated since the last peak reset; None on CPU
    peak_reserved_bytes: int | None = None   # torch.cuda.max_memory_reserved (caching allocator + graph pools)

    def to_dict(self) -> dict:
        return dict(median_s=self.median_s, min_s=self.min_s, max_s=self.max_s, repeats=self.repeats,
                    peak_bytes=self.peak_bytes, peak_reserved_bytes=self.peak_reserved_bytes)


def resolve_device(device: torch.device | str) -> torch.device:
    """'auto' -> cuda where a GPU is available, else cpu; anything else as torch.device."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Free the cached blocks and start the peak counters afresh (allocated and reserved), on CUDA."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_call(fn: Callable[[Any], Any], inputs: Sequence[Any], device: torch.device | str,
              warmup: int = 3, repeats: int = 20, reset_peak: bool = True) -> Timing:
    """Median wall time of fn(inputs[i % len(inputs)]) over `repeats` calls after `warmup` calls.

    On CUDA each call is bracketed by CUDA events (so only device time between them counts, launch gaps
    included); on CPU by time.perf_counter. Peak memory is reset before the warm-up unless reset_peak is False
    (the report resets it before it builds a column, so that CUDA-graph capture and compilation count too).
    """
    device = torch.device(device)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_call: need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if len(inputs) == 0:
        raise ValueError("time_call: need at least one input buffer to rotate over")
    cuda = device.type == "cuda"
    if cuda and reset_peak:
        reset_peak_memory(device)
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    synchronize(device)
    times = []
    if cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for i, (start, end) in enumerate(events):
            start.record()
            fn(inputs[(warmup + i) % len(inputs)])
            end.record()
        synchronize(device)
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        for i in range(repeats):
            t0 = time.perf_counter()
            fn(inputs[(warmup + i) % len(inputs)])
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    reserved = torch.cuda.max_memory_reserved(device) if cuda else None
    return Timing(statistics.median(times), min(times), max(times), repeats, peak, reserved)


def _matmul_rate(device: torch.device, n: int, dtype: torch.dtype, repeats: int) -> float:
    a = [torch.randn(n, n, device=device, dtype=dtype) for _ in range(2)]
    b = [torch.randn(n, n, device=device, dtype=dtype) for _ in range(2)]
    t = time_call(lambda ab: torch.mm(*ab), list(zip(a, b)), device, warmup=2, repeats=repeats)
    return 2 * n ** 3 / t.median_s


@functools.lru_cache(maxsize=None)
def matrix_rate(device: str = "cpu", threads: int | None = None) -> dict[str, float | None]:
    """Measured dense matmul rate of `device` in FLOP/s: {'fp32': ..., 'tf32': ... (None off CUDA)}.

    CUDA: 8192^3 matmuls, fp32 with TF32 off and with TF32 on. CPU: a 1024^3 float32 matmul with the
    current torch thread count (`threads` only keys the cache: pass torch.get_num_threads()).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return {"fp32": _matmul_rate(device, 1024, torch.float32, 10), "tf32": None}
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        fp32 = _matmul_rate(device, 8192, torch.float32, 10)
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = _matmul_rate(device, 8192, torch.float32, 10)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return {"fp32": fp32, "tf32": tf32}


def device_info(device: torch.device | str) -> dict:
    """Device name, torch / Triton / Python versions, for every recorded figure."""
    import platform
    device = torch.device(device)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        import os
        name = f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return dict(device=str(device), name=name, torch=torch.__version__, triton=triton_version,
                cuda=torch.version.cuda, python=platform.python_version())


# ------------------------------------------------------------------------------------ what is timed

COLUMNS = ("reference", "compile", "vmap", "fast")


def pin_tf32(enabled: bool) -> dict:
    """Set TF32 for cuDNN convolutions and cuBLAS matmuls (inductor's generated matmuls follow the latter) to
    `enabled`; the Triton kernels get the same choice as precision='tf32' / 'fp32'. Returns the saved flags."""
    saved = tf32_flags(None)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    return saved


def restore_tf32(saved: dict) -> None:
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved["cudnn"], saved["matmul"]


def tf32_flags(triton: bool | None) -> dict:
    """The TF32 switches in effect now: cuDNN, cuBLAS matmul, and the Triton kernels' (as passed)."""
    return {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32,
            "triton": triton}


@dataclass
class Case:
    """One row of the report: an op or a training step, its FLOPs, rotated inputs and one entry per column.

    columns[c] is a zero-argument builder returning fn(input) (built only when that column is timed, so one
    column's models live at a time), a string: why column c is skipped ('unavailable: <why>' for a fast column
    that cannot be built here), or None: column c does not apply.
    """
    name: str
    kind: str                         # "op" or "step"
    flops: int
    inputs: list
    columns: dict
    labels: dict
    size: str = ""
    compiled: bool = False            # the compile and vmap columns run torch.compile (warm-up covers compiling)


@dataclass
class ColumnSettings:
    """How each column runs on `device`: compile mode, whether the fast modules can be built, and the labels that
    say so."""
    device: torch.device
    kind: str
    compile_enabled: bool = True
    compile_mode: str | None = None      # torch.compile's mode (default: max-autotune on a GPU, inductor's on CPU)
    compile_backend: str | None = None   # torch.compile's backend (default inductor; 'eager': Dynamo only)

    @property
    def fast_unavailable(self) -> str | None:
        """Why the fast modules cannot be built on this device (one line), None where Triton runs: a CUDA GPU, or
        CPU tensors under TRITON_INTERPRET=1 (fast/backend.py)."""
        from vidgan_fast.fast.backend import triton_unavailable_reason
        return triton_unavailable_reason(self.device)

    @property
    def compile_kwargs(self) -> dict:
        # dynamic=False: every case has fixed shapes; automatic dynamic shapes only add guards (and, for the
        # phase 2 steps on torch 2.13 CPU, an inductor failure on the symbolic video-projection sizes)
        backend = {} if self.compile_backend is None else {"backend": self.compile_backend}
        if self.compile_backend not in (None, "inductor"):
            return {**backend, "dynamic": False}          # modes are inductor's
        if self.compile_mode is not None:
            return {**backend, "mode": self.compile_mode, "dynamic": False}
        if self.device.type != "cuda":
            return {**backend, "dynamic": False}    # CPU: inductor's default mode (max-autotune, CUDA graphs: GPU)
        return {**backend, "mode": "max-autotune", "dynamic": False}

    @property
    def labels(self) -> dict:
        kw = self.compile_kwargs
        how = (f"backend={kw['backend']}" if kw.get("backend", "inductor") != "inductor"
               else f"mode={kw.get('mode', 'default')}")
        if self.fast_unavailable is not None:
            fast = "fast (Triton): not built here"
        elif self.device.type == "cuda":
            fast = "fast (Triton)" + (", CUDA graphs" if self.kind == "step" else "")
        else:
            fast = "fast (Triton interpreter on CPU tensors: the kernels run, no speed measure)"
        if self.kind == "step":
            compiled = (f"torch.compile({how}, dynamic=False) of the reference step: forward+loss "
                        f"fullgraph=True, optimizer step compiled, NVTX off")
        else:
            compiled = f"torch.compile(reference, {how}, dynamic=False)"
        vmap = ("K discriminators stacked (torch.func.stack_module_state) through torch.func.vmap of one "
                "functional_call" + (", RMSprop(foreach=True) on the stacks" if self.kind == "step" else ""))
        vmap += (f", torch.compile as the compile column (fullgraph=True, {how})" if self.compile_enabled
                 else ", eager (compile disabled)")
        rows = "steps: " if self.kind == "step" else "ops: "
        return {"reference": "eager reference", "compile": rows + compiled, "vmap": rows + vmap, "fast": fast}

    def columns(self, factory, vmap: bool = True) -> dict:
        """One entry per column: factory(column) builders; vmap=False: the row has no vmap column (None). The fast
        column is the string 'unavailable: <why>' where the fast modules cannot be built (nothing stands in)."""
        import functools
        out = {c: functools.partial(factory, c) for c in COLUMNS}
        if not self.compile_enabled:
            out["compile"] = "skipped: compile disabled (--no-compile; the default on a CPU, --compile times it)"
        if not vmap:
            out["vmap"] = None
        if self.fast_unavailable is not None:
            out["fast"] = UNAVAILABLE + self.fast_unavailable
        return out


UNAVAILABLE = "unavailable: "       # the prefix of a fast cell that was not run, followed by the one-line reason


def column_settings(device: torch.device | str, kind: str, compile_enabled: bool = True,
                    compile_mode: str | None = None, compile_backend: str | None = None) -> ColumnSettings:
    if kind not in ("op", "step"):
        raise ValueError(f"case kind must be 'op' or 'step', got {kind!r}")
    return ColumnSettings(torch.device(device), kind, compile_enabled, compile_mode, compile_backend)


def bench_case(benchmark, case: Case, column: str, rounds: int, warmup: int = 3) -> None:
    """pytest-benchmark one column of `case`: skip with the reason if it cannot run, warm up (compilation,
    CUDA graph recording), then time rounds with inputs rotated and the device synchronised after each call."""
    import pytest
    entry = case.columns.get(column)
    if entry is None or isinstance(entry, str):
        pytest.skip(entry or f"no {column} column for this row")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if column in ("compile", "vmap"):
        torch._dynamo.reset()
    fn = entry()
    for i in range(warmup):
        fn(case.inputs[i % len(case.inputs)])
    synchronize(device)
    counter = iter(range(10 ** 9))

    def run(x):
        fn(x)
        synchronize(device)

    benchmark.extra_info.update(case=case.name, column=case.labels.get(column, column), flops=case.flops)
    benchmark.pedantic(run, setup=lambda: ((case.inputs[next(counter) % len(case.inputs)],), {}),
                       rounds=rounds, warmup_rounds=1)
