"""The per-launch cost model (vidgan_fast/lab/cost.py) and the memory projection (lab/memory.py) against a GPU
(issue 24, item 4): what one captured D and one captured G step of each phase really cost, kernel by kernel.

    python -m vidgan_fast.benchmarks.calibrate --out calibrate.json         # GPU: paper preset, ~1.5-2.5 min
    python -m vidgan_fast.benchmarks.calibrate --dry-run --out /tmp/c.json  # CPU, TRITON_INTERPRET=1: the plumbing

Per phase, the `--fast` training state at the paper preset (step.build_state, fast/engine.to_fast) with its two
steps captured as CUDA graphs (fast/graphs.GraphedSteps: warm-up, capture, as training does), then:
- step time: CUDA events around each of `--replays` replays of each graph (median);
- kernels: torch.profiler over `--profile-replays` replays of each graph: every kernel's device time per step, by
  kernel name and, for the Triton kernels, per launch: the k-th launch of a kernel in a replay is paired with the
  k-th launch of that kernel in the projected step (both are in launch order), beside its projection (projected
  us, binding limit, floor) read from a committed `vidgan bench --static --json` file (benchmarks/projections/,
  projected.py; never computed here: that takes minutes). Torch's own kernels (cuBLAS, cuDNN, elementwise) are
  compared as one sum with the projection's torch ops;
- memory: torch.cuda.max_memory_reserved / max_memory_allocated from before the state is built until after the
  replays, the reserved bytes left after them, and what the GPU holds outside PyTorch's pools (used - reserved
  from cudaMemGetInfo: this process's CUDA context and any library memory not taken from the pools; it assumes no
  other process on the GPU, and the projection's own subprocess is kept off it), beside
  lab.memory.project_phase for the same configuration and GPU arch (computed here, in a subprocess beside the
  measurement: it runs the steps on the meta device, under a minute at paper size);
- Nsight Compute, only where `ncu` is on PATH: L2 sectors and issue-slot use of the launches of the 3 hottest
  Triton kernels (one eager D and G step of the phase that holds the hottest one, under ncu; profiling starts after
  a warm-up step, cudaProfilerStart) beside the projection's L2 sectors and limits; otherwise one line says why not.

The steps run with the fixed tiles (VIDGAN_AUTOTUNE=0, what gpu_verify sets): the tiles the projection costs
(kernels/autotune.py: the first candidate); --fast training times its candidates and may run others. Writes OUT
after every section (a temporary file, then a rename), so a run stopped at its limit keeps what it measured.
Needs no nvtx package and no network.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):          # `python benchmarks/calibrate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidgan_fast.files import write_file


def write_json(path, data) -> None:
    """`data` as indented JSON, written whole (vidgan_fast.files: a temporary file, then a rename)."""
    text = json.dumps(data, indent=1).encode()
    write_file(path, lambda f: f.write(text), replace=True)


PHASES = ("frames", "video")
STEP_NAMES = {("frames", "D"): "phase 1 D step", ("frames", "G"): "phase 1 G step",
              ("video", "D"): "phase 2 D step", ("video", "G"): "phase 2 G step"}
# --dry-run: the smallest sizes the fast path trains at (tests/test_fast_training.py's), for the interpreter; also
# gpu_verify's dry-run training sizes, so that the calibration's memory projection is of the configuration trained
DRY_SIZES = dict(frames_k=2, frames_batch=4, df_widths=(4, 8, 8), gf_widths=(16, 16, 8, 8), video_k=2, video_batch=2,
                 dv_widths=(4, 4, 8), gv_hidden=(16, 32), gv_lstm=8)
NCU_METRICS = ("gpu__time_duration.sum", "lts__t_sectors.sum", "lts__t_sectors_op_read.sum",
               "lts__t_sectors_op_write.sum", "sm__inst_issued.sum",
               "sm__inst_issued.avg.pct_of_peak_sustained_active", "dram__bytes_read.sum", "dram__bytes_write.sum")
HOT_KERNELS = 3
NCU_MIN_S = 40              # Nsight Compute is not started with less time than this left


def calibration_config(dry_run: bool, precision: str | None = None, device: str = "cuda"):
    """The configuration measured: the paper preset (--dry-run: tiny, at DRY_SIZES), --fast, at `precision`."""
    from vidgan_fast.config import preset
    cfg = preset("tiny", **DRY_SIZES) if dry_run else preset("paper")
    precision = precision or cfg.precision
    return cfg.replace(device=device, fast=True, tf32=precision == "tf32", bf16=precision == "bf16")


def triton_kernel_names() -> set[str]:
    """The names of the project's Triton kernels (kernels/*.py), as the profiler and ncu name their launches."""
    from triton.runtime.jit import KernelInterface

    from vidgan_fast.kernels import col2im, conv, frame_generator, logit, projection, rmsprop
    names = set()
    for module in (col2im, conv, frame_generator, logit, projection, rmsprop):
        names |= {v.fn.__name__ for v in vars(module).values() if isinstance(v, KernelInterface) and hasattr(v, "fn")}
    return names


