"""The performance report: one table of ops and training steps, reference vs torch.compile vs vmap vs fast, with
the speed-ups, achieved TFLOP/s against the FLOP model (vidgan_fast/flops.py), the fraction of the device's
measured matrix rate, and peak GPU memory (allocated and reserved); saved as JSON too. TF32 is pinned for the
whole run (cuDNN, cuBLAS matmul and the Triton kernels alike: --tf32, the default, or --no-tf32) and recorded
in the header, the JSON meta and every cell.

    vidgan bench                                      # defaults chosen for the device, see below
    vidgan bench --size tiny --repeats 5 --no-compile --json out.json     # default: results/bench-DATE-TIME.json
    python -m vidgan_fast.benchmarks.report ...                   # the same command

Defaults: on a GPU the paper sizes, 20 repeats after 3 warm-up calls, all three columns. On a CPU the tiny sizes,
3 repeats after 1 warm-up call, 1 torch thread (spinning OpenMP threads on a shared CPU make timings meaningless)
and no torch.compile column (compiling on a CPU takes minutes per case; --compile asks for it): a few minutes.
The table header comes first, then each row as soon as it is measured (progress on stderr); the JSON file is
rewritten after every row, so a stopped run keeps what it measured ("complete": false in its meta).

From Python:
    rows = run_report(size="auto", device="auto", out_json="bench.json", repeats=20)
    print(format_table(rows))

Torch is imported only when a report runs (so `vidgan bench --help` is quick).
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

if __package__ in (None, ""):          # `python benchmarks/report.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = ("reference", "compile", "vmap", "fast")          # benchmarks.timing.COLUMNS (torch-free copy; a test checks)
SIZES = ("auto", "paper", "tiny")
WHAT = ("all", "ops", "steps")
CPU_DEFAULTS = dict(repeats=3, warmup=1, compile=False, threads=1)
GPU_DEFAULTS = dict(repeats=20, warmup=3, compile=True, threads=None)


def _error_cell(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0][:160]
    return f"failed: {type(e).__name__}: {line}"


def measure_case(case, device, warmup: int, repeats: int, rates: dict, tf32: bool | None = None) -> dict:
    """Time every column of `case` (a benchmarks.timing.Case) on `device`; one JSON-ready row. With tf32 given,
    the TF32 switches are pinned to it after each column is built (and recorded in the cell either way).

    Peak memory: reset before the column is built, so compilation, CUDA-graph capture and warm-up count;
    allocated (tensors) and reserved (the caching allocator's segments, CUDA-graph private pools included)."""
    import torch

    from vidgan_fast.benchmarks.timing import pin_tf32, reset_peak_memory, tf32_flags, time_call
    row = {"name": case.name, "kind": case.kind, "size": case.size, "flops": case.flops, "columns": {}}
    for column in COLUMNS:
        entry = case.columns.get(column)
        cell = {} if entry is None else {"label": case.labels.get(column, column)}     # None: no such column
        if isinstance(entry, str):
            cell["skipped"] = entry
        elif entry is not None:
            try:
                t0 = time.perf_counter()
                if column in ("compile", "vmap"):
                    torch._dynamo.reset()    # each case compiles afresh (no cache entries left by other cases)
                gc.collect()
                reset_peak_memory(device)
                if device.type == "cuda":      # what was held before this column (op rows: the shared models)
                    cell["reserved_before_bytes"] = torch.cuda.memory_reserved(device)
                fn = entry()
                if tf32 is not None:
                    pin_tf32(tf32)
                cell["tf32"] = tf32_flags(tf32)
                # compile: the first calls compile (and record CUDA graphs); give it room before timing
                compiled = column in ("compile", "vmap") and not isinstance(case.columns.get("compile"), str)
                timing = time_call(fn, case.inputs, device, warmup=max(warmup, 3 if compiled else 1),
                                   repeats=repeats, reset_peak=False)
                cell.update(timing.to_dict(), wall_s=time.perf_counter() - t0)
            except Exception as e:   # noqa: BLE001 - a failed column is a result, the report goes on
                cell["skipped"] = _error_cell(e)
                cell["traceback"] = traceback.format_exc(limit=3)
            finally:
                fn = None
                if column in ("compile", "vmap"):
                    torch._dynamo.reset()      # also frees inductor's CUDA-graph trees (their pools)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        row["columns"][column] = cell
    t = {c: row["columns"][c].get("median_s") for c in COLUMNS}
    row["speedup_vs_reference"] = t["reference"] / t["fast"] if t["reference"] and t["fast"] else None
    row["speedup_vs_compile"] = t["compile"] / t["fast"] if t["compile"] and t["fast"] else None
    row["speedup_vs_vmap"] = t["vmap"] / t["fast"] if t["vmap"] and t["fast"] else None
    # TFLOP/s of the fast column, or of the fastest column that ran
    ran = [c for c in COLUMNS if t[c]]
    best = "fast" if t["fast"] else (min(ran, key=lambda c: t[c]) if ran else None)
    row["rate_column"] = best
    row["tflops"] = case.flops / t[best] / 1e12 if best else None
    row["fraction_of_matrix_rate"] = {
        k: (case.flops / t[best] / r if best and r else None) for k, r in rates.items()}
    row["peak_bytes"] = row["columns"][best].get("peak_bytes") if best else None
    row["peak_reserved_bytes"] = row["columns"][best].get("peak_reserved_bytes") if best else None
    return row


def run_report(size: str = "auto", device: str = "auto", out_json: str | Path | None = None, repeats: int = 20,
               warmup: int = 3, what: str = "all", compile_enabled: bool = True, fast_tf32: bool = True,
               threads: int | None = None, progress=None, on_start=None, on_case=None,
               command: str | None = None) -> list[dict]:
    """Build and time every case; return the rows. With out_json, {'meta': ..., 'rows': ...} is written there
    before the first case and again after every row (meta["complete"] turns true after the last).

    size: 'auto' (paper on CUDA, tiny on CPU), 'paper' or 'tiny'. device: 'auto', 'cpu', 'cuda', 'cuda:N'.
    what: 'all', 'ops' or 'steps'. fast_tf32: let the fast kernels use TF32 (PyTorch's cuDNN convolutions in
    the reference do by default). threads: torch CPU threads for the run (None: leave as is; on a shared CPU
    use 1, since OpenMP threads that spin while the cores are busy elsewhere make timings meaningless).
    Callbacks: on_start(meta, number of rows) once the cases are built; on_case(i, n, name) before row i
    (1-based) is measured; progress(list of cells) after each row.
    """
    import torch

    from vidgan_fast.benchmarks.bench_steps import resolve_size
    from vidgan_fast.benchmarks.timing import (device_info, matrix_rate, pin_tf32, resolve_device, restore_tf32,
                                               tf32_flags)
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
    rows: list[dict] = []
    saved_tf32 = pin_tf32(fast_tf32)
    try:
        rates = matrix_rate(str(dev), torch.get_num_threads())
        meta = dict(device_info(dev), threads=threads or saved_threads, size=size, repeats=repeats, warmup=warmup,
                    fast_tf32=fast_tf32, tf32=tf32_flags(fast_tf32), compile=compile_enabled,
                    matrix_rate_flops=rates,
                    load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    command=command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), complete=False)
        cases = _cases(size, dev, what, compile_enabled, fast_tf32)
        floors = step_floors(size, meta["name"], "tf32" if fast_tf32 else "fp32")
        meta["roofline_device"] = next(iter(floors.values()))["device"] if floors else None
        _save(out_json, meta, rows)
        if on_start:
            on_start(meta, len(cases))
        for i, case in enumerate(cases, 1):
            if on_case:
                on_case(i, len(cases), case["name"] if isinstance(case, dict) else case.name)
            rows.append(case if isinstance(case, dict) else measure_case(case, dev, warmup, repeats, rates, fast_tf32))
            attach_floor(rows[-1], floors)
            _save(out_json, meta, rows)
            if progress:
                progress(format_row(rows[-1]))
        meta["complete"] = True
        _save(out_json, meta, rows)
    finally:
        torch.set_num_threads(saved_threads)
        restore_tf32(saved_tf32)
    return rows


