"""The named devices of the roofline model (vidgan_fast/roofline.py): vendor peak rates and DRAM bandwidth."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    key: str
    name: str
    fp32: float               # TFLOP/s, CUDA-core FMA (dense)
    tf32: float               # TFLOP/s, tensor cores, dense (no 2:4 sparsity)
    bf16: float               # TFLOP/s, tensor cores with fp32 accumulation, dense
    bandwidth: float          # GB/s, DRAM peak
    source: str

    def rate(self, unit: str, precision: str) -> float:
        """FLOP/s of an op of `unit` ("mma" or "fp32") at `precision` ("fp32", "tf32", "bf16")."""
        return 1e12 * (self.fp32 if unit == "fp32" else getattr(self, precision))


# Vendor peak numbers (boost clock, dense; the datasheets' "with sparsity" figures halved). Peaks, not sustained.
DEVICES = {d.key: d for d in (
    Device("h100", "H100 SXM5 80GB", 66.9, 494.7, 989.4, 3350,
           "NVIDIA H100 datasheet: FP32 67, TF32 989* / BF16 1,979* TFLOPS (*sparsity), HBM3 3.35 TB/s"),
    Device("h200", "H200 SXM 141GB", 66.9, 494.7, 989.4, 4800,
           "NVIDIA H200 datasheet: FP32 67, TF32 989* / BF16 1,979* TFLOPS (*sparsity), HBM3e 4.8 TB/s"),
    Device("a100", "A100 SXM4 80GB", 19.5, 156.0, 312.0, 2039,
           "NVIDIA A100 datasheet: FP32 19.5, TF32 156 (312*), BF16 312 (624*) TFLOPS, HBM2e 2,039 GB/s"),
    Device("rtx4090", "RTX 4090", 82.6, 82.6, 165.2, 1008,
           "NVIDIA Ada (AD102) whitepaper: FP32 82.6, TF32 82.6, BF16 fp32-acc 165.2 TFLOPS; GDDR6X 1,008 GB/s"),
    Device("rtx3090", "RTX 3090", 35.6, 35.6, 71.0, 936,
           "NVIDIA Ampere GA102 whitepaper: FP32 35.6, TF32 35.6, BF16 fp32-acc 71 TFLOPS; GDDR6X 936 GB/s"),
    Device("gtx1080ti", "GTX 1080 Ti", 11.3, 11.3, 11.3, 484,
           "NVIDIA GTX 1080 Ti spec: 11.3 TFLOPS FP32, GDDR5X 11 Gbps x 352 bit = 484 GB/s; no tensor cores "
           "(tf32/bf16 = fp32 rate). The fast path falls back to PyTorch below sm_70 (fast/backend.py): "
           "this is the floor of the same work, not of a run the Triton path can make"),
)}


# Substrings of torch.cuda.get_device_name() -> device key, most specific first.
_NAME_MATCHES = (("H200", "h200"), ("H100", "h100"), ("A100", "a100"), ("4090", "rtx4090"), ("3090", "rtx3090"),
                 ("1080 Ti", "gtx1080ti"))


def device_for_name(name: str) -> Device | None:
    """The roofline device of a GPU named `name` (as torch.cuda.get_device_name says), None when not in the table."""
    return next((DEVICES[key] for pattern, key in _NAME_MATCHES if pattern.lower() in name.lower()), None)
