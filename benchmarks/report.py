"""The performance report: one table of ops and training steps, reference vs torch.compile vs vmap vs fast, with
the speed-ups, achieved TFLOP/s against the FLOP model (vidgan_fast/lab/flops.py), the fraction of the device's
measured matrix rate, peak GPU memory (allocated and reserved), and for the steps the per-launch projection of
`vidgan bench --static` beside the measured time; saved as JSON too. TF32 is pinned for the whole run (cuDNN,
cuBLAS matmul and the Triton kernels alike: --tf32, the default, or --no-tf32) and recorded in the header, the JSON
meta and every cell.

    vidgan bench                                      # defaults chosen for the device, see below
    vidgan bench --size tiny --repeats 5 --no-compile --json out.json     # default: results/bench-DATE-TIME.json
    vidgan bench --projection auto                    # steps beside benchmarks/projections/<preset>-<gpu>-<prec>.json
    vidgan bench --what steps --rows phase1 --columns compile --compile --compile-mode reduce-overhead
    python -m vidgan_fast.benchmarks.report ...                   # the same command

The fast column runs the fast modules (Triton: on a CUDA GPU, or through the interpreter on CPU tensors under
TRITON_INTERPRET=1, which is no speed measure). Where they cannot be built (a CPU without TRITON_INTERPRET=1, a GPU
Triton does not target) its cells say `unavailable: <why>` and nothing stands in for them.

The projected step times come from a file `vidgan bench --static --json FILE` wrote (--projection FILE, or `auto`:
the committed one for this GPU, preset and precision in benchmarks/projections/), for the GPU of
vidgan_fast/lab/hardware.py named like this device; the report never computes a projection (that compiles every
kernel: minutes).

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
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")      # eager / aot_eager: Dynamo (and AOTAutograd) only
UNAVAILABLE = "unavailable: "      # benchmarks.timing.UNAVAILABLE (torch-free copy)
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
            if entry.startswith(UNAVAILABLE):       # the fast modules cannot be built here: nothing ran
                cell["unavailable"] = entry[len(UNAVAILABLE):]
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
                compiled = column == "compile" or (column == "vmap" and case.compiled)
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
    return derive(row, rates)


def derive(row: dict, rates: dict) -> dict:
    """The row's figures derived from its timed cells (speed-ups, TFLOP/s, fraction of the matrix rate, peak memory
    of the rate column), in place; returns the row."""
    t = {c: row["columns"].get(c, {}).get("median_s") for c in COLUMNS}
    row["speedup_vs_reference"] = t["reference"] / t["fast"] if t["reference"] and t["fast"] else None
    row["speedup_vs_compile"] = t["compile"] / t["fast"] if t["compile"] and t["fast"] else None
    row["speedup_vs_vmap"] = t["vmap"] / t["fast"] if t["vmap"] and t["fast"] else None
    # TFLOP/s of the fast column, or of the fastest column that ran
    ran = [c for c in COLUMNS if t[c]]
    best = "fast" if t["fast"] else (min(ran, key=lambda c: t[c]) if ran else None)
    row["rate_column"] = best
    row["tflops"] = row["flops"] / t[best] / 1e12 if best else None
    row["fraction_of_matrix_rate"] = {
        k: (row["flops"] / t[best] / r if best and r else None) for k, r in rates.items()}
    row["peak_bytes"] = row["columns"][best].get("peak_bytes") if best else None
    row["peak_reserved_bytes"] = row["columns"][best].get("peak_reserved_bytes") if best else None
    return row


def run_report(size: str = "auto", device: str = "auto", out_json: str | Path | None = None, repeats: int = 20,
               warmup: int = 3, what: str = "all", compile_enabled: bool = True, fast_tf32: bool = True,
               threads: int | None = None, progress=None, on_start=None, on_case=None,
               command: str | None = None, projection: str | Path | None = None, rows: str | None = None,
               columns=None, compile_mode: str | None = None, compile_backend: str | None = None) -> list[dict]:
    """Build and time every case; return the rows. With out_json, {'meta': ..., 'rows': ...} is written there
    before the first case and again after every row (meta["complete"] turns true after the last).

    size: 'auto' (paper on CUDA, tiny on CPU), 'paper' or 'tiny'. device: 'auto', 'cpu', 'cuda', 'cuda:N'.
    what: 'all', 'ops' or 'steps'. fast_tf32: let the fast kernels use TF32 (PyTorch's cuDNN convolutions in
    the reference do by default). threads: torch CPU threads for the run (None: leave as is; on a shared CPU
    use 1, since OpenMP threads that spin while the cores are busy elsewhere make timings meaningless).
    projection: a `vidgan bench --static --json` file, or 'auto' (projected.resolve): the step rows get its
    projected and floor time for this GPU and precision. rows: only the rows whose name starts with this text.
    columns: only these columns are timed (the others: skipped, 'not selected'). compile_mode: torch.compile's
    mode for the compile and vmap columns (default: max-autotune on a GPU, inductor's default on CPU);
    compile_backend: its backend (default inductor; 'eager' traces with Dynamo only: plumbing checks on a CPU).
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
    if compile_mode not in (None, *COMPILE_MODES):
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    if compile_backend not in (None, *COMPILE_BACKENDS):
        raise ValueError(f"compile backend must be one of {COMPILE_BACKENDS}, got {compile_backend!r}")
    unknown = sorted(set(columns or ()) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown column {unknown[0]!r}; choose from {', '.join(COLUMNS)}")
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"report device {device!r}: no CUDA GPU is available on this machine")
    size = resolve_size(size, dev)
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    name_prefix, rows = rows, []
    saved_tf32 = pin_tf32(fast_tf32)
    try:
        info, projected = device_info(dev), None
        if projection is not None:         # first: a wrong file is an error before anything is measured
            from vidgan_fast.benchmarks.projected import resolve
            projected = resolve(projection, info["name"], "tf32" if fast_tf32 else "fp32", size)
        rates = matrix_rate(str(dev), torch.get_num_threads())
        meta = dict(info, threads=threads or saved_threads, size=size, repeats=repeats, warmup=warmup,
                    fast_tf32=fast_tf32, tf32=tf32_flags(fast_tf32), compile=compile_enabled,
                    matrix_rate_flops=rates, compile_mode=compile_mode, compile_backend=compile_backend,
                    columns=list(columns or COLUMNS),
                    load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    command=command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), complete=False)
        if projected is not None:
            meta["projection"] = {k: v for k, v in projected.items() if k != "steps"}
        cases = _cases(size, dev, what, compile_enabled, fast_tf32, compile_mode, compile_backend)
        cases = select(cases, name_prefix, columns)
        _save(out_json, meta, rows)
        if on_start:
            on_start(meta, len(cases))
        for i, case in enumerate(cases, 1):
            if on_case:
                on_case(i, len(cases), case["name"] if isinstance(case, dict) else case.name)
            rows.append(case if isinstance(case, dict) else measure_case(case, dev, warmup, repeats, rates, fast_tf32))
            attach_projection(rows[-1], projected)
            _save(out_json, meta, rows)
            if progress:
                progress(format_row(rows[-1]))
        meta["complete"] = True
        _save(out_json, meta, rows)
    finally:
        torch.set_num_threads(saved_threads)
        restore_tf32(saved_tf32)
    return rows