# ------------------------------------------------------------------------------------------- measuring

def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, n: int, device) -> list[float]:
    """Seconds of each of n calls of fn: CUDA events on a GPU, perf_counter on CPU."""
    import torch
    _sync(device)
    if device.type != "cuda":
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    _sync(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def profile_kernels(fn, n: int, device) -> list[tuple[str, float]]:
    """(name, seconds) of every kernel of n calls of fn, in launch order (torch.profiler; on CPU, every op's self
    CPU time: the plumbing only)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            fn()
        _sync(device)
    if cuda:
        found = [(e.time_range.start, e.name, e.time_range.elapsed_us() * 1e-6) for e in prof.events()
                 if e.device_type == DeviceType.CUDA]
    else:
        found = [(e.time_range.start, e.name, e.self_cpu_time_total * 1e-6) for e in prof.events()
                 if e.device_type == DeviceType.CPU and e.self_cpu_time_total > 0]
    return [(name, s) for _, name, s in sorted(found, key=lambda t: t[0])]


def compare_step(events: list[tuple[str, float]], calls: int, projected: dict | None, triton_names: set) -> dict:
    """One step's kernels (events of `calls` runs of the step, in launch order) beside its projection (a step of a
    `vidgan bench --static --json` file, or None): per kernel name, per Triton launch, and torch's kernels as one
    sum. A kernel's k-th launch in a run is paired with the k-th projected launch of that kernel when both count the
    same launches per step; otherwise only the per-name sums are compared (`paired` False, with the counts)."""
    per_name: dict[str, list[float]] = {}
    for name, s in events:
        per_name.setdefault(name, []).append(s)
    projected_launches = (projected or {}).get("launches", [])
    by_kernel_projected: dict[str, list[dict]] = {}
    for launch in projected_launches:
        by_kernel_projected.setdefault(launch["kernel"], []).append(launch)
    kernels = []
    for name, times in per_name.items():
        mine = by_kernel_projected.get(name, [])
        triton = name in triton_names or name in by_kernel_projected
        kernels.append({"kernel": name, "triton": triton, "measured_s": sum(times) / calls,
                        "launches": len(times) / calls,
                        "projected_s": sum(l["projected_s"] for l in mine) if mine else None,
                        "projected_launches": len(mine) if projected else None})
    for name, mine in by_kernel_projected.items():          # projected, never measured
        if name not in per_name:
            kernels.append({"kernel": name, "triton": True, "measured_s": 0.0, "launches": 0,
                            "projected_s": sum(l["projected_s"] for l in mine), "projected_launches": len(mine)})
    kernels.sort(key=lambda k: -k["measured_s"])
    launches, seen = [], {}
    for launch in projected_launches:
        name = launch["kernel"]
        i = seen[name] = seen.get(name, -1) + 1
        times, count = per_name.get(name, []), len(by_kernel_projected[name])
        measured = (statistics.fmean(times[r * count + i] for r in range(calls))
                    if len(times) == count * calls else None)
        launches.append({"kernel": name, "index": i, "label": launch.get("label", ""),
                         "projected_s": launch["projected_s"], "floor_s": launch.get("floor_s"),
                         "binding": launch.get("binding"), "limits": launch.get("limits", {}),
                         "l2_bytes": launch.get("l2_bytes"), "measured_s": measured})
    triton_measured = sum(k["measured_s"] for k in kernels if k["triton"])
    torch_measured = sum(k["measured_s"] for k in kernels if not k["triton"])
    out = {"kernels": kernels, "launches": launches, "paired": bool(launches) and all(
               l["measured_s"] is not None for l in launches),
           "triton_measured_s": triton_measured, "torch_measured_s": torch_measured,
           "kernel_sum_s": triton_measured + torch_measured}
    if projected:
        torch_ops = projected.get("torch_ops", [])
        out.update(projected_s=projected["projected_s"], floor_s=projected["floor_s"],
                   triton_projected_s=projected.get("triton_s", sum(l["projected_s"] for l in projected_launches)),
                   torch_projected_s=sum(t["projected_s"] for t in torch_ops), torch_projected_ops=len(torch_ops))
    return out


def measure_phase(cfg, phase: str, device, replays: int, profile_replays: int, projected: dict,
                  triton_names: set) -> tuple[list[dict], dict]:
    """([D step, G step] records, measured memory) of one phase's fast state: captured CUDA graphs on a GPU, eager
    fast steps on a CPU (the interpreter: the plumbing)."""
    import gc

    import torch

    from vidgan_fast import step as steps
    from vidgan_fast.fast.engine import to_fast
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    gf = steps.build_frame_generator(cfg).state_dict() if phase == "video" else None
    state = to_fast(steps.build_state(cfg, phase, gf))
    shape, batch = state.phase.sample_shape, state.phase.batch
    real = torch.rand(shape, device=device) * 2 - 1
    if cuda:
        from vidgan_fast.fast.graphs import GraphedSteps
        graphed = GraphedSteps(state, shape, batch)
        graphed.real.copy_(real)
        runs = {"D": graphed.d_graph.replay, "G": graphed.g_graph.replay}
        source = "CUDA graph replays"
    else:
        z = torch.randn(batch, steps.Z_DIM)
        runs = {"D": lambda: steps.d_step(state, real, z), "G": lambda: steps.g_step(state, z)}
        source = "eager fast steps (CPU: Triton interpreter, no speed measure)"
    records = []
    for which, run in runs.items():
        name = STEP_NAMES[(phase, which)]
        this_source, profiler_error = source, None
        if cuda:
            times = time_calls(run, replays, device)
            try:
                events = profile_kernels(run, profile_replays, device)
            except RuntimeError as e:     # a profiler that cannot trace graph replays here: the eager step below
                events, profiler_error = [], " ".join(str(e).split())[:160]
        else:                             # the interpreter: one profiled run per step, timed as a whole
            t0 = time.perf_counter()
            events = profile_kernels(run, profile_replays, device)
            times = [(time.perf_counter() - t0) / profile_replays]
        if cuda and not events:           # a profiler that does not see kernels inside graphs: the eager step
            eager = ((lambda: steps.d_step(state, real, graphed.z_d)) if which == "D"
                     else (lambda: steps.g_step(state, graphed.z_g)))
            eager()
            events = profile_kernels(eager, profile_replays, device)
            this_source = ("eager fast steps (the profiler " + (f"failed on the graph replays: {profiler_error})"
                           if profiler_error else "saw no kernels in the graph replays)"))
        record = {"step": name, "phase": phase, "source": this_source, "replays": replays,
                  "profiled": profile_replays, "measured_step_s": statistics.median(times),
                  "measured_step_min_s": min(times)}
        record.update(compare_step(events, profile_replays, projected.get(name), triton_names))
        records.append(record)
    memory = {"phase": phase}
    if cuda:
        _sync(device)
        free, total = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device)
        memory.update(max_reserved=torch.cuda.max_memory_reserved(device),
                      max_allocated=torch.cuda.max_memory_allocated(device), reserved_after=reserved,
                      outside_pools=total - free - reserved)
        del graphed
    del state, runs
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return records, memory


# ------------------------------------------------------------------------------------------- children

def memory_child(out: str, dry_run: bool, precision: str, arch: int, autotune: bool, phases=PHASES) -> None:
    """lab.memory.project_phase of `phases` (no data set: n_videos 0) into `out` (after each phase)."""
    from vidgan_fast.lab.memory import project_phase
    cfg = calibration_config(dry_run, precision, device="cpu")
    rows = []
    for phase in phases:
        t0 = time.monotonic()
        row = project_phase(cfg, phase, n_videos=0, arch=arch, autotune=autotune)
        rows.append({**row, "seconds": round(time.monotonic() - t0, 1)})
        write_json(out, {"precision": precision, "arch": arch, "autotune": autotune, "rows": rows})


def ncu_child(phase: str, precision: str) -> None:
    """One eager fast D and G step of `phase` at the paper preset, with profiling (cudaProfilerStart) on only
    after a first, warm-up pair: what Nsight Compute (--profile-from-start off) measures."""
    import torch

    from vidgan_fast import step as steps
    from vidgan_fast.fast.engine import to_fast
    cfg = calibration_config(False, precision)
    gf = steps.build_frame_generator(cfg).state_dict() if phase == "video" else None
    state = to_fast(steps.build_state(cfg, phase, gf))
    real = torch.rand(state.phase.sample_shape, device=state.device) * 2 - 1
    z = torch.randn(state.phase.batch, steps.Z_DIM, device=state.device)
    steps.d_step(state, real, z)
    steps.g_step(state, z)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    steps.d_step(state, real, z)
    steps.g_step(state, z)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def hot_kernels(steps: list[dict], n: int = HOT_KERNELS) -> tuple[str | None, list[str], int]:
    """(phase, the n Triton kernels with the most measured time per D+G step in it, their launches per D+G step):
    the phase is the one holding the single hottest Triton kernel."""
    by_phase: dict[str, dict[str, list[float]]] = {}
    for s in steps:
        for k in s.get("kernels", []):
            if k["triton"] and k["launches"]:
                acc = by_phase.setdefault(s["phase"], {}).setdefault(k["kernel"], [0.0, 0.0])
                acc[0] += k["measured_s"]
                acc[1] += k["launches"]
    best = max(((p, t[0]) for p, ks in by_phase.items() for t in ks.values()), key=lambda x: x[1], default=None)
    if best is None:
        return None, [], 0
    phase = best[0]
    ranked = sorted(by_phase[phase].items(), key=lambda kv: -kv[1][0])[:n]
    return phase, [name for name, _ in ranked], int(round(sum(t[1] for _, t in ranked)))


def ncu_command(kernels: list[str], launches: int, phase: str, precision: str) -> list[str]:
    pattern = "^(" + "|".join(kernels) + ")$"
    return ["ncu", "--profile-from-start", "off", "--target-processes", "all", "--kernel-name", f"regex:{pattern}",
            "--launch-count", str(launches), "--metrics", ",".join(NCU_METRICS), "--csv", "--page", "raw",
            "--print-units", "base", sys.executable, "-m", "vidgan_fast.benchmarks.calibrate", "--ncu-child", phase,
            "--precision", precision]


_UNITS = {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0, "byte": 1, "Kbyte": 1e3, "Mbyte": 1e6,
          "Gbyte": 1e9}


def parse_ncu_csv(text: str) -> list[dict]:
    """Nsight Compute's `--csv --page raw` rows: [{"kernel", metric: value (base units: seconds, bytes, sectors,
    %)}], in profiling order. Lines that are not CSV rows (==PROF== messages, the child's output) are ignored."""
    import csv
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    rows = list(csv.reader(lines))
    if not rows or "Kernel Name" not in rows[0]:
        return []
    header, body = rows[0], rows[1:]
    units = {}
    if body and not body[0][header.index("Kernel Name")]:         # the units row
        units = dict(zip(header, body[0]))
        body = body[1:]
    out = []
    for values in body:
        row = dict(zip(header, values))
        rec = {"kernel": row["Kernel Name"]}
        for metric in NCU_METRICS:
            raw = row.get(metric, "").replace(",", "").strip()
            try:
                rec[metric] = float(raw) * _UNITS.get(units.get(metric, ""), 1)
            except ValueError:
                rec[metric] = None
        out.append(rec)
    return out


def pair_ncu(rows: list[dict], phase: str, projected: dict) -> list[dict]:
    """Each profiled launch beside its projection: within one kernel name, ncu's rows come in launch order over the
    phase's D step, then its G step, as the projected launches do."""
    ordered = [l for which in ("D", "G")
               for l in (projected.get(STEP_NAMES[(phase, which)]) or {}).get("launches", [])]
    by_kernel: dict[str, list[dict]] = {}
    for launch in ordered:
        by_kernel.setdefault(launch["kernel"], []).append(launch)
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        i = seen[row["kernel"]] = seen.get(row["kernel"], -1) + 1
        mine = by_kernel.get(row["kernel"], [])
        launch = mine[i] if i < len(mine) else None
        out.append({**row, "index": i, "label": launch["label"] if launch else None,
                    "projected_s": launch["projected_s"] if launch else None,
                    "projected_sectors": launch["l2_bytes"] / 32 if launch and launch.get("l2_bytes") else None,
                    "binding": launch["binding"] if launch else None,
                    "issue_s": (launch.get("limits") or {}).get("issue") if launch else None})
    return out


def run_ncu(record: dict, precision: str, deadline: float, log) -> dict:
    """The Nsight Compute section: skipped with one line where it cannot run, else the paired rows."""
    if record["meta"]["device_type"] != "cuda":
        return {"skipped": "no CUDA GPU"}
    if shutil.which("ncu") is None:
        return {"skipped": "ncu (Nsight Compute) is not on PATH"}
    phase, kernels, launches = hot_kernels(record["steps"])
    if not kernels:
        return {"skipped": "no Triton kernel was measured"}
    left = deadline - time.monotonic()
    if left < NCU_MIN_S:
        return {"skipped": f"time budget spent ({left:.0f} s left, ncu needs {NCU_MIN_S})"}
    argv = ncu_command(kernels, min(max(launches, len(kernels)), 60), phase, precision)
    shown = " ".join("python" if arg == sys.executable else arg for arg in argv)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=left - 5,
                              cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"phase": phase, "kernels": kernels, "command": shown, "error": f"timed out after {left - 5:.0f} s"}
    print(done.stderr[-4000:], file=log)
    rows = parse_ncu_csv(done.stdout)
    out = {"phase": phase, "kernels": kernels, "command": shown}
    if not rows:
        tail = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()][-3:]
        return {**out, "error": f"no rows (exit {done.returncode}): " + " / ".join(tail)}
    return {**out, "rows": pair_ncu(rows, phase, record.get("_projected_steps", {}))}


