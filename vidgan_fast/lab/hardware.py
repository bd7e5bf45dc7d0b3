"""The GPUs the static models project onto: every hardware figure, stated once, with where it comes from.

Per-SM figures are what the per-launch model needs (vidgan_fast/lab/cost.py): a launch's programs are spread over
`sms` multiprocessors, and each multiprocessor issues at most `issue_per_clk` warp instructions per clock (one per
scheduler, four schedulers per SM on Volta and newer: NVIDIA's architecture whitepapers) and retires matrix FLOPs
at `mma_flops_per_clk[(instruction, dtype)]`. The device-wide peaks (`peak_flops`) are these per-clock figures
times SMs times clock: they reproduce the datasheet numbers.

Projections at the datasheet clock (`clock_ghz`, the clock at which the vendor's dense peak rates are computed) are
lower bounds in time only at that clock: a GPU boosting higher (an H100 SXM to 1.98 GHz) is up to that ratio faster
on issue- and tensor-bound launches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

KERNEL_MIN_US = 2.0     # assumed shortest duration of one kernel inside a CUDA graph, launch gap included (an empty
                        # kernel replayed back to back takes about 1.5-2.5 us on recent NVIDIA GPUs: an assumption
                        # of this model, to be calibrated by benchmarks/gpu_verify.py's profiler stage)


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    arch: int                    # compute capability x 10, the compile target the model reads SASS for
    sms: int
    clock_ghz: float             # the clock of the datasheet peaks
    hbm_gbps: float              # DRAM peak, GB/s
    l2_gbps: tuple[float, float]  # L2 -> SM bandwidth, GB/s: (pessimistic, optimistic); the model's lower bound uses
                                  # the optimistic end and also reports the other
    mma_flops_per_clk: dict = field(default_factory=dict)   # (instruction, dtype) -> FLOP per clock per SM
    fma_flops_per_clk: int = 256     # fp32 FFMA: 128 lanes x 2 FLOP per clock per SM (64 lanes on GA100)
    issue_per_clk: int = 4           # warp instructions issued per clock per SM (4 schedulers)
    source: str = ""

    def peak_flops(self, unit: str, precision: str) -> float:
        """FLOP/s of the device: unit 'fp32' (CUDA-core FMA) or 'mma' at precision 'fp32' (= FMA), 'tf32', 'bf16'
        through the best matrix instruction the device has."""
        if unit == "fp32" or precision == "fp32":
            per_clk = self.fma_flops_per_clk
        else:
            per_clk = max((v for (_, dtype), v in self.mma_flops_per_clk.items() if dtype == precision),
                          default=self.fma_flops_per_clk)
        return per_clk * self.sms * self.clock_ghz * 1e9

    def rate(self, unit: str, precision: str) -> float:     # peak FLOP/s of a unit at a precision
        return self.peak_flops(unit, precision)

    @property
    def bandwidth(self) -> float:                           # GB/s of DRAM
        return self.hbm_gbps

    @property
    def fp32(self) -> float:                                # TFLOP/s, for the report's device notes
        return self.peak_flops("fp32", "fp32") / 1e12

    @property
    def tf32(self) -> float:
        return self.peak_flops("mma", "tf32") / 1e12

    @property
    def bf16(self) -> float:
        return self.peak_flops("mma", "bf16") / 1e12


# Hopper (sm_90): 4 tensor cores per SM. Dense matrix rates of wgmma (HGMMA in SASS), per SM per clock: bf16 4096,
# tf32 2048 FLOP. The datasheet's H100 SXM5 dense bf16 989.4 TFLOP/s = 132 SMs x 4096 x 1.83 GHz (its tf32 494.7 =
# 132 x 2048 x 1.83 GHz). Warp-level mma.sync (HMMA) cannot feed Hopper's tensor cores at that rate: public
# microbenchmarks (Luo et al., "Dissecting the NVIDIA Hopper Architecture through Microbenchmarking", 2025) measure
# it well below wgmma; the model takes half the wgmma rate (an assumption, calibrated by the first GPU run).
# FP32 FFMA: 128 lanes per SM (the datasheet's 66.9 TFLOP/s is at the 1.98 GHz boost; 61.8 at 1.83 GHz).
# L2 -> SM: Chips and Cheese measured about 5.5 TB/s on an H100 PCIe (114 SMs, at most 1.755 GHz, 2023); scaled
# to the SXM part's 132 SMs at 1.83 GHz about 6.6 TB/s. The range 5.5-7.5 TB/s brackets it.
_HOPPER_MMA = {("wgmma", "bf16"): 4096, ("wgmma", "tf32"): 2048, ("mma", "bf16"): 2048, ("mma", "tf32"): 1024}
# Ampere GA100 (sm_80): mma.sync, per SM per clock bf16 2048, tf32 1024 FLOP (A100 datasheet: 312 / 156 TFLOP/s =
# 108 SMs x that x 1.41 GHz); FFMA 64 lanes (19.5 TFLOP/s). L2: the A100 whitepaper's 5120 B/clk = 7.2 TB/s at
# 1.41 GHz (optimistic end); measured L2 bandwidth is lower (Chips and Cheese, 2023: about 4.5-5 TB/s).
_AMPERE_MMA = {("mma", "bf16"): 2048, ("mma", "tf32"): 1024}

GPUS = {g.key: g for g in (
    GPU("h100", "H100 SXM5 80GB", 90, 132, 1.83, 3350, (5500, 7500), _HOPPER_MMA,
        source="NVIDIA H100 datasheet (dense: BF16 989.4, TF32 494.7 TFLOP/s at 1.83 GHz; HBM3 3.35 TB/s); "
               "L2: Chips and Cheese 2023 (H100 PCIe ~5.5 TB/s), scaled to 132 SMs"),
    GPU("h200", "H200 SXM 141GB", 90, 132, 1.83, 4800, (5500, 7500), _HOPPER_MMA,
        source="NVIDIA H200 datasheet: the H100's SMs, clocks and L2; HBM3e 4.8 TB/s"),
    GPU("a100", "A100 SXM4 80GB", 80, 108, 1.41, 2039, (4500, 7200), _AMPERE_MMA, fma_flops_per_clk=128,
        source="NVIDIA A100 datasheet and whitepaper (BF16 312, TF32 156, FP32 19.5 TFLOP/s at 1.41 GHz; L2 5120 "
               "B/clk; HBM2e 2,039 GB/s); measured L2: Chips and Cheese 2023"),
    GPU("rtx4090", "RTX 4090", 89, 128, 2.52, 1008, (3500, 5000), {("mma", "bf16"): 512, ("mma", "tf32"): 256},
        source="NVIDIA Ada whitepaper (AD102, 128 SMs, 2.52 GHz: FP32 82.6, BF16 fp32-acc 165.2, TF32 82.6 "
               "TFLOP/s); GDDR6X 1,008 GB/s; L2 bandwidth: estimate"),
    GPU("rtx3090", "RTX 3090", 86, 82, 1.695, 936, (2500, 4000), {("mma", "bf16"): 512, ("mma", "tf32"): 256},
        source="NVIDIA GA102 whitepaper (82 SMs, 1.695 GHz: FP32 35.6, BF16 fp32-acc 71, TF32 35.6 TFLOP/s); "
               "GDDR6X 936 GB/s; L2 bandwidth: estimate"),
    GPU("gtx1080ti", "GTX 1080 Ti", 61, 28, 1.582, 484, (1000, 1500), {},
        source="NVIDIA GTX 1080 Ti spec (28 SMs, 1.582 GHz, 11.3 TFLOP/s FP32; GDDR5X 484 GB/s); no tensor cores; "
               "Triton does not support sm_61, so --fast trains on the reference path there: this is the floor of "
               "the same work, not of a run the Triton path can make"),
)}
# (GA102/AD102 issue 128 fp32 lanes per SM at 2 FLOP, and their fp32-accumulate tensor rate is half the fp16 one.)

_NAME_MATCHES = (("H200", "h200"), ("H100", "h100"), ("A100", "a100"), ("4090", "rtx4090"), ("3090", "rtx3090"),
                 ("1080 Ti", "gtx1080ti"))


def gpu_for_name(name: str) -> GPU | None:
    """The GPU of this table named like torch.cuda.get_device_name(), None when not in the table."""
    return next((GPUS[key] for pattern, key in _NAME_MATCHES if pattern.lower() in name.lower()), None)