def select(cases: list, prefix: str | None, columns) -> list:
    """The cases whose name starts with `prefix` (all if None); the columns not in `columns` (all if None) become
    skipped cells ('not selected'). Error rows (dicts) are kept."""
    out = []
    for case in cases:
        if isinstance(case, dict):
            out.append(case)
            continue
        if prefix and not case.name.startswith(prefix):
            continue
        if columns is not None:
            case.columns = {c: (entry if c in columns or entry is None else
                                f"skipped: not selected (--columns {','.join(columns)})")
                            for c, entry in case.columns.items()}
        out.append(case)
    return out


def attach_projection(row: dict, projected: dict | None) -> None:
    """Put the step's projected and floor time (seconds, from the projection file: projected.resolve) and the fast
    column's measured time over the projected one into a step row; None where there is none (op rows, a device
    or precision the file does not project, no file)."""
    from vidgan_fast.benchmarks.projected import step_name
    steps = (projected or {}).get("steps") or {}
    step = steps.get(step_name(row["name"]) or "") if row.get("kind") == "step" else None
    fast = row.get("columns", {}).get("fast", {}).get("median_s")
    row["projected_s"] = step["projected_s"] if step else None
    row["projected_floor_s"] = step["floor_s"] if step else None
    row["measured_over_projected"] = fast / step["projected_s"] if step and fast and step["projected_s"] else None


