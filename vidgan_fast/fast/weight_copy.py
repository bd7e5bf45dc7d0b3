"""Low-precision copies of fp32 master weights (bf16 storage), kept current without a cast per forward.

    copy = stored_copy(param, torch.bfloat16)    # the copy the kernels read; recast only if param changed since
    opt.step()                                   # FusedRMSprop writes param and its copy in one pass (mark_current)
    refresh(params)                              # before a CUDA-graph capture: recast the stale copies eagerly

A copy is current while its parameter's autograd version counter and storage are the ones recorded when the copy
was last written. Every PyTorch in-place op on the parameter moves the version counter (load_state_dict, a
checkpoint load, the CUDA-graph warm-up's restore, torch.optim, `with torch.no_grad(): w.add_(1)`), so the next
stored_copy() recasts: an eager read never sees a stale copy. (Not seen: writes through `w.data` or a raw pointer, which
bypass the counter; vidgan makes none, and code that does must call torch.autograd.graph.increment_version(w).)
The fused RMSprop kernel writes the parameter through a raw pointer, so fast/rmsprop.py writes the copy in the
same pass, then increments the version counter (as PyTorch's in-place ops would) and marks the copy current: a
training step reads the copy (2 B per weight) instead of casting (read 4 B, write 2 B per weight) before each
forward.

Copies are found by parameter (a weak registry: a copy lives as long as its parameter), so the optimizer needs no
reference to the module, and a rebuilt optimizer (engine.to_fast) finds them too. They are not buffers: checkpoints
and state dicts never hold them. Under CUDA-graph replay no Python runs and nothing is checked: the replayed
optimizer writes the copies the replayed forward reads, and the version counters, unchanged by replays, still
match afterwards; a weight written eagerly between replays (a load, a hand edit) moves its counter, and
GraphedSteps.d() recasts such stale copies (refresh) before it replays.
"""
from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary


class _Copy:
    __slots__ = ("tensor", "key")

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.key = tensor, None


_COPIES: WeakIdKeyDictionary = WeakIdKeyDictionary()      # parameter -> _Copy


def _key(param: torch.Tensor) -> tuple:
    return param._version, param.data_ptr(), param.device


def _entry(param: torch.Tensor, dtype: torch.dtype) -> _Copy:
    entry = _COPIES.get(param)
    t = None if entry is None else entry.tensor
    if t is None or t.dtype != dtype or t.shape != param.shape or t.stride() != param.stride() \
            or t.device != param.device or (t.is_inference() and not torch.is_inference_mode_enabled()):
        with torch.inference_mode(False):       # a copy made in inference mode could not be written or saved
            entry = _COPIES[param] = _Copy(torch.empty_like(param, dtype=dtype, memory_format=torch.preserve_format))
    return entry


@torch.no_grad()
def stored_copy(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """param's copy in `dtype` (made on first use), recast from param unless it is current."""
    entry = _entry(param, dtype)
    if entry.key != _key(param):
        entry.tensor.copy_(param)
        entry.key = _key(param)
    return entry.tensor


def copy_of(param: torch.Tensor) -> torch.Tensor | None:
    """The copy registered for param (current or not), or None."""
    entry = _COPIES.get(param)
    return None if entry is None else entry.tensor


def is_current(param: torch.Tensor) -> bool:
    entry = _COPIES.get(param)
    return entry is not None and entry.key == _key(param)


def mark_current(param: torch.Tensor) -> None:
    """After a kernel wrote param and its copy together (and param's version counter was moved, as an in-place
    op moves it): record the copy as current."""
    _COPIES[param].key = _key(param)


@torch.no_grad()
def refresh(params) -> None:
    """Recast every stale copy among `params` now (eagerly, e.g. before a CUDA-graph capture, so that the captured
    step reads the copies instead of recording a cast)."""
    for p in params:
        entry = _COPIES.get(p)
        if entry is not None and entry.key != _key(p):
            stored_copy(p, entry.tensor.dtype)
