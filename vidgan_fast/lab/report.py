"""`vidgan bench --static`: the roofline projection of the training steps (vidgan_fast/roofline.py) as Markdown
tables, on any machine (no GPU, no kernel launch, no benchmarks package). Torch is imported only when the tables
are computed (the FLOP formulas live in flops.py), so `--help` is quick.

    vidgan bench --static                                   # paper preset, every device, per step and per op
    vidgan bench --static --preset tiny --device-model h100 gtx1080ti --precision bf16 --steps-only
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys

from vidgan_fast.config import PRESETS, preset
from vidgan_fast.roofline import DEVICES, FUSED_RMSPROP_PASSES, RMSPROP_PASSES, floor, op_floor, step_models

PRECISIONS = ("fp32", "tf32", "bf16")


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def step_table(steps, devices, precision: str) -> list[str]:
    lines = ["| step | device | TFLOP nominal | TFLOP executed | GB moved | compute ms | memory ms | floor ms | "
             "bound | op-serial ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for step in steps:
        for d in devices:
            f = floor(step, d, precision)
            lines.append(f"| {step.name} | {d.name} | {f['nominal_flops'] / 1e12:.3f} | "
                         f"{f['executed_flops'] / 1e12:.3f} | {f['bytes'] / 1e9:.2f} | {_ms(f['compute_s'])} | "
                         f"{_ms(f['memory_s'])} | **{_ms(f['floor_s'])}** | {f['bound']} | {_ms(f['serial_s'])} |")
    return lines


def op_table(step, devices, precision: str) -> list[str]:
    head = " | ".join(f"{d.key} ms" for d in devices)
    lines = [f"#### {step.name}", "", f"| op | calls | GFLOP nominal | GFLOP executed | exec/nom | MB | unit | {head} | "
             "tiles / notes |", "|---|---|---|---|---|---|---|" + "---|" * len(devices) + "---|"]
    for op in step.ops:
        ratio = f"{op.executed / op.nominal:.2f}" if op.nominal else "-"
        unit = "-" if op.impl == "memory" else (precision if op.unit == "mma" else "fp32 (CUDA cores)")
        cells = " | ".join(_ms(op_floor(op, d, precision)) for d in devices)
        lines.append(f"| {op.name} | {op.calls} | {op.calls * op.nominal / 1e9:.2f} | "
                     f"{op.calls * op.executed / 1e9:.2f} | {ratio} | {op.calls * op.bytes / 1e6:.1f} | {unit} | "
                     f"{cells} | {op.impl}{': ' + op.note if op.note else ''} |")
    return lines + [""]


def memory_table(rows, budget_gib: float = 11.0) -> list[str]:
    """vidgan_fast/memory_model.py's projection: GiB per phase, and the projected reserved total against the
    budget (the paper's 11 GiB GTX 1080 Ti)."""
    gib = 2.0 ** 30
    lines = ["| phase | persistent GiB | D step peak GiB | G step peak GiB | data on GPU GiB | projected total GiB | "
             f"under {budget_gib:g} GiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['persistent'] / gib:.2f} | {r['d_peak'] / gib:.2f} | "
                     f"{r['g_peak'] / gib:.2f} | {r['data'] / gib:.2f} | **{r['total'] / gib:.2f}** | "
                     f"{'yes' if r['total'] < budget_gib * gib else 'NO'} |")
    return lines + ["", "- Memory: the real `--fast` steps run on meta tensors (no kernel launched); "
                    "every storage PyTorch allocates is counted while it lives (vidgan_fast/memory_model.py). "
                    "Peak = most bytes live at once in the steady-state step (max_memory_allocated's measure); total "
                    "= the larger step peak + the data set held on the GPU (fast/device_data.py, when it fits): with "
                    "CUDA graphs the two steps share one pool holding the larger step's transients. Not counted: "
                    "the CUDA context, cuBLAS/cuDNN workspaces, the caching allocator's rounding and fragmentation."]


def notes(devices, precision: str) -> list[str]:
    lines = ["- Projections from a static model, not measurements: vendor peak rates (dense), compulsory DRAM "
             "bytes (each operand read once, each result written once; fp32, or bf16 where the banks and the frozen G_F "
             "store it under bf16), FLOPs the chosen GPU tiles execute "
             "(tile padding, masked taps). A real step is slower: launch gaps, L2 misses, imperfect overlap.",
             "- floor = max(compute, memory) over the whole step (perfect overlap); op-serial = sum over ops of "
             "max(op FLOPs / rate, op bytes / bandwidth) (kernels one after another). Both are lower bounds.",
             f"- compute: executed FLOPs at the {precision} matrix rate for tl.dot and cuDNN/cuBLAS ops, at the fp32 "
             "CUDA-core rate for the tl.sum ops (projection backward, G_F's last layer); PyTorch ops "
             "(phase-1 G_F, G_V) are counted executed = nominal.",
             f"- optimizer: the banks' fused RMSprop, {FUSED_RMSPROP_PASSES} parameter-sized passes; the generators' "
             f"foreach RMSprop, {RMSPROP_PASSES}. A D step runs each bank once over the real and generated batch.",
             "- devices (TFLOP/s fp32 / tf32 / bf16, GB/s):"]
    if precision == "bf16":
        lines.insert(-1, "- bf16 storage: the banks' and the frozen G_F's activations, input gradients and weight reads "
                         "count 2 bytes; the banks' fp32 master weights, their gradients and optimizer stay fp32, and "
                         "the D step's fused RMSprop writes their bf16 copies as it updates them (2 B per weight).")
    for d in devices:
        lines.append(f"  - {d.name}: {d.fp32:g} / {d.tf32:g} / {d.bf16:g}, {d.bandwidth:g}. {d.source}")
    return lines


def build_parser(prog: str = "vidgan bench --static") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Roofline projection of the four training steps: nominal "
                                "and tile-executed FLOPs, bytes moved, and the floor max(FLOPs / matrix rate, bytes "
                                "/ bandwidth) on named GPUs. Static: runs anywhere, no GPU needed.")
    p.add_argument("--preset", choices=list(PRESETS), default="paper", help="model sizes, K and batches (paper)")
    p.add_argument("--device-model", nargs="+", action="extend", choices=[*DEVICES, "all"], default=None,
                   metavar="MODEL", help=f"one or more of {', '.join(DEVICES)}, or all (default: all)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="matrix precision of the products (default: the preset's, tf32)")
    p.add_argument("--steps-only", action="store_true", help="only the per-step table (no per-op tables)")
    p.add_argument("--json", default=None, help="also write the step floors and ops here")
    return p


def main(argv=None, prog: str = "vidgan bench --static") -> int:
    a = build_parser(prog).parse_args(argv)
    keys = a.device_model or ["all"]
    devices = list(DEVICES.values()) if "all" in keys else [DEVICES[k] for k in dict.fromkeys(keys)]
    cfg = preset(a.preset)
    precision = a.precision or cfg.precision
    steps = step_models(cfg, precision)
    print(f"Roofline projection (static, no GPU): preset {a.preset}, precision {precision}, "
          f"{datetime.date.today().isoformat()}\n")
    print("\n".join(step_table(steps, devices, precision)) + "\n")
    from vidgan_fast.fast.engine import FastPathUnavailable
    from vidgan_fast.memory_model import project as project_memory     # imports torch: not for --help
    try:
        memory = project_memory(cfg, precision)
        print(f"Projected GPU memory of --fast training ({a.preset}, {precision}):\n")
        print("\n".join(memory_table(memory)) + "\n")
    except FastPathUnavailable as e:            # no Triton here: the fast state cannot be built, even on meta
        memory = None
        print(f"Projected GPU memory: not available on this machine ({e})\n")
    if not a.steps_only:
        print("Per op (all calls of the step; floor ms per device):\n")
        for step in steps:
            print("\n".join(op_table(step, devices, precision)))
    print("\n".join(notes(devices, precision)))
    if a.json:
        data = {"preset": a.preset, "precision": precision, "command": " ".join([prog, *(argv or [])]),
                "steps": [floor(s, d, precision) for s in steps for d in devices],
                **({"memory": memory} if memory else {}),
                "ops": {s.name: [vars(op) for op in s.ops] for s in steps}}
        with open(a.json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
