"""The lab's instruments (vidgan_fast/lab/): the sector counter on kernels with known access patterns, the SASS loop
finder, the per-launch cost model on one paper-size layer, and the report's tables.

The sector counter runs a kernel's own code under the interpreter with its loads and stores hooked, so it is checked
on patterns whose answer is known by hand: a coalesced copy uses every byte of every sector it touches, a gather
with a 128-byte stride in fp32 uses 4 of 32. Breaking the counter on purpose (counting addresses instead of
sectors; ignoring the mask) fails these.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import triton
import triton.language as tl

from vidgan_fast.lab import sass, sectors
from vidgan_fast.lab.cost import LaunchCost, StepCost, TorchCost, TorchOp
from vidgan_fast.lab.processes import call_in_mode

pytestmark = pytest.mark.usefixtures("one_thread")


@triton.jit
def _copy(src, dst, n, STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs * STRIDE, mask=offs < n), mask=offs < n)


def traffic_of(stride: int, n: int = 1000, block: int = 128):
    src, dst = torch.empty(n * stride), torch.empty(n)
    with sectors.record_specs() as specs:
        _copy[(triton.cdiv(n, block),)](src, dst, n, STRIDE=stride, BLOCK=block)
    (spec,) = specs
    return sectors.measure(spec, samples=100)


def test_a_coalesced_copy_uses_every_sector_it_touches():
    t = traffic_of(1)
    assert t.traced == t.programs == 8                   # 8 programs: all traced (the grid is smaller than 100)
    assert t.read_efficiency == t.write_efficiency == 1.0
    assert t.sectors_read == t.sectors_written == math.ceil(1000 * 4 / 32)     # 125 sectors each way, exactly
    assert t.read_args == {0} and t.written_args == {1}


def test_a_gather_with_a_128_byte_stride_uses_an_eighth_of_each_sector():
    t = traffic_of(32)                                   # fp32, 32 elements apart: one 4-byte element per sector
    assert t.read_efficiency == pytest.approx(4 / 32)
    assert t.sectors_read == 1000 and t.write_efficiency == 1.0


def test_sampling_extrapolates_and_reports_the_spread():
    """A sample of the grid is scaled to all its programs; the partial last program is always traced."""
    t = traffic_of(1, n=100_000, block=128)              # 782 programs, the last one partial
    assert t.traced == 100 and t.programs == 782
    assert t.sectors_read == pytest.approx(100_000 * 4 / 32, rel=0.01)
    assert t.spread["min"] < t.spread["max"]             # the partial program touches fewer sectors


def test_the_main_loop_is_found_in_sass():
    """On SASS text: the loop is the span of a backward branch with a global load inside; the end-of-kernel
    self-branch is not a loop; a straight-line kernel has none."""
    text = [(0x00, "MOV R1, c[0x0][0x28]"), (0x10, "LDG.E R2, desc[UR4][R4.64]"), (0x20, "FFMA R3, R2, R2, R3"),
            (0x30, "ISETP.GE.AND P0, PT, R5, 0x10, PT"), (0x40, "@!P0 BRA 0x10"), (0x50, "STG.E desc[UR4][R6.64], R3"),
            (0x60, "EXIT"), (0x70, "BRA 0x70")]
    code = [sass.Instruction(a, t.split()[1] if t.startswith("@") else t.split()[0], t) for a, t in text]
    loops = sass.find_loops(code)
    assert loops == [(1, 4)]
    assert sass.main_loop(code, loops) == (1, 4)
    straight = [c for c in code if c.base not in ("BRA",)]
    assert sass.main_loop(straight, sass.find_loops(straight)) is None


def _compiled_loop_counts() -> dict:
    """In a compiled-mode process: the SASS of a reduction kernel with a runtime-length loop."""
    import triton as tr
    import triton.language as tlang
    from triton.backends.compiler import GPUTarget

    from vidgan_fast.lab.aot import compile_launch, record_launches
    from vidgan_fast.lab.sass import read_sass

    @tr.jit
    def _sum(x, y, n, BLOCK: tlang.constexpr):
        acc = tlang.zeros((BLOCK,), tlang.float32)
        for i in range(0, n, BLOCK):
            acc += tlang.load(x + i + tlang.arange(0, BLOCK))
        tlang.store(y + tlang.arange(0, BLOCK), acc)

    with record_launches() as launches:
        _sum[(1,)](torch.empty(4096, device="meta"), torch.empty(128, device="meta"), 4096, BLOCK=128)
    code = read_sass(compile_launch(launches[0], GPUTarget("cuda", 90, 32)).cubin)
    return {"loop": code.loop_instructions, "total": code.total, "loads": code.loop_mix["LDG"],
            "kind": code.mma_instruction}


def test_a_compiled_loop_is_found_and_small():
    counts = call_in_mode("compiled", __name__, "_compiled_loop_counts")
    assert 0 < counts["loop"] < 60 and counts["loads"] >= 1 and counts["total"] > counts["loop"]
    assert counts["kind"] == "fma"


def _cost_of_one_layer(precision: str) -> dict:
    """In a compiled-mode process: the paper's D_F conv2 forward (K=48, 2B=128, 256 -> 512, 8x8 -> 4x4) on an
    H100, through the model's own pieces."""
    from triton.backends.compiler import GPUTarget

    from vidgan_fast.kernels import conv
    from vidgan_fast.kernels.common import forced_target
    from vidgan_fast.lab.aot import compile_launch, record_calls
    from vidgan_fast.lab.cost import cost_launch
    from vidgan_fast.lab.hardware import GPUS
    from vidgan_fast.lab.sass import read_sass
    from vidgan_fast.lab.sectors import trace_in_subprocess
    gpu, dtype = GPUS["h100"], torch.bfloat16 if precision == "bf16" else torch.float32
    with forced_target(arch=90, sms=gpu.sms), record_calls() as calls:
        x = torch.empty(48, 128, 1, 8, 8, 256, device="meta", dtype=dtype)
        w = torch.empty(48, 512, 1, 4, 4, 256, device="meta", dtype=dtype)
        conv.conv_forward(x, w, torch.empty(48, 512, device="meta"), (1, 4, 4), (1, 2, 2), (0, 1, 1), True,
                          precision, dtype)
    (call,) = calls
    (traffic,) = trace_in_subprocess(calls, samples=2)
    report = compile_launch(call.launch, GPUTarget("cuda", 90, 32))
    c = cost_launch(call, traffic, report, read_sass(report.cubin), gpu)
    return {"efficiency": traffic.read_efficiency, "trips": traffic.trips, "instruction": c.instruction,
            "over_floor": c.over_floor, "binding": c.binding, "limits": c.limits, "spill": report.spill_bytes,
            "dot_flops": traffic.dot_flops}


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_the_model_sees_a_paper_layer_near_its_floor(precision):
    """The paper's hottest forward on an H100: wgmma, no spills, every sector fully used (channels-last rows), one
    reduction step per (tap, channel block), the executed FLOPs exactly the layer's 2 x 48 x 2048 x 512 x 4096, and
    the projection within 2x of its FLOP/byte floor, bound by the tensor cores or L2, not by instruction issue."""
    r = call_in_mode("compiled", __name__, "_cost_of_one_layer", precision)
    block_k = 64 if precision == "bf16" else 32
    assert r["instruction"] == "wgmma" and r["spill"] == 0
    assert r["efficiency"] == pytest.approx(1.0)
    assert r["trips"] == 16 * 256 / block_k
    assert r["dot_flops"] == 2 * 48 * 2048 * 512 * 4096
    assert r["over_floor"] <= 2.0 and r["binding"] in ("tensor", "l2"), r


