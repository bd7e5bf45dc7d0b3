"""NVTX ranges for Nsight Systems. Without the `nvtx` package the ranges are no-ops, never an error.

    with nvtx_range("D forward"):
        ...
Profile with:  nsys profile -t cuda,nvtx -o vidgan vidgan train frames --fast ...

`nvtx_disabled()` turns every range into a no-op while it is open: torch.compile (Dynamo) cannot trace the nvtx
package's `annotate` and would split a step into pieces at each range (the benchmarks' compile and vmap columns
compile and run inside it).
"""
from __future__ import annotations

import contextlib

try:
    import nvtx as _nvtx
except ImportError:  # optional at run time: ranges become no-ops
    _nvtx = None

_enabled = True     # read by nvtx_range; nvtx_disabled() clears it

COLORS = {"data": "green", "generator": "blue", "discriminator": "red", "backward": "purple",
          "optimizer": "orange"}


def nvtx_range(name: str, kind: str | None = None):
    """A context manager marking `name` on the NVTX timeline (coloured by kind), or a no-op."""
    if _nvtx is None or not _enabled:
        return contextlib.nullcontext()
    return _nvtx.annotate(name, color=COLORS.get(kind or "", "grey"), domain="vidgan")


@contextlib.contextmanager
def nvtx_disabled():
    """Within: nvtx_range is a plain no-op (what Dynamo can trace). Nests; restores the previous setting."""
    global _enabled
    saved, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = saved
