"""What every layer asks of the kernels before launching one, importing neither triton nor torch: the precisions
the kernels offer, and whether Triton runs compiled or interpreted (the one place that reads TRITON_INTERPRET).

It also pins Triton's floating-point contraction (a*b + c as one FMA) to on, the default the kernels were written,
tested and compiled with (tests/test_rmsprop.py's PTX checks among them): Triton 3.9 warns that its default will
turn off in 3.10. A user's own TRITON_DEFAULT_FP_FUSION is kept."""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

PRECISIONS = ("fp32", "tf32", "bf16")     # of the products: kernels/common.py says what each one means


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1, read as triton.jit does)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