def test_the_report_tables_say_what_binds():
    from vidgan_fast.lab.report import launch_table, step_table
    launch = LaunchCost("_conv_fwd_kernel", "B=128", 1536, 8, 1, 216, 147456, 0, "wgmma", 176, 900, 128.0, 4e11,
                        1e10, 1.0, 1.0, {"min": 1, "mean": 1, "max": 1}, 10 ** 9,
                        {"issue": 3e-4, "tensor": 8.6e-4, "l2": 1.2e-3, "dram": 3e-4, "launch": 2e-6}, 1.5e-3, 8.3e-4)
    op = TorchCost(TorchOp("addmm", 10 ** 9, 10 ** 6, True), 2e-6, 1e-6, "launch")
    step = StepCost("phase 1 D step", "h100", "tf32", [launch], [op], nominal_flops=5 * 10 ** 11)
    assert launch.binding == "l2" and launch.projected_s == 1.2e-3 and launch.over_floor == pytest.approx(1.2e-3 / 8.3e-4)
    row = step_table([step])[2]
    assert "**1.2**" in row and "l2 1.2" in row and "H100" in row
    assert "| _conv_fwd_kernel | B=128 | 1536 | 8 x 1 |" in "\n".join(launch_table(step))
    assert "Launches over 2x their floor: 0, 0 of them" in "\n".join(launch_table(step))
    small = dataclasses.replace(launch, kernel="_rmsprop_kernel", limits={**launch.limits, "l2": 0, "tensor": 0,
                                "issue": 0, "dram": 0}, floor_s=1e-7)                  # at the 2 us minimum
    slow = dataclasses.replace(launch, floor_s=5e-4)                                  # 2.4x, L2-bound
    summary = next(line for line in launch_table(dataclasses.replace(step, launches=[launch, small, slow]))
                   if line.startswith("Launches over 2x"))
    assert summary == ("Launches over 2x their floor: 2, 1 of them at the 2 us launch minimum; the others: "
                       "_conv_fwd_kernel B=128 2.4x (l2)."), summary