def step_floors(size: str, device_name: str, precision: str) -> dict[str, dict]:
    """The roofline floor (vidgan_fast/roofline.py) of each training step of preset `size` on the device named
    `device_name`, keyed 'phase1 D' ... 'phase2 G'; {} when the device is not in the roofline's table (CPUs)."""
    from vidgan_fast.config import preset
    from vidgan_fast.roofline import floor, step_models
    from vidgan_fast.roofline_devices import device_for_name
    device = device_for_name(device_name)
    if device is None:
        return {}
    keys = ("phase1 D", "phase1 G", "phase2 D", "phase2 G")          # step_models' order
    return {k: floor(s, device, precision) for k, s in zip(keys, step_models(preset(size), precision))}


def attach_floor(row: dict, floors: dict[str, dict]) -> None:
    """Put the step's projected floor (seconds) and the fast column's time over it into the row."""
    f = floors.get(row["name"].split(" step")[0]) if row.get("kind") == "step" else None
    fast = row.get("columns", {}).get("fast", {}).get("median_s")
    row["floor_s"] = f["floor_s"] if f else None
    row["fast_over_floor"] = fast / f["floor_s"] if f and fast else None


def _save(out_json, meta: dict, rows: list[dict]) -> None:
    """Write meta and the rows so far (a temporary file, then a rename: never half a file)."""
    if out_json is None:
        return
    from vidgan_fast.files import write_file
    text = json.dumps({"meta": meta, "rows": rows}, indent=1).encode()
    write_file(Path(out_json), lambda f: f.write(text), replace=True, kept="the rows saved before are kept")


