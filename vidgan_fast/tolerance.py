"""One tolerance policy for every fast-vs-reference comparison: the tests, `vidgan check` and the CUDA-graph check.

Every comparison measures max |result - fp64 reference|, relative to max |fp64 reference| over the tensor, so the
bound is a property of the arithmetic, not of a particular test:
- fp32 products (exact products, fp32 accumulation): rounding grows like sqrt(n) over an n-term sum; the bound is
  2e-5 (168 fp32 ulps of 1) up to 1024-term sums and 2e-5 * sqrt(n / 1024) beyond, n the longest reduction.
- tf32 / bf16 products: each product also carries the rounding of its two operands, a relative error of up to
  2u (u the unit roundoff of the format: 2^-11 for TF32's 10-bit mantissa, 2^-8 for bf16's 7-bit one), and a chain
  of `layers` matrix products compounds it; the bound adds 4 u per layer (2u per product, doubled for the
  cancellation that makes max |result| smaller than the terms).
- bf16 storage (precision "bf16" in the banks and the frozen G_F): every tensor written to memory in bf16 (an
  activation, an input gradient) carries one more rounding, a relative error of up to u per element; doubled for
  cancellation as above, the bound adds 2 u per stored tensor along the chain (`stored`). Where the stored tensor
  is next read only as a product operand, the kernels round that operand to the same bf16 value anyway, so the
  term is conservative there; it is needed where fp32 arithmetic re-reads it before a product (the LeakyReLU
  slope applied to a stored dL/dy, the bias gradient summing it), which rounds twice.
"""
from __future__ import annotations

import math

UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "tf32": 2.0 ** -11, "bf16": 2.0 ** -8}
FP32_BOUND = 2e-5          # relative, for sums of up to 1024 terms


def tolerance(precision: str = "fp32", reduction: int = 1, layers: int = 1, stored: int = 0) -> float:
    """Relative bound on |result - fp64| / max |fp64| for products of `precision` in sums of `reduction` terms,
    through `layers` chained matrix products, with `stored` intermediate tensors kept in bf16 (precision "bf16"
    only: the other precisions store fp32)."""
    if precision not in UNIT_ROUNDOFF:
        raise ValueError(f"precision must be one of {tuple(UNIT_ROUNDOFF)}, got {precision!r}")
    bound = FP32_BOUND * max(1.0, math.sqrt(reduction / 1024))
    if precision != "fp32":
        bound += 4 * UNIT_ROUNDOFF[precision] * layers
    if stored:
        if precision != "bf16":
            raise ValueError(f"stored tensors are bf16 under precision 'bf16' only, not {precision!r}")
        bound += 2 * UNIT_ROUNDOFF["bf16"] * stored
    return bound


def relative_error(result, reference) -> float:
    """max |result - reference| / max |reference| (in fp64; 0-size and all-zero references count as scale 1)."""
    reference = reference.detach().double()
    scale = reference.abs().max().item() if reference.numel() else 1.0
    err = (result.detach().double() - reference).abs().max().item() if reference.numel() else 0.0
    return err / (scale or 1.0)
