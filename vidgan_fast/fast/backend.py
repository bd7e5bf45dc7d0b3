"""Which implementation a fast op runs: the Triton kernel, or its plain-PyTorch reference twin.

Every fast op takes `impl='auto'|'triton'|'ref'`:
- 'triton': the Triton kernel (on a CUDA GPU Triton can target, or on CPU tensors under TRITON_INTERPRET=1);
  raises if it cannot run.
- 'ref': the plain PyTorch twin (same mathematics, grouped convolutions etc.), runs everywhere.
- 'auto': 'triton' where it can run, otherwise 'ref' with one warning that says why.

`triton_unavailable_reason` is the one answer to "can Triton run here?" and `fallback_warning` the one warning:
the ops' 'auto' and the training run's --fast decision (vidgan_fast/execution.py) both use them.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings

import torch

from vidgan_fast.kernels.mode import PRECISIONS, interpreting

IMPLS = ("auto", "triton", "ref")


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else a ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


_recording = False      # inside recording_launches(): launches on meta tensors are recorded, not run


@contextlib.contextmanager
def recording_launches():
    """Shape-only capture (the compile gate): the fast ops take their Triton path on `meta` tensors and every
    kernel launch is recorded (kernels/aot.py) instead of run. Yields the list of recorded launches."""
    global _recording
    from vidgan_fast.kernels.aot import record_launches
    if interpreting():
        raise RuntimeError("recording launches needs compiled-mode kernels: unset TRITON_INTERPRET")
    with record_launches() as launches:
        _recording = True
        try:
            yield launches
        finally:
            _recording = False


@contextlib.contextmanager
def launching_nothing():
    """Shape only, compiled or interpreted Triton: the fast ops take their Triton path on `meta` tensors, whose
    outputs their wrappers allocate as on a GPU, and no kernel runs (vidgan_fast/memory_model.py counts those
    allocations)."""
    global _recording
    if not interpreting():
        with recording_launches():
            yield
        return
    from triton.runtime.interpreter import InterpretedFunction
    run = InterpretedFunction.run
    InterpretedFunction.run = lambda self, *args, grid, warmup, **kwargs: None
    _recording = True
    try:
        yield
    finally:
        _recording = False
        InterpretedFunction.run = run


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def _cuda_reason(index: int) -> str | None:
    major, minor = torch.cuda.get_device_capability(index)
    if major < 7:   # Triton targets compute capability 7.0 and newer (Volta+); a 1080 Ti (6.1) is not supported
        return f"GPU {torch.cuda.get_device_name(index)} (sm_{major}{minor}) is older than Triton supports (sm_70)"
    return None


def triton_unavailable_reason(device: torch.device | str) -> str | None:
    """None when Triton kernels can run on tensors of `device`, otherwise why not (one line)."""
    device = torch.device(device)
    if not _triton_importable():
        return "Triton is not installed"
    if device.type == "cpu":
        return None if interpreting() else ("no CUDA GPU (set TRITON_INTERPRET=1 to run the Triton kernels on the "
                                            "CPU through the interpreter)")
    if device.type == "meta":
        return None if _recording else "meta tensors hold no data (only the compile gate records launches on them)"
    if device.type == "cuda":
        if interpreting():
            return "TRITON_INTERPRET=1 runs on CPU tensors only"
        return _cuda_reason(device.index if device.index is not None else torch.cuda.current_device())
    return f"Triton does not target {device.type} tensors"


_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def fallback_warning(what: str, reason: str) -> None:
    """The one warning of a fallback to the PyTorch reference path (once per message)."""
    warn_once(f"{what}: running the PyTorch reference path instead: {reason}")


def resolve_impl(impl: str, device: torch.device | str, op: str) -> str:
    """'triton' or 'ref' for `op` on `device`, following the rules in this module's docstring."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "ref":
        return "ref"
    reason = triton_unavailable_reason(device)
    if reason is None:
        return "triton"
    if impl == "triton":
        raise RuntimeError(f"{op}: the Triton kernel cannot run: {reason}")
    fallback_warning(op, reason)
    return "ref"
