"""Can the Triton kernels run here? The one answer (`triton_unavailable_reason`) and the one warning of a fallback
(`fallback_warning`): the training run's --fast decision (vidgan_fast/execution.py), `vidgan check` and to_fast
(fast/engine.py) use them. Once the fast modules are built they run Triton, without asking again.
"""
from __future__ import annotations

import functools
import importlib.util
import warnings

import torch

from vidgan_fast.kernels.mode import interpreting

MIN_ARCH = (8, 0)      # the oldest GPU the kernels are compiled and gated for (sm_80, Ampere; lab/gate.py)


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def _cuda_reason(index: int) -> str | None:
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < MIN_ARCH:   # a GTX 1080 Ti (sm_61) among them: Triton does not target it
        return (f"GPU {torch.cuda.get_device_name(index)} (sm_{major}{minor}) is older than the kernels are built "
                f"and checked for (sm_80)")
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
        return "meta tensors hold no data (the lab builds fast states on them with fast/engine.convert)"
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