def merge_rows(rows: list[dict], extra: list[dict], rates: dict) -> list[dict]:
    """`rows` with the timed cells of `extra` (another run's rows of the same names: e.g. a compile-only run) put
    where `rows` has none, and the derived figures recomputed. New list; neither input changes."""
    import copy
    by_name = {r["name"]: r for r in extra if "error" not in r}
    out = []
    for row in rows:
        row = copy.deepcopy(row)
        other = by_name.get(row["name"])
        if other is not None and "error" not in row:
            for c in COLUMNS:
                mine, theirs = row["columns"].get(c, {}), other.get("columns", {}).get(c, {})
                if "median_s" in theirs and "median_s" not in mine:
                    row["columns"][c] = theirs
            derive(row, rates)
            if row.get("projected_s"):
                fast = row["columns"].get("fast", {}).get("median_s")
                row["measured_over_projected"] = fast / row["projected_s"] if fast else None
        out.append(row)
    return out


def _save(out_json, meta: dict, rows: list[dict]) -> None:
    """Write meta and the rows so far (a temporary file, then a rename: never half a file)."""
    if out_json is None:
        return
    from vidgan_fast.files import write_file
    text = json.dumps({"meta": meta, "rows": rows}, indent=1).encode()
    write_file(Path(out_json), lambda f: f.write(text), replace=True, kept="the rows saved before are kept")


def _cases(size, dev, what, compile_enabled, fast_tf32, compile_mode=None, compile_backend=None) -> list:
    """Every case to time, in table order; a group whose cases cannot be built is one error row (a dict)."""
    from vidgan_fast.benchmarks.bench_ops import op_cases
    from vidgan_fast.benchmarks.bench_steps import step_cases
    builders = {"ops": op_cases, "steps": step_cases}
    cases: list = []
    for group in (("ops", "steps") if what == "all" else (what,)):
        try:
            cases += builders[group](size, dev, fast_tf32=fast_tf32, compile_enabled=compile_enabled,
                                     compile_mode=compile_mode, compile_backend=compile_backend)
        except Exception as e:   # noqa: BLE001 - e.g. a fast module not written yet: say so in the table
            cases.append({"name": f"{group}: could not build the cases", "kind": group, "size": size, "flops": 0,
                          "error": _error_cell(e), "columns": {}})
    return cases


# ------------------------------------------------------------------------------------ the table

HEADER = ("op / step", "GFLOP", "ref ms", "compile ms", "vmap ms", "fast ms", "fast vs ref", "fast vs compile",
          "fast vs vmap", "TFLOP/s", "% fp32 MM", "% tf32 MM", "projected ms", "floor ms", "measured / projected",
          "peak alloc MiB", "peak reserved MiB")


def _ms(cell: dict) -> str:
    if "median_s" in cell:
        return f"{cell['median_s'] * 1e3:.3f}"
    if "unavailable" in cell:
        return UNAVAILABLE + cell["unavailable"]
    return "-" if not cell else "skip*"


