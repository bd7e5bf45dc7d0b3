"""NVTX ranges for Nsight Systems. Without the `nvtx` package the ranges are no-ops, never an error.

    with nvtx_range("D forward"):
        ...
Profile with:  nsys profile -t cuda,nvtx -o vidgan vidgan train frames --fast ...
"""
from __future__ import annotations

import contextlib

try:
    import nvtx as _nvtx
except ImportError:  # optional at run time: ranges become no-ops
    _nvtx = None

COLORS = {"data": "green", "generator": "blue", "discriminator": "red", "backward": "purple",
          "optimizer": "orange"}


def nvtx_range(name: str, kind: str | None = None):
    """A context manager marking `name` on the NVTX timeline (coloured by kind), or a no-op."""
    if _nvtx is None:
        return contextlib.nullcontext()
    return _nvtx.annotate(name, color=COLORS.get(kind or "", "grey"), domain="vidgan")
