"""Fast path: autograd Functions over the Triton kernels in `kernels/`, and the modules built from them.

    from vidgan_fast.fast import FrameDiscriminatorBank, VideoDiscriminatorBank, FrozenFrameGenerator
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "FrameDiscriminatorBank": "vidgan_fast.fast.bank",
    "VideoDiscriminatorBank": "vidgan_fast.fast.bank",
    "FrozenFrameGenerator": "vidgan_fast.fast.frozen_generator",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