def _cases(size, dev, what, compile_enabled, fast_tf32) -> list:
    """Every case to time, in table order; a group whose cases cannot be built is one error row (a dict)."""
    from vidgan_fast.benchmarks.bench_ops import op_cases
    from vidgan_fast.benchmarks.bench_steps import step_cases
    builders = {"ops": op_cases, "steps": step_cases}
    cases: list = []
    for group in (("ops", "steps") if what == "all" else (what,)):
        try:
            cases += builders[group](size, dev, fast_tf32=fast_tf32, compile_enabled=compile_enabled)
        except Exception as e:   # noqa: BLE001 - e.g. a fast module not written yet: say so in the table
            cases.append({"name": f"{group}: could not build the cases", "kind": group, "size": size, "flops": 0,
                          "error": _error_cell(e), "columns": {}})
    return cases


# ------------------------------------------------------------------------------------ the table

HEADER = ("op / step", "GFLOP", "ref ms", "compile ms", "vmap ms", "fast ms", "fast vs ref", "fast vs compile",
          "fast vs vmap", "TFLOP/s", "% fp32 MM", "% tf32 MM", "floor ms", "fast / floor", "peak alloc MiB",
          "peak reserved MiB")


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
    rate_note = "" if row.get("rate_column") in (None, "fast") else f" ({row['rate_column']})"
    return [row["name"], f"{row['flops'] / 1e9:.3g}", *(_ms(cols.get(c, {})) for c in COLUMNS),
            _x(row.get("speedup_vs_reference")), _x(row.get("speedup_vs_compile")), _x(row.get("speedup_vs_vmap")),
            "-" if tflops is None else f"{tflops:.3g}{rate_note}", _pct(frac.get("fp32")), _pct(frac.get("tf32")),
            "-" if row.get("floor_s") is None else f"{row['floor_s'] * 1e3:.3f}", _x(row.get("fast_over_floor")),
            _mib(row.get("peak_bytes")), _mib(row.get("peak_reserved_bytes"))]


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2 ** 20:.0f}"


