"""`vidgan bench --static`: what the training steps cost on named GPUs, projected from the compiled kernels without a
GPU (lab/cost.py), and their GPU memory under CUDA graphs (lab/memory.py), as Markdown tables.

    vidgan bench --static                                   # paper preset, tf32, H100 and A100, per step
    vidgan bench --static --per-launch --gpu h100           # ... and every launch with its limits
    vidgan bench --static --precision bf16 --json out.json

Everything printed is a projection (a lower bound of the compiled code at the stated hardware figures), never a
measurement; benchmarks/gpu_verify.py puts measurements beside it on a GPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from vidgan_fast.config import PRESETS, preset
from vidgan_fast.kernels.mode import PRECISIONS
from vidgan_fast.lab.hardware import GPUS, KERNEL_MIN_US

LIMITS = ("issue", "tensor", "l2", "dram", "launch")


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.3g}" if us < 1000 else f"{us:.0f}"


def step_table(steps) -> list[str]:
    lines = ["| step | GPU | precision | projected ms | op-serial floor ms | projected / floor | Triton ms (launches) | "
             "torch ms (kernels) | TFLOP executed / nominal | time by binding limit, ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in steps:
        by = {}
        for c in s.launches:
            by[c.binding] = by.get(c.binding, 0.0) + c.projected_s
        for c in s.torch_ops:
            key = f"torch {c.binding}"
            by[key] = by.get(key, 0.0) + c.projected_s
        binding = ", ".join(f"{k} {_ms(v)}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))
        torch_s = s.projected_s - s.triton_projected_s
        lines.append(f"| {s.name} | {GPUS[s.gpu].name} | {s.precision} | **{_ms(s.projected_s)}** | {_ms(s.floor_s)} | "
                     f"{s.projected_s / s.floor_s:.1f} | {_ms(s.triton_projected_s)} ({len(s.launches)}) | "
                     f"{_ms(torch_s)} ({len(s.torch_ops)}) | {s.executed_flops / 1e12:.3f} / "
                     f"{s.nominal_flops / 1e12:.3f} | {binding} |")
    return lines


def launch_table(step) -> list[str]:
    lines = [f"#### {step.name}, {GPUS[step.gpu].name}, {step.precision}", "",
             "| kernel | arguments | programs | warps x CTAs/SM | regs | instr. | loop instr. x trips | issue us | "
             "tensor us | L2 us | DRAM us | projected us | binding | floor us | x floor | sector use r / w |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in step.launches:
        lim = c.limits
        lines.append(f"| {c.kernel} | {c.label} | {c.programs} | {c.warps} x {c.ctas_per_sm} | {c.registers} | "
                     f"{c.instruction} | {c.loop_instructions} x {c.trips:.0f} | {_us(lim['issue'])} | "
                     f"{_us(lim['tensor'])} | {_us(lim['l2'])}-{_us(c.l2_pessimistic_s)} | {_us(lim['dram'])} | "
                     f"**{_us(c.projected_s)}** | {c.binding} | {_us(c.floor_s)} | {c.over_floor:.1f} | "
                     f"{c.read_efficiency:.2f} / {c.write_efficiency:.2f} |")
    over = [c for c in step.launches if c.over_floor > 2]
    others = [c for c in over if c.binding != "launch"]
    lines += ["", f"Launches over 2x their floor: {len(over)}, {len(over) - len(others)} of them at the "
              f"{KERNEL_MIN_US:g} us launch minimum" + ("; the others: " + "; ".join(
                  f"{c.kernel} {c.label} {c.over_floor:.1f}x ({c.binding})" for c in others) if others else "") + "."]
    torch_s = sum(c.projected_s for c in step.torch_ops)
    heavy = sorted(step.torch_ops, key=lambda c: -c.projected_s)[:5]
    lines.append("")
    lines.append(f"Torch's kernels: {len(step.torch_ops)}, {_ms(torch_s)} ms; the longest: "
                 + "; ".join(f"{c.op.name} {_us(c.projected_s)} us ({c.binding})" for c in heavy) + ".")
    return lines + [""]


def memory_table(rows, precision: str) -> list[str]:
    from vidgan_fast.lab.memory import BUDGET, GiB
    lines = ["| precision | phase | state GiB | warm-up reserved peak | graph pool | reserved peak | "
             "context + workspaces | data set | data on GPU | **total** | under 11 GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {precision} | {r['phase']} | {r['steady_live'] / GiB:.2f} | {r['regular_reserved_peak'] / GiB:.2f} | "
                     f"{r['graph_reserved'] / GiB:.2f} | {r['reserved'] / GiB:.2f} | {r['fixed'] / GiB:.2f} | "
                     f"{r['data'] / GiB:.2f} | {'yes' if r['data_on_gpu'] else 'no (host)'} | "
                     f"**{r['total'] / GiB:.2f}** | {'yes' if r['total'] <= BUDGET else 'NO'} |")
    return lines


NOTES = [
    "- Projections, not measurements: a lower bound of the compiled code at the GPU's datasheet clock (lab/cost.py "
    "says how each limit is counted; lab/hardware.py holds every hardware figure and its source).",
    "- Per launch: issue (SASS main-loop instructions x trips + the rest, 4 warp instructions per clock per SM), "
    "tensor (tl.dot FLOPs at the SASS instruction's rate), L2 (unique 32-byte sectors the kernel's own addresses "
    "touch, traced under the interpreter on sampled programs; optimistic-pessimistic L2 bandwidth), DRAM "
    f"(compulsory bytes), launch ({KERNEL_MIN_US:g} us); projected = the largest. floor = max(tl.dot FLOPs / peak, "
    "compulsory bytes / HBM).",
    "- Per step: op-serial sums (one stream of kernels, as a CUDA graph runs them). Torch's kernels (generators, "
    "losses, optimizer passes) are costed from the recorded aten ops; G_V's LSTM as cuDNN's dependent chain.",
]


def build_parser(prog: str = "vidgan bench --static") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Projected cost of the four --fast training steps on named "
                                "GPUs, from the compiled kernels (per launch: instruction issue, tensor-core time, "
                                "L2 sectors, DRAM bytes), and projected GPU memory under CUDA graphs. Static: no "
                                "GPU needed; compiles every kernel and traces their addresses (a few minutes at "
                                "paper size).")
    p.add_argument("--preset", choices=list(PRESETS), default="paper", help="model sizes, K and batches (paper)")
    p.add_argument("--precision", choices=PRECISIONS, nargs="+", default=None,
                   help="precision(s) of the products (default: the preset's, tf32)")
    p.add_argument("--gpu", "--device-model", dest="gpu", nargs="+", choices=[*GPUS, "all"], default=None,
                   metavar="GPU", help=f"one or more of {', '.join(GPUS)}, or all (default: h100 a100)")
    p.add_argument("--per-launch", action="store_true", help="also every launch of every step with its limits")
    p.add_argument("--samples", type=int, default=8, help="programs traced per launch (default 8)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory projection")
    p.add_argument("--json", default=None, help="also write everything here (a new file; an existing one needs "
                   "--overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return p


def main(argv=None, prog: str = "vidgan bench --static") -> int:
    a = build_parser(prog).parse_args(argv)
    if a.json and os.path.lexists(a.json) and not a.overwrite:
        print(f"error: --json {a.json} already exists; pass --overwrite to replace it, or name another file",
              file=sys.stderr)
        return 2
    from vidgan_fast.lab import cost, memory
    cfg = preset(a.preset)
    precisions = a.precision or [cfg.precision]
    gpus = list(GPUS) if a.gpu and "all" in a.gpu else a.gpu or ["h100", "a100"]
    print(f"Per-launch projection (static, no GPU): preset {a.preset}, {datetime.date.today().isoformat()}\n")
    record = {"preset": a.preset, "command": " ".join([prog, *(argv or [])]), "steps": [], "memory": []}
    for precision in precisions:
        steps = cost.project(cfg, precision, gpus, samples=a.samples)
        print("\n".join(step_table(steps)) + "\n")
        for key in gpus:
            mine = [s for s in steps if s.gpu == key]
            print(f"{GPUS[key].name}, {precision}: the schedule ({cfg.frames_epochs} + {cfg.video_epochs} epochs) "
                  f"projected {cost.schedule_hours(mine, cfg):.2f} h (op-serial floor "
                  f"{cost.schedule_hours(mine, cfg, floor=True):.2f} h)\n")
        if a.per_launch:
            for s in steps:
                print("\n".join(launch_table(s)))
        record["steps"] += [cost.as_dict(s) for s in steps]
        if not a.no_memory:
            rows = memory.project(cfg, precision)
            print(f"Projected GPU memory of --fast training under CUDA graphs ({a.preset}, {precision}):\n")
            print("\n".join(memory_table(rows, precision)) + "\n")
            record["memory"] += [{**r, "precision": precision} for r in rows]
    print("\n".join(NOTES))
    for key in gpus:
        print(f"  - {GPUS[key].name}: {GPUS[key].source}")
    if a.json:
        from vidgan_fast.files import write_file
        text = json.dumps(record, indent=1).encode()
        write_file(a.json, lambda f: f.write(text), replace=a.overwrite)
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