def _s_ms(v) -> str:
    return "-" if v is None else f"{v * 1e3:.3f}"


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
            _s_ms(row.get("projected_s")), _s_ms(row.get("projected_floor_s")), _x(row.get("measured_over_projected")),
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
            if "skipped" in cell and "unavailable" not in cell:       # an unavailable cell says why itself
                skipped.setdefault((c, cell["skipped"]), []).append(r["name"])
    timed = [r for r in rows if "error" not in r]
    for (c, why), names in skipped.items():
        where = "all rows" if len(names) == len(timed) else "; ".join(names)
        notes.append(f"- skip* {c} ({where}): {why}")
    head = ["- columns: " + "; ".join(f"{c} = {' | '.join(labels[c])}" for c in COLUMNS if labels.get(c))] \
        if labels else []
    head.append("- fast vs ref / compile / vmap: time ratio (>1 = fast is faster); TFLOP/s and % of the measured "
                "matmul rate are of the fast column (or of the column named in brackets)")
    head.append("- projected ms / floor ms: the step's per-launch projection for this GPU at the run's precision, "
                "read from a `vidgan bench --static --json` file (--projection; vidgan_fast/lab/cost.py: per launch "
                "the binding limit of instruction issue, tensor cores, L2 sectors, DRAM bytes; floor: max(FLOPs / "
                "peak, compulsory bytes / HBM) per launch), summed op-serially; a projection, not a measurement. "
                "measured / projected: the fast column's measured time over it (> 1: slower than projected). - on "
                "op rows, and where no projection applies (the reason is in the JSON's meta.projection)")
    head.append("- peak alloc MiB: torch.cuda.max_memory_allocated (live tensors) of that column; peak reserved "
                "MiB: torch.cuda.max_memory_reserved (what the caching allocator holds from the device, CUDA-graph "
                "private pools included: a captured step's footprint shows here, not in alloc); both reset before "
                "the column is built, so compilation, capture and warm-up count (the JSON's reserved_before_bytes: "
                "what was held already); - on CPU")
    return head + notes + memory_notes(rows)


def projection_note(meta: dict) -> str | None:
    """One line: which projection the step rows were read against, or why none applies."""
    p = meta.get("projection")
    if not p:
        return None
    if "unavailable" in p:
        return f"- projection: none applies ({p['unavailable']})"
    return (f"- projection: {p['file']} ({p['gpu']}, {p['precision']}, preset {p['preset']}; written by "
            f"`{p['command']}`)")


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
               "minutes). `vidgan bench --static`: the per-launch projection (no GPU needed; --static --help), "
               "which --projection reads.")
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
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                   help="torch.compile's mode for the compile (and compiled vmap) column (default: max-autotune on "
                        "a GPU, inductor's default on a CPU)")
    p.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default=None,
                   help="torch.compile's backend (default inductor; eager: Dynamo's tracing only, to check the "
                        "compile column's plumbing on a CPU in seconds)")
    p.add_argument("--rows", default=None, metavar="PREFIX",
                   help="only the rows whose name starts with PREFIX (e.g. phase1, 'D_F bank')")
    p.add_argument("--columns", default=None, metavar="LIST",
                   help=f"comma list of the columns to time [all]: {', '.join(COLUMNS)}")
    p.add_argument("--projection", default=None, metavar="FILE|auto",
                   help="a `vidgan bench --static --json` file: the step rows get its projected time for this GPU "
                        "and precision; auto: the committed one in benchmarks/projections/ (none: no projection)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="TF32 products for every column: cuDNN, cuBLAS matmul (so inductor too) and the Triton "
                        "kernels alike (default: on, as training); --no-tf32: strict fp32 everywhere")
    return p


def main(argv=None, prog: str = "vidgan bench") -> int:
    """The command: header first, each row as it is measured, progress on stderr, the JSON after every row."""
    a = build_parser(prog).parse_args(argv)
    if (a.repeats is not None and a.repeats < 1) or (a.warmup is not None and a.warmup < 0):
        return _fail("--repeats must be at least 1 and --warmup at least 0", 2)
    columns = None
    if a.columns is not None:
        columns = [c.strip() for c in a.columns.split(",") if c.strip()]
        unknown = sorted(set(columns) - set(COLUMNS))
        if unknown or not columns:
            return _fail(f"--columns: unknown column {unknown[0] if unknown else a.columns!r}; choose from "
                         f"{', '.join(COLUMNS)}", 2)
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
    total, started = [0], {}

    def on_start(meta, n):
        total[0] = n
        started.update(meta)
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
                          on_start=on_start, on_case=on_case, command=" ".join([prog, *(argv or [])]),
                          projection=a.projection, rows=a.rows, columns=columns, compile_mode=a.compile_mode,
                          compile_backend=a.compile_backend)
    except ValueError as e:
        if placeholder:
            Path(a.json).unlink(missing_ok=True)
        return _fail(str(e), 2)
    except KeyboardInterrupt:
        return _fail(f"interrupted after {len(done)} of {total[0]} rows; {a.json} holds them", 130)
    print("\n" + "\n".join(format_notes(rows)))
    note = projection_note(started)
    if note:
        print(note)
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