def header_lines(markdown: bool = True) -> list[str]:
    """The table's header (Markdown: the header row and its rule)."""
    return ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"] if markdown else []


def row_line(row: dict) -> str:
    """One Markdown table line of a row."""
    return "| " + " | ".join(format_row(row)) + " |"


def format_table(rows: list[dict], markdown: bool = True) -> str:
    """One table (Markdown by default), then the notes: column labels and why cells were skipped."""
    if markdown:
        lines = header_lines() + [row_line(r) for r in rows]
    else:
        body = [list(HEADER)] + [format_row(r) for r in rows]
        widths = [max(len(r[i]) for r in body) for i in range(len(HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines + [""] + format_notes(rows))


def format_notes(rows: list[dict]) -> list[str]:
    """The lines under the table: what each column ran, how to read the ratios, why cells were skipped."""
    notes, labels, skipped = [], {}, {}
    for r in rows:
        if "error" in r:
            notes.append(f"- {r['name']}: {r['error']}")
        for c, cell in r.get("columns", {}).items():
            label = cell.get("label", c)
            if cell and label not in labels.setdefault(c, []):    # {}: the row has no such column ('-')
                labels[c].append(label)
            if "skipped" in cell:
                skipped.setdefault((c, cell["skipped"]), []).append(r["name"])
    timed = [r for r in rows if "error" not in r]
    for (c, why), names in skipped.items():
        where = "all rows" if len(names) == len(timed) else "; ".join(names)
        notes.append(f"- skip* {c} ({where}): {why}")
    head = ["- columns: " + "; ".join(f"{c} = {' | '.join(labels[c])}" for c in COLUMNS if labels.get(c))] \
        if labels else []
    head.append("- fast vs ref / compile / vmap: time ratio (>1 = fast is faster); TFLOP/s and % of the measured "
                "matmul rate are of the fast column (or of the column named in brackets)")
    head.append("- floor ms: the step's roofline floor projected for this GPU by `vidgan bench --static` "
                "(max(executed FLOPs / peak matrix rate, bytes / peak DRAM bandwidth) at the run's precision; "
                "vidgan_fast/roofline.py); fast / floor: the fast column's time over it (target <= 2x); - where "
                "the GPU is not in the roofline's device table, and on CPU")
    head.append("- peak alloc MiB: torch.cuda.max_memory_allocated (live tensors) of that column; peak reserved "
                "MiB: torch.cuda.max_memory_reserved (what the caching allocator holds from the device, CUDA-graph "
                "private pools included: a captured step's footprint shows here, not in alloc); both reset before "
                "the column is built, so compilation, capture and warm-up count (the JSON's reserved_before_bytes: "
                "what was held already); - on CPU")
    return head + notes + memory_notes(rows)


def memory_notes(rows: list[dict]) -> list[str]:
    """Every column's peak memory (alloc / reserved MiB), one line per row that has any (GPU runs only)."""
    out = []
    for r in rows:
        cells = [(c, r["columns"][c]) for c in COLUMNS if r.get("columns", {}).get(c, {}).get("peak_bytes")]
        if cells:
            out.append(f"- peak MiB alloc / reserved, {r['name']}: " + "; ".join(
                f"{c} {_mib(cell['peak_bytes'])} / {_mib(cell.get('peak_reserved_bytes'))}" for c, cell in cells))
    return out


# ------------------------------------------------------------------------------------ the command

def build_parser(prog: str = "vidgan bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="The performance report: reference vs torch.compile vs vmap vs fast, per op and per "
        "training step, as a Markdown table (rows printed as they are measured) and a JSON file.",
        epilog="Defaults follow the device: on a GPU the paper sizes, 20 repeats, 3 warm-up calls, all columns; "
               "on a CPU the tiny sizes, 3 repeats, 1 warm-up call, 1 thread, no torch.compile column (a few "
               "minutes). `vidgan bench --static`: the roofline projection (no GPU needed; --static --help).")
    p.add_argument("--size", choices=SIZES, default="auto", help="auto: paper on a GPU, tiny on a CPU")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--what", choices=WHAT, default="all", help="rows: ops, steps or all")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per cell (GPU 20, CPU 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (GPU 3, CPU 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU: 1; GPU: torch's default)")
    p.add_argument("--json", default=None, help="where to save meta and rows (default: results/bench-DATE-TIME.json, "
                                                "a new file); an existing file needs --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time the torch.compile column (GPU: yes; CPU: no, it compiles for minutes per case)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="TF32 products for every column: cuDNN, cuBLAS matmul (so inductor too) and the Triton "
                        "kernels alike (default: on, as training); --no-tf32: strict fp32 everywhere")
    return p


def main(argv=None, prog: str = "vidgan bench") -> int:
    """The command: header first, each row as it is measured, progress on stderr, the JSON after every row."""
    a = build_parser(prog).parse_args(argv)
    if (a.repeats is not None and a.repeats < 1) or (a.warmup is not None and a.warmup < 0):
        return _fail("--repeats must be at least 1 and --warmup at least 0", 2)
    from vidgan_fast.config import parse_device
    if parse_device(a.device) is None:
        return _fail(f"invalid --device {a.device}: use auto, cpu, cuda or cuda:N", 2)
    from vidgan_fast.benchmarks.timing import resolve_device
    dev = resolve_device(a.device)
    a.json = a.json or str(Path("results") / f"bench-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}.json")
    from vidgan_fast.files import claim_new
    try:                                         # a new name (never an earlier report replaced) unless --overwrite
        placeholder = not a.overwrite and claim_new(a.json)
    except FileExistsError:
        return _fail(f"--json {a.json} already exists; pass --overwrite to replace it, or name another file", 2)
    d = GPU_DEFAULTS if dev.type == "cuda" else CPU_DEFAULTS
    pick = lambda given, name: d[name] if given is None else given      # noqa: E731
    done: list[dict] = []
    total = [0]

    def on_start(meta, n):
        total[0] = n
        print(format_header(meta) + "\n", flush=True)
        print("\n".join(header_lines()), flush=True)

    def on_case(i, n, name):
        print(f"[{i}/{n}] {name} ...", file=sys.stderr, flush=True)

    def progress(cells):
        done.append(cells)
        print("| " + " | ".join(cells) + " |", flush=True)

    try:
        rows = run_report(a.size, str(dev), a.json, pick(a.repeats, "repeats"), pick(a.warmup, "warmup"), a.what,
                          pick(a.compile, "compile"), a.tf32, pick(a.threads, "threads"), progress=progress,
                          on_start=on_start, on_case=on_case, command=" ".join([prog, *(argv or [])]))
    except ValueError as e:
        if placeholder:
            Path(a.json).unlink(missing_ok=True)
        return _fail(str(e), 2)
    except KeyboardInterrupt:
        return _fail(f"interrupted after {len(done)} of {total[0]} rows; {a.json} holds them", 130)
    print("\n" + "\n".join(format_notes(rows)))
    print(f"wrote {a.json}", file=sys.stderr)
    return 0


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def format_header(meta: dict) -> str:
    """One line: date, device, versions, size, threads, measured matrix rates."""
    rates = ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in meta["matrix_rate_flops"].items() if v)
    return (f"{meta['date'][:16]} UTC | {meta['name']} | torch {meta['torch']} | triton {meta['triton']} | "
            f"size {meta['size']} | threads {meta['threads']} | repeats {meta['repeats']} | "
            f"{_tf32_text(meta)} | "
            f"measured matmul rate: {rates}")


def _tf32_text(meta: dict) -> str:
    flags = meta.get("tf32") or {"triton": meta.get("fast_tf32")}
    on = lambda v: "on" if v else "off"      # noqa: E731
    return "TF32 (every column) " + ", ".join(f"{k} {on(v)}" for k, v in flags.items())


if __name__ == "__main__":
    sys.exit(main(prog="python -m vidgan_fast.benchmarks.report"))
