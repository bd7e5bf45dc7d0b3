"""What every layer asks of the kernels before launching one, importing neither triton nor torch: the precisions
the kernels offer, and whether Triton runs compiled or interpreted (the one place that reads TRITON_INTERPRET)."""
from __future__ import annotations

import os

PRECISIONS = ("fp32", "tf32", "bf16")     # of the products: kernels/common.py says what each one means


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1, read as triton.jit does)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
