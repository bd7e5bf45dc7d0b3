"""The process's C allocator (glibc): keep freed memory for reuse instead of returning it to the kernel.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with freshly mapped pages and unmaps them
when the block is freed, so a 60 MB tensor allocated once a step costs ~15,000 page faults each time, every page
zeroed by the kernel. Phase 2 of the small preset renders 960 frames a step through G_F, whose activations
([960, 64, 16, 16] fp32, 63 MB) are such tensors. Measured on the 2-core CPU, 96 phase-2 steps: 127 s of CPU, 65 s
of it in the kernel (31.6 million page faults), without; 63 s, 0.8 s in the kernel, with `keep_freed_memory()`,
and the same weights (benchmarks/RESULTS.md, "The main job on one thread"). The price is a caching allocator's:
memory freed stays with the process (there 1.02 GB resident at the peak against 0.72 GB, not growing with the
steps). Where the C library is not glibc (macOS, musl, Windows) nothing changes.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4       # glibc's <malloc.h>
KEEP_UP_TO = 2 ** 31 - 1                    # bytes of free memory kept at the top of the heap before trimming


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap (no mmap per large block) and trim it only above 2 GiB. True where
    glibc took both settings, False where there is no glibc (then nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt        # the C library this process runs on
    except (OSError, AttributeError):               # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))
