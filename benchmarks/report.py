"""The performance report (issue 6): one table of ops and training steps, reference vs torch.compile vs fast,
with the speed-ups, achieved TFLOP/s against the FLOP model (vidgan_fast/flops.py), the fraction of the device's
measured matrix rate, and peak GPU memory; saved as JSON too.

    python -m benchmarks.report                       # paper sizes on a GPU, tiny on CPU
    python -m benchmarks.report --size tiny --repeats 5 --no-compile --json out.json

From Python (what `vidgan bench` wraps):
    rows = run_report(size="auto", device="auto", out_json="bench.json", repeats=20)
    print(format_table(rows))
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

if __package__ in (None, ""):          # `python benchmarks/report.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import COLUMNS, Case, device_info, matrix_rate, resolve_device, time_call  # noqa: E402

SIZES = ("auto", "paper", "tiny")
WHAT = ("all", "ops", "steps")


def _error_cell(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0][:160]
    return f"failed: {type(e).__name__}: {line}"


def measure_case(case: Case, device: torch.device, warmup: int, repeats: int, rates: dict) -> dict:
    """Time every column of `case`; one JSON-ready row."""
    row = {"name": case.name, "kind": case.kind, "size": case.size, "flops": case.flops, "columns": {}}
    for column in COLUMNS:
        entry = case.columns[column]
        cell = {"label": case.labels.get(column, column)}
        if isinstance(entry, str):
            cell["skipped"] = entry
        else:
            try:
                t0 = time.perf_counter()
                if column == "compile":
                    torch._dynamo.reset()    # each case compiles afresh (no cache entries left by other cases)
                fn = entry()
                # compile: the first calls compile (and record CUDA graphs); give it room before timing
                timing = time_call(fn, case.inputs, device, warmup=max(warmup, 3 if column == "compile" else 1),
                                   repeats=repeats)
                cell.update(timing.to_dict(), wall_s=time.perf_counter() - t0)
            except Exception as e:   # noqa: BLE001 - a failed column is a result, the report goes on
                cell["skipped"] = _error_cell(e)
                cell["traceback"] = traceback.format_exc(limit=3)
            finally:
                fn = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        row["columns"][column] = cell
    t = {c: row["columns"][c].get("median_s") for c in COLUMNS}
    row["speedup_vs_reference"] = t["reference"] / t["fast"] if t["reference"] and t["fast"] else None
    row["speedup_vs_compile"] = t["compile"] / t["fast"] if t["compile"] and t["fast"] else None
    # TFLOP/s of the fast column, or of the fastest column that ran
    ran = [c for c in COLUMNS if t[c]]
    best = "fast" if t["fast"] else (min(ran, key=lambda c: t[c]) if ran else None)
    row["rate_column"] = best
    row["tflops"] = case.flops / t[best] / 1e12 if best else None
    row["fraction_of_matrix_rate"] = {
        k: (case.flops / t[best] / r if best and r else None) for k, r in rates.items()}
    row["peak_bytes"] = row["columns"][best].get("peak_bytes") if best else None
    return row


def run_report(size: str = "auto", device: str = "auto", out_json: str | Path | None = None, repeats: int = 20,
               warmup: int = 3, what: str = "all", compile_enabled: bool = True, fast_tf32: bool = True,
               threads: int | None = None, progress=None) -> list[dict]:
    """Build and time every case; return the rows (and write {'meta': ..., 'rows': ...} to out_json if given).

    size: 'auto' (paper on CUDA, tiny on CPU), 'paper' or 'tiny'. device: 'auto', 'cpu', 'cuda', 'cuda:N'.
    what: 'all', 'ops' or 'steps'. fast_tf32: let the fast kernels use TF32 (PyTorch's cuDNN convolutions in
    the reference do by default). threads: torch CPU threads for the run (None: leave as is; on a shared CPU
    use 1, since OpenMP threads that spin while the cores are busy elsewhere make timings meaningless).
    progress: a callable(list of cells) called once per finished row.
    """
    from benchmarks.bench_steps import resolve_size
    if size not in SIZES:
        raise ValueError(f"report size must be one of {SIZES}, got {size!r}")
    if what not in WHAT:
        raise ValueError(f"report rows must be one of {WHAT}, got {what!r}")
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"report device {device!r}: no CUDA GPU is available on this machine")
    size = resolve_size(size, dev)
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        rows, rates = _run(size, dev, repeats, warmup, what, compile_enabled, fast_tf32, progress)
    finally:
        torch.set_num_threads(saved_threads)
    if out_json is not None:
        meta = dict(device_info(dev), threads=threads or saved_threads, size=size, repeats=repeats, warmup=warmup,
                    fast_tf32=fast_tf32, matrix_rate_flops=rates,
                    load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
        Path(out_json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


def _run(size, dev, repeats, warmup, what, compile_enabled, fast_tf32, progress) -> tuple[list[dict], dict]:
    from benchmarks.bench_ops import op_cases
    from benchmarks.bench_steps import step_cases
    rates = matrix_rate(str(dev), torch.get_num_threads())
    builders = {"ops": op_cases, "steps": step_cases}
    rows = []
    for group in (("ops", "steps") if what == "all" else (what,)):
        try:
            cases = builders[group](size, dev, fast_tf32=fast_tf32, compile_enabled=compile_enabled)
        except Exception as e:   # noqa: BLE001 - e.g. a fast module not written yet: say so in the table
            rows.append({"name": f"{group}: could not build the cases", "kind": group, "size": size, "flops": 0,
                         "error": _error_cell(e), "columns": {}})
            continue
        for case in cases:
            rows.append(measure_case(case, dev, warmup, repeats, rates))
            if progress:
                progress(format_row(rows[-1]))
    return rows, rates


# ------------------------------------------------------------------------------------ the table

HEADER = ("op / step", "GFLOP", "ref ms", "compile ms", "fast ms", "fast vs ref", "fast vs compile", "TFLOP/s",
          "% fp32 MM", "% tf32 MM", "peak MiB")


def _ms(cell: dict) -> str:
    if "median_s" in cell:
        return f"{cell['median_s'] * 1e3:.3f}"
    return "-" if not cell else "skip*"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_row(row: dict) -> list[str]:
    cols = row.get("columns", {})
    frac = row.get("fraction_of_matrix_rate", {})
    tflops = row.get("tflops")
    peak = row.get("peak_bytes")
    rate_note = "" if row.get("rate_column") in (None, "fast") else f" ({row['rate_column']})"
    return [row["name"], f"{row['flops'] / 1e9:.3g}", *(_ms(cols.get(c, {})) for c in COLUMNS),
            _x(row.get("speedup_vs_reference")), _x(row.get("speedup_vs_compile")),
            "-" if tflops is None else f"{tflops:.3g}{rate_note}", _pct(frac.get("fp32")), _pct(frac.get("tf32")),
            "-" if peak is None else f"{peak / 2 ** 20:.0f}"]


def format_table(rows: list[dict], markdown: bool = True) -> str:
    """One table (Markdown by default), then the notes: column labels and why cells were skipped."""
    body = [list(HEADER)] + [format_row(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in body]
        lines.insert(1, "|" + "|".join("---" for _ in HEADER) + "|")
    else:
        widths = [max(len(r[i]) for r in body) for i in range(len(HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    notes, labels, skipped = [], {}, {}
    for r in rows:
        if "error" in r:
            notes.append(f"- {r['name']}: {r['error']}")
        for c, cell in r.get("columns", {}).items():
            labels.setdefault(c, cell.get("label", c))
            if "skipped" in cell:
                skipped.setdefault((c, cell["skipped"]), []).append(r["name"])
    timed = [r for r in rows if "error" not in r]
    for (c, why), names in skipped.items():
        where = "all rows" if len(names) == len(timed) else "; ".join(names)
        notes.append(f"- skip* {c} ({where}): {why}")
    head = ["- columns: " + "; ".join(f"{c} = {labels[c]}" for c in COLUMNS if c in labels)] if labels else []
    head.append("- fast vs ref / fast vs compile: time ratio (>1 = fast is faster); TFLOP/s and % of the measured "
                "matmul rate are of the fast column (or of the column named in brackets); peak MiB is "
                "torch.cuda.max_memory_allocated of that column (- on CPU)")
    return "\n".join(lines + [""] + head + notes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m benchmarks.report")
    p.add_argument("--size", choices=SIZES, default="auto", help="auto: paper on a GPU, tiny on CPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--what", choices=WHAT, default="all", help="rows: ops, steps or all")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (use 1 on a shared CPU)")
    p.add_argument("--json", default="bench.json", help="where to save meta and rows (default bench.json)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--no-tf32", action="store_true", help="fast kernels in strict fp32 (no TF32)")
    a = p.parse_args(argv)
    rows = run_report(a.size, a.device, a.json, a.repeats, a.warmup, a.what, not a.no_compile, not a.no_tf32,
                      a.threads, progress=lambda cells: print("  ".join(cells), flush=True))
    print("\n" + format_header(json.loads(Path(a.json).read_text())["meta"]) + "\n")
    print(format_table(rows))
    return 0


def format_header(meta: dict) -> str:
    """One line: date, device, versions, size, threads, measured matrix rates."""
    rates = ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in meta["matrix_rate_flops"].items() if v)
    return (f"{meta['date'][:16]} UTC | {meta['name']} | torch {meta['torch']} | triton {meta['triton']} | "
            f"size {meta['size']} | threads {meta['threads']} | repeats {meta['repeats']} | "
            f"fast TF32 {'on' if meta.get('fast_tf32') else 'off'} | "
            f"measured matmul rate: {rates}")


if __name__ == "__main__":
    sys.exit(main())