# ------------------------------------------------------------------------------------------- the write-up

def _us(s) -> str:
    return "-" if s is None else f"{s * 1e6:.3g}" if s * 1e6 < 1000 else f"{s * 1e6:.0f}"


def _ms(s) -> str:
    return "-" if s is None else f"{s * 1e3:.3g}" if s * 1e3 < 100 else f"{s * 1e3:.0f}"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2 ** 20:.0f}"


def format_markdown(record: dict) -> str:
    """The calibration as Markdown: projection used, per step (summary, kernels, launches), memory, ncu."""
    meta, lines = record["meta"], []
    proj = record.get("projection") or {}
    lines.append(f"Calibration ({meta['preset']} preset, {meta['precision']}, {meta['device']}; "
                 f"{'autotuned' if meta.get('autotune') else 'fixed'} tiles; {meta.get('source', '')})")
    if proj.get("unavailable"):
        lines.append(f"- projection: none for this GPU: {proj['unavailable']}")
    elif proj:
        lines.append(f"- projection: {proj['file']} (`{proj.get('command')}`)")
    lines += ["", "| step | measured ms (median) | kernels ms | projected ms | floor ms | measured / projected | "
                  "Triton measured / projected ms | torch measured / projected ms |",
              "|---|---|---|---|---|---|---|---|"]
    for s in record.get("steps", []):
        lines.append(f"| {s['step']} | {_ms(s['measured_step_s'])} | {_ms(s['kernel_sum_s'])} | "
                     f"{_ms(s.get('projected_s'))} | {_ms(s.get('floor_s'))} | "
                     f"{_ratio(s['measured_step_s'], s.get('projected_s'))} | {_ms(s['triton_measured_s'])} / "
                     f"{_ms(s.get('triton_projected_s'))} | {_ms(s['torch_measured_s'])} / "
                     f"{_ms(s.get('torch_projected_s'))} |")
    for s in record.get("steps", []):
        lines += ["", f"{s['step']}: kernels per step ({s['source']}, {s['profiled']} profiled)", "",
                  "| kernel | Triton | launches | measured us | projected launches | projected us | measured / "
                  "projected |", "|---|---|---|---|---|---|---|"]
        for k in s["kernels"][:12]:
            name = k["kernel"] if len(k["kernel"]) <= 60 else k["kernel"][:57] + "..."
            lines.append(f"| {name} | {'yes' if k['triton'] else 'no'} | {k['launches']:g} | {_us(k['measured_s'])} | "
                         f"{'-' if k['projected_launches'] is None else k['projected_launches']} | "
                         f"{_us(k['projected_s'])} | {_ratio(k['measured_s'], k['projected_s'])} |")
        if len(s["kernels"]) > 12:
            rest = s["kernels"][12:]
            lines.append(f"| ({len(rest)} more) | | {sum(k['launches'] for k in rest):g} | "
                         f"{_us(sum(k['measured_s'] for k in rest))} | | | |")
        if s["launches"]:
            lines += ["", f"{s['step']}: each projected Triton launch"
                      + ("" if s["paired"] else " (launch counts differ for some kernels: '-', see the table above)"),
                      "", "| kernel | # | arguments | binding | projected us | floor us | measured us | measured / "
                      "projected |", "|---|---|---|---|---|---|---|---|"]
            for l in s["launches"]:
                lines.append(f"| {l['kernel']} | {l['index']} | {l['label']} | {l['binding']} | "
                             f"{_us(l['projected_s'])} | {_us(l['floor_s'])} | {_us(l['measured_s'])} | "
                             f"{_ratio(l['measured_s'], l['projected_s'])} |")
    if record.get("memory"):
        lines += ["", "Memory per phase (MiB; measured: torch.cuda.max_memory_reserved / _allocated from before the "
                      "state is built until after the replays; outside pools: used - reserved from cudaMemGetInfo; "
                      "projected: lab.memory.project_phase, no data set; its pools exclude the cuBLAS/cuDNN "
                      "workspaces, which it counts in fixed with the CUDA context):", "",
                  "| phase | max reserved | max allocated | reserved after | outside pools | projected pools (regular"
                  " peak / graphs) | projected fixed | projected total | measured total / projected total |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m in record["memory"]:
            p = m.get("projected") or {}
            measured_total = (m["max_reserved"] + m["outside_pools"]) if m.get("max_reserved") is not None else None
            lines.append(f"| {m['phase']} | {_mib(m.get('max_reserved'))} | {_mib(m.get('max_allocated'))} | "
                         f"{_mib(m.get('reserved_after'))} | {_mib(m.get('outside_pools'))} | "
                         f"{_mib(p.get('reserved'))} ({_mib(p.get('regular_reserved_peak'))} / "
                         f"{_mib(p.get('graph_reserved'))}) | {_mib(p.get('fixed'))} | {_mib(p.get('total'))} | "
                         f"{_ratio(measured_total, p.get('total'))} |")
        if record.get("memory_error"):
            lines.append(f"- memory projection: {record['memory_error']}")
    ncu = record.get("ncu") or {}
    if ncu.get("rows"):
        lines += ["", f"Nsight Compute, phase {ncu['phase']}, the {len(ncu['kernels'])} hottest Triton kernels "
                      f"(`{ncu['command']}`):", "",
                  "| kernel | # | arguments | ncu us | projected us | binding | L2 sectors | projected sectors | "
                  "measured / projected sectors | issue active % |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in ncu["rows"]:
            sectors = r.get("lts__t_sectors.sum")
            issue = r.get("sm__inst_issued.avg.pct_of_peak_sustained_active")
            lines.append(f"| {r['kernel']} | {r['index']} | {r.get('label') or '-'} | "
                         f"{_us(r.get('gpu__time_duration.sum'))} | {_us(r.get('projected_s'))} | "
                         f"{r.get('binding') or '-'} | {'-' if sectors is None else f'{sectors:.3g}'} | "
                         f"{'-' if r.get('projected_sectors') is None else format(r['projected_sectors'], '.3g')} | "
                         f"{_ratio(sectors, r.get('projected_sectors'))} | "
                         f"{'-' if issue is None else f'{issue:.1f}'} |")
    elif ncu:
        lines += ["", f"Nsight Compute: {ncu.get('skipped') or ncu.get('error')}"]
    if record.get("error"):
        lines += ["", f"Stopped: {record['error']}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- the command

def _save(out: Path, record: dict) -> None:
    write_json(out, {k: v for k, v in record.items() if not k.startswith("_")})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidgan_fast.benchmarks.calibrate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="the JSON to write (rewritten after every section)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreter: the plumbing only")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default=None, help="default: the preset's (tf32)")
    p.add_argument("--replays", type=int, default=None, help="timed replays per step [20; CPU: the profiled run]")
    p.add_argument("--profile-replays", type=int, default=None, help="profiled replays per step [3; dry run 1]")
    p.add_argument("--projection", default="auto", metavar="FILE|auto",
                   help="a `vidgan bench --static --json` file, or auto: benchmarks/projections/ for this GPU")
    p.add_argument("--budget", type=float, default=170.0, help="seconds; ncu is skipped when too little is left")
    p.add_argument("--phases", default=",".join(PHASES), help="comma list of the phases to calibrate [frames,video]")
    p.add_argument("--no-ncu", action="store_true", help="skip Nsight Compute even where it is on PATH")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--project-autotune", type=int, choices=(0, 1), default=None, help=argparse.SUPPRESS)
    p.add_argument("--ncu-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--arch", type=int, default=90, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.phases = tuple(x.strip() for x in a.phases.split(",") if x.strip())
    if not a.phases or set(a.phases) - set(PHASES):
        p.error(f"--phases: choose from {', '.join(PHASES)}")
    from vidgan_fast.kernels.autotune import enabled as autotune_enabled
    if a.memory_child:
        autotune = autotune_enabled() if a.project_autotune is None else bool(a.project_autotune)
        memory_child(a.memory_child, a.dry_run, a.precision or calibration_config(a.dry_run).precision, a.arch,
                     autotune, a.phases)
        return 0
    if a.ncu_child:
        ncu_child(a.ncu_child, a.precision or calibration_config(False).precision)
        return 0
    if not a.out:
        p.error("--out is required")
    return calibrate(a, autotune_enabled())


def calibrate(a, autotune: bool) -> int:
    import torch

    from vidgan_fast.benchmarks.projected import resolve
    from vidgan_fast.benchmarks.timing import device_info
    deadline = time.monotonic() + a.budget
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if a.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    cfg = calibration_config(a.dry_run, a.precision, device.type)
    replays = a.replays or (1 if a.dry_run else 20)
    profiled = a.profile_replays or (1 if a.dry_run else 3)
    info = device_info(device)
    arch = (lambda c: c[0] * 10 + c[1])(torch.cuda.get_device_capability(device)) if device.type == "cuda" else 90
    preset = "tiny" if a.dry_run else "paper"
    projection = resolve(a.projection, info["name"], cfg.precision, preset)
    record = {"meta": {**info, "device_type": device.type, "preset": preset, "precision": cfg.precision,
                       "phases": list(a.phases),
                       "dry_run": a.dry_run, "autotune": autotune, "arch": arch, "replays": replays,
                       "profile_replays": profiled,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                       "source": "CUDA graphs" if device.type == "cuda" else "eager, Triton interpreter"},
              "projection": {k: v for k, v in projection.items() if k != "steps"},
              "_projected_steps": projection.get("steps", {}), "steps": [], "memory": []}
    _save(out, record)
    # the memory projections run beside the measurement (CPU only, on the meta device): one as this run (its
    # tiles), and on a GPU with fixed tiles one more as --fast training runs (autotuned: the tile timing's
    # L2-flush buffer in the warm-up), for gpu_verify's training stages
    variants = {"memory": autotune}
    if device.type == "cuda" and not autotune:
        variants["memory_training"] = True
    children = {}
    for key, tuned in variants.items():
        path = out.with_name(f"{out.stem}.{key}.json")
        path.unlink(missing_ok=True)
        children[key] = (path, subprocess.Popen(
            [sys.executable, "-m", "vidgan_fast.benchmarks.calibrate", "--memory-child", str(path), "--arch",
             str(arch), "--precision", cfg.precision, "--project-autotune", str(int(tuned)), "--phases",
             ",".join(a.phases),
             *(["--dry-run"] if a.dry_run else [])], cwd=Path(__file__).resolve().parents[1], stdout=sys.stderr,
            stderr=sys.stderr, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}))     # no context: not on the GPU
    measured = {}
    try:
        names = triton_kernel_names()
        for phase in a.phases:
            print(f"[calibrate] phase {phase}: build, capture, time, profile ...", file=sys.stderr, flush=True)
            steps, memory = measure_phase(cfg, phase, device, replays, profiled, record["_projected_steps"], names)
            record["steps"] += steps
            measured[phase] = memory
            record["memory"] = [{**m} for m in measured.values()]
            _save(out, record)
    except Exception as e:        # noqa: BLE001 - what was measured stays; the error is one line of the record
        record["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        _save(out, record)
    projected = {}
    for key, (path, child) in children.items():
        try:
            child.wait(timeout=max(1.0, deadline - time.monotonic() - NCU_MIN_S / 2))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        projected[key] = ({r["phase"]: r for r in json.loads(path.read_text())["rows"]} if path.exists() else {})
        if len(projected[key]) < len(a.phases) and key == "memory":
            record["memory_error"] = (f"the memory projection finished {len(projected[key])} of {len(a.phases)} "
                                      f"phases (exit {child.returncode}, within the stage's time)")
    record["memory"] = [{**measured.get(phase, {"phase": phase}), "projected": projected["memory"].get(phase)}
                        for phase in a.phases if phase in measured or phase in projected["memory"]]
    if "memory_training" in projected:
        record["memory_training"] = [{"phase": phase, "projected": row}
                                     for phase, row in projected["memory_training"].items()]
    _save(out, record)
    record["ncu"] = {"skipped": "--no-ncu"} if a.no_ncu else run_ncu(record, cfg.precision, deadline, sys.stderr)
    _save(out, record)
    print(format_markdown(record))
    return 1 if record.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
