"""The first GPU run (issue 13), one command: every check and measurement that needs a GPU, each stage a
subprocess with its own time limit inside one time budget, written up as ONE Markdown block and ONE JSON to
paste into benchmarks/RESULTS.md. A stage that fails, hangs or runs out of time is recorded and the run goes on.

    python -m vidgan_fast.benchmarks.gpu_verify --out gpu_run       # repo root of the GPU machine, < 8 min
    python -m vidgan_fast.benchmarks.gpu_verify --dry-run --out /tmp/v   # the same stages, tiny, on CPU

Stages, in order of value (estimated time on an H100/H200 -> its limit):
    env           device, torch / Triton / CUDA versions, nvtx and ncu present or not                  ~5 s -> 30 s
    check         python -m vidgan_fast check --device cuda --paper-size  (ops, and 3 CUDA-graph steps vs eager)
                                                                                                 ~60-90 s -> 110 s
    calibrate     python -m vidgan_fast.benchmarks.calibrate (issue 24 item 4): one captured D and G step per phase
                  at the paper preset with fixed tiles, per-kernel device time (torch.profiler) beside each launch's
                  projection from benchmarks/projections/paper-<gpu>-<precision>.json, max_memory_reserved beside
                  lab.memory's projection (computed there, beside the measurement), Nsight Compute on the 3 hottest
                  kernels if `ncu` is on PATH                                                   ~90-150 s -> 170 s
    train_frames  python -m vidgan_fast train frames --preset paper --device cuda --fast --steps N  ~40-60 s -> 90 s
    train_video   python -m vidgan_fast train video --frames <frames.ckpt> ... (step time from log.jsonl, peak
                  memory from torch.cuda.max_memory_allocated / max_memory_reserved of the training process)
                                                                                                  ~40-60 s -> 90 s
    report        python -m vidgan_fast.benchmarks.report --size paper --device cuda --repeats 5 --no-compile
                  --projection auto                                                              ~50-70 s -> 75 s
    gpu_tests     python -m pytest -m gpu tests                                                      ~40 s -> 60 s
    check_tf32    the check again with --tf32                                                        ~40 s -> 50 s
    compile       the torch.compile column of the phase-1 steps: the report with --what steps --rows phase1
                  --columns compile --compile --compile-mode reduce-overhead (CUDA graphs, no autotuning: minutes
                  less than max-autotune), merged into the report's table                        ~2-3 min -> 150 s
All within --budget 440 s: a stage is not started with under 15 s left, one at its limit gets SIGTERM and 30 s to
save, so the run ends within 8 minutes. The limits add up to more than the budget: the last stages run only when
the earlier ones finish early (compile, the least valuable, mostly will not within 8 minutes; run it alone after:
`--stages compile --budget 300 --out gpu_run_compile`, or pass --budget). Training uses 200 steps and 4,096
on-the-fly videos (generating the paper's 100,000 takes over a minute of CPU).

A stage's status is pass, FAIL, TIMEOUT (stopped at its limit: SIGTERM, so training still saves and logs),
not checked (it ran but checked nothing here: skipped rows or tests, a calibration on a CPU), fallback (--fast ran
the reference path), no graphs (CUDA-graph capture failed, the steps ran eagerly) or not run (budget spent, or an
earlier stage's output missing). Exit status 0 only when every stage passes; with --dry-run, 0 when no stage
failed (on a CPU not checked, fallback and not run are what a working plumbing gives; FAIL and TIMEOUT are not).

--dry-run checks the plumbing on a CPU: tiny sizes and steps, the check's op rows through the Triton
interpreter (its CUDA-graph rows are NOT CHECKED there), the calibration's steps through the interpreter (eager,
its profiler sees CPU ops; no projection matches a CPU; Nsight Compute skipped), training with TRITON_INTERPRET=0
so that --fast falls back to the reference path (the interpreter would take minutes per step), the compile stage
with Dynamo's eager backend (inductor takes minutes per step on a CPU). Training runs in a scratch folder (--work,
deleted afterwards unless --keep-work): paper-size checkpoints are gigabytes. Every file this command writes is
written whole (a temporary file, then a rename). Needs no network and no nvtx package.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):          # `python benchmarks/gpu_verify.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidgan_fast.benchmarks.calibrate import DRY_SIZES, write_json
from vidgan_fast.files import write_file


def write_text(path, text: str) -> None:
    """`text` written whole (vidgan_fast.files: a temporary file, then a rename)."""
    write_file(path, lambda f: f.write(text.encode()), replace=True)

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
GRACE_S = 30            # after SIGTERM at the time limit, before SIGKILL (training saves a checkpoint)
DRY_RUN_OK = ("pass", "not checked", "fallback", "not run")     # what a CPU dry run's working stages report
MIN_STAGE_S = 15        # a stage is not started with less time than this left in the budget
STAGES = ("env", "check", "calibrate", "train_frames", "train_video", "report", "gpu_tests", "check_tf32", "compile")
ENV_CODE = """
import json, platform, shutil, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(), "gpu": None,
        "ncu": shutil.which("ncu")}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
try:
    import nvtx  # noqa: F401
    info["nvtx"] = True
except ImportError:
    info["nvtx"] = False
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info["gpu"] = f"{p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2 ** 30:.0f} GiB)"
print(json.dumps(info))
"""
TRAIN_CODE = "import sys; from vidgan_fast.benchmarks.gpu_verify import train_child; train_child(sys.argv[1], sys.argv[2:])"


def _flags(names) -> list[str]:
    """The training command's options for DRY_SIZES' entries `names` (tuples as comma lists)."""
    out = []
    for name in names:
        value = DRY_SIZES[name]
        out += [f"--{name.replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return out


# tiny widths for --dry-run (the sizes tests/test_fast_training.py trains with; calibrate.py's DRY_SIZES)
DRY_FRAMES = _flags(("frames_k", "frames_batch", "df_widths", "gf_widths"))
DRY_VIDEO = _flags(("video_k", "video_batch", "dv_widths", "gf_widths", "gv_hidden", "gv_lstm"))


@dataclass
class Stage:
    name: str
    title: str
    argv: list[str]
    timeout: float
    env: dict = field(default_factory=dict)
    needs: str | None = None            # a file that must exist before the stage can run
    limit_arg: str | None = None        # an option given the stage's own limit, less LIMIT_MARGIN_S (its budget)


LIMIT_MARGIN_S = 15                     # a stage told its limit (calibrate's --budget) finishes this much before it


def train_child(memory_json: str, args: list[str]) -> None:
    """`python -m vidgan_fast <args>` in this process, then its peak CUDA memory written to memory_json."""
    import torch

    from vidgan_fast.cli import main
    try:
        code = main(args, prog_name="vidgan")       # a return value is ctx.exit's code
        code = code if isinstance(code, int) else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        write_json(memory_json, {"max_memory_allocated": torch.cuda.max_memory_allocated() if cuda else None,
                                 "max_memory_reserved": torch.cuda.max_memory_reserved() if cuda else None})
    sys.exit(code)


TRAIN_VIDEOS = {False: 4096, True: 16}        # --n-videos of the training stages (paper, --dry-run)


def plan(a, out: Path, work: Path) -> list[Stage]:
    dev, preset = ("cpu", "tiny") if a.dry_run else ("cuda", "paper")
    steps = str(a.steps)
    run = work / "run"
    check = [PY, "-m", "vidgan_fast", "check", "--device", dev]
    check += ["--op", "project_frames", "--op", "step_phase1", "--op", "step_phase2"] if a.dry_run else ["--paper-size"]
    train = [PY, "-c", TRAIN_CODE]
    common = ["--preset", preset, "--device", dev, "--fast", "--steps", steps, "--out", str(run),
              "--log-every", "1" if a.dry_run else "20", "--checkpoint-every", "1000000"]
    common += ["--n-videos", str(TRAIN_VIDEOS[a.dry_run])]      # on-the-fly data: 100k take minutes
    train_env = {"TRITON_INTERPRET": "0"} if a.dry_run else {}
    report = [PY, "-m", "vidgan_fast.benchmarks.report", "--size", preset, "--device", dev]
    bench = report + ["--repeats", str(a.repeats), "--json", str(out / "bench.json"), "--projection", "auto"]
    bench += ["--warmup", "0", "--threads", "1", "--what", "steps"] if a.dry_run else ["--warmup", "2"]
    bench += [] if a.compile else ["--no-compile"]
    # phase 1's torch.compile column: reduce-overhead (CUDA graphs, no autotuning); the dry run traces with Dynamo's
    # eager backend (inductor compiles for minutes per step on a CPU)
    compile_ = report + ["--what", "steps", "--rows", "phase1", "--columns", "compile", "--compile",
                         "--repeats", str(a.repeats), "--json", str(out / "compile.json")]
    compile_ += (["--warmup", "0", "--threads", "1", "--compile-backend", "eager"] if a.dry_run
                 else ["--warmup", "3", "--compile-mode", "reduce-overhead"])
    calibrate = [PY, "-m", "vidgan_fast.benchmarks.calibrate", "--out", str(out / "calibrate.json")]
    calibrate += ["--dry-run"] if a.dry_run else []
    # fixed tiles: the ones the projection costs (kernels/autotune.py's first candidates)
    calibrate_env = {"VIDGAN_AUTOTUNE": "0", **({"TRITON_INTERPRET": "1"} if a.dry_run else {})}
    tests = [PY, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
             "tests/test_fast_training.py" if a.dry_run else "tests"]
    t = 60 if a.dry_run else None
    # the CUDA-graph rows compare replays with eager steps: cuBLAS with a fixed workspace is deterministic across
    # streams, so both sides round alike (RMSprop amplifies rounding noise in zero-gradient biases to +-lr moves)
    same = {} if a.dry_run else {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    return [
        Stage("env", "device and versions", [PY, "-c", ENV_CODE], 30),
        Stage("check", f"vidgan check ({'small' if a.dry_run else 'paper'} sizes, fp32)",
              check + ["--json", str(out / "check.json")], t or 110, same),
        Stage("calibrate", f"per-kernel times and memory vs the projections ({preset} preset, "
                           f"{'Triton interpreter' if a.dry_run else 'CUDA graphs'})",
              calibrate, 90 if a.dry_run else 170, calibrate_env, limit_arg="--budget"),
        Stage("train_frames", f"--fast training, phase 1 ({preset} preset)",
              train + [str(out / "train_frames.memory.json"), "train", "frames", *common,
                       *(DRY_FRAMES if a.dry_run else [])], t or 90, train_env),
        Stage("train_video", f"--fast training, phase 2 ({preset} preset)",
              train + [str(out / "train_video.memory.json"), "train", "video", "--frames", str(run / "frames.ckpt"),
                       *common, *(DRY_VIDEO if a.dry_run else [])], t or 90, train_env, needs=str(run / "frames.ckpt")),
        Stage("report", f"benchmark report ({preset} sizes, {a.repeats} repeats)", bench, t or 75),
        Stage("gpu_tests", "pytest -m gpu", tests, t or 60, same),
        Stage("check_tf32", f"vidgan check --tf32 ({'small' if a.dry_run else 'paper'} sizes)",
              check + ["--tf32", "--json", str(out / "check_tf32.json")], t or 50, same),
        Stage("compile", f"torch.compile column of the phase-1 steps ({preset} sizes)", compile_, t or 150),
    ]


def run_stage(stage: Stage, deadline: float, log_path: Path) -> dict:
    """Run one stage under min(its limit, the budget left); its record (status filled in later)."""
    shown = ["python", *stage.argv[1:]]
    if shown[1] == "-c":              # the code itself is in this file
        shown[1:3] = ["vidgan_fast.benchmarks.gpu_verify.train_child" if stage.argv[2] == TRAIN_CODE else "<ENV_CODE>"]
    rec = {"name": stage.name, "title": stage.title, "command": " ".join(shown), "env": stage.env,
           "log": log_path.name}
    left = deadline - time.monotonic()
    if stage.needs and not Path(stage.needs).exists():
        return {**rec, "status": "not run", "why": f"{Path(stage.needs).name} missing (an earlier stage failed)"}
    if left < MIN_STAGE_S:
        return {**rec, "status": "not run", "why": "time budget spent"}
    limit = min(stage.timeout, left)
    argv = stage.argv + ([stage.limit_arg, str(max(1, int(limit - LIMIT_MARGIN_S)))] if stage.limit_arg else [])
    rec["command"] += " " + " ".join(argv[len(stage.argv):]) if stage.limit_arg else ""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1", **stage.env}
    if "TRITON_INTERPRET" not in stage.env:
        env.pop("TRITON_INTERPRET", None)
    t0, timed_out = time.monotonic(), False
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    return {**rec, "returncode": rc, "timed_out": timed_out, "wall_s": round(time.monotonic() - t0, 1),
            "limit_s": round(limit, 1)}


def tail(path: Path, n: int = 15) -> list[str]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()][-n:]


# ---- what each stage's output says ----

def read_check(path: Path) -> dict:
    data = json.loads(path.read_text())
    bad = [f"{r['op']}: {r['status']} ({r['note']})" for r in data["results"] if r["status"] != "pass"]
    steps = {r["op"]: r["rel_err"] for r in data["results"] if r["op"].startswith("captured")}
    return {"summary": data["summary"], "not_passed": bad, "step_rel_err": steps, "environment": data["environment"]}


def read_tests(lines: list[str]) -> dict:
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)",
                                                 lines[-1] if lines else "")}
    return {"counts": counts, "summary": lines[-1] if lines else ""}


def read_train(stage: str, log_path: Path, memory_path: Path, run: Path, dry_run: bool,
               calibration: Path | None = None) -> dict:
    """Steps done, median step time after the first two log flushes (they hold the op check, Triton compiles,
    warm-up and capture), peak CUDA memory, whether --fast and CUDA graphs ran, the full phase projected, and the
    projected memory (the calibrate stage's lab/memory.py projection of this phase, with this stage's data set)."""
    from vidgan_fast.config import preset
    from vidgan_fast.step import Phase
    phase = "frames" if stage == "train_frames" else "video"
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    out = {"fast": "--fast: running the PyTorch reference path instead" not in text,
           "graphs": None if dry_run else "CUDA graph capture failed" not in text}
    lines = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").exists() else []
    rows = [r for r in map(json.loads, lines) if r["phase"] == phase]
    # every step of one flush carries that flush's rate (steps / s since the previous flush)
    flushes = [r["it_s"] for i, r in enumerate(rows) if i == 0 or r["it_s"] != rows[i - 1]["it_s"]]
    steady = flushes[2:] or flushes[1:] or flushes
    out["steps"] = rows[-1]["step"] if rows else 0
    out["it_s"] = statistics.median(steady) if steady else None
    out["step_ms"] = 1e3 / out["it_s"] if out["it_s"] else None
    cfg = preset("tiny" if dry_run else "paper")
    full = Phase.of(cfg, phase).schedule(cfg.n_videos, cfg.max_steps)[1]
    out["full_phase_steps"] = full
    out["projected_full_phase_h"] = full / out["it_s"] / 3600 if out["it_s"] else None
    if memory_path.exists():
        out.update(json.loads(memory_path.read_text()))
    out.update(projected_training_memory(calibration, phase, TRAIN_VIDEOS[dry_run]))
    return out


def projected_training_memory(calibration: Path | None, phase: str, n_videos: int) -> dict:
    """The training stage's projected memory from the calibrate stage's lab.memory projection of `phase` (its
    `training` rows: autotuned tiles, as training runs), plus the stage's uint8 data set where lab/memory.py's rule
    puts it on the GPU: projected_bytes (pools + data: comparable to max_memory_reserved) and projected_total (+ the
    CUDA context and workspaces). Computed nowhere else: it takes up to a minute per phase at paper size."""
    from vidgan_fast.fast.device_data import MARGIN
    from vidgan_fast.lab.memory import BUDGET, FRAMES, SIZE
    try:
        data = json.loads(calibration.read_text()) if calibration else None
    except (OSError, ValueError):
        data = None
    rows = (data or {}).get("memory_training") or (data or {}).get("memory") or []
    row = next((r.get("projected") for r in rows if r.get("phase") == phase and r.get("projected")), None)
    if row is None:
        return {"projected_error": "no memory projection of this phase (the calibrate stage did not run, did not "
                                   "finish it or was not asked for this phase)"}
    videos = n_videos * FRAMES * SIZE * SIZE
    on_gpu = row["fixed"] + row["reserved"] + videos + MARGIN <= BUDGET
    pools = row["reserved"] + (videos if on_gpu else 0)
    return {"projected_bytes": pools, "projected_total": row["fixed"] + pools}


def read_calibrate(path: Path) -> dict:
    """What the calibrate stage measured, in brief (the full record stays in calibrate.json and its Markdown)."""
    data = json.loads(path.read_text())
    proj = data.get("projection") or {}
    steps = [{"step": s["step"], "measured_ms": s["measured_step_s"] * 1e3,
              "projected_ms": s["projected_s"] * 1e3 if s.get("projected_s") else None} for s in data["steps"]]
    memory = []
    for m in data.get("memory", []):
        p = m.get("projected") or {}
        measured = m["max_reserved"] + m["outside_pools"] if m.get("max_reserved") is not None else None
        memory.append({"phase": m["phase"], "measured_total": measured, "projected_total": p.get("total")})
    ncu = data.get("ncu") or {}
    return {"device_type": data["meta"]["device_type"], "steps": steps, "memory": memory,
            "projection": proj.get("file") and Path(proj["file"]).name, "no_projection": proj.get("unavailable"),
            "ncu": (f"{len(ncu['rows'])} launches" if ncu.get("rows") else ncu.get("skipped") or ncu.get("error")),
            "error": data.get("error") or data.get("memory_error")}


def read_compile(path: Path) -> dict:
    rows = json.loads(path.read_text())["rows"]
    cells = {r["name"]: r.get("columns", {}).get("compile", {}) for r in rows}
    return {"rows": len(rows), "compile_ms": {n: c["median_s"] * 1e3 for n, c in cells.items() if "median_s" in c},
            "failed": {n: c["skipped"] for n, c in cells.items() if "median_s" not in c and "skipped" in c},
            "label": next((c["label"] for c in cells.values() if c.get("label")), None)}


def judge(rec: dict, out: Path, work: Path, dry_run: bool) -> dict:
    """Fill in status and result from the stage's return code and files."""
    if rec.get("status") == "not run":
        return rec
    name, rc, log = rec["name"], rec["returncode"], out / "logs" / rec["log"]
    ok = rc == 0 and not rec["timed_out"]
    status = "pass" if ok else "TIMEOUT" if rec["timed_out"] else "FAIL"
    try:
        if name == "env":
            rec["result"] = json.loads(tail(log, 1)[0])
        elif name.startswith("check"):
            rec["result"] = read_check(out / f"{name}.json")
            code = max(rc, rec["result"]["summary"]["exit_status"])    # 0 pass, 1 failed, 3 rows not checked
            status = "TIMEOUT" if rec["timed_out"] else {0: "pass", 3: "not checked"}.get(code, "FAIL")
        elif name == "gpu_tests":
            rec["result"] = read_tests(tail(log, 40))
            if status in ("pass", "FAIL") and rc in (0, 5) and not rec["result"]["counts"].get("passed"):
                status = "not checked"        # every GPU test skipped (no GPU), or none collected
        elif name.startswith("train"):
            rec["result"] = read_train(name, log, out / f"{name}.memory.json", work / "run", dry_run,
                                       out / "calibrate.json")
            if ok and not rec["result"]["fast"]:
                status = "fallback"
            elif ok and rec["result"]["graphs"] is False:
                status = "no graphs"
        elif name == "report":
            rec["result"] = {"rows": len(json.loads((out / "bench.json").read_text())["rows"])}
        elif name == "calibrate":
            rec["result"] = read_calibrate(out / "calibrate.json")
            if status == "pass" and rec["result"]["error"]:
                status = "FAIL"
            elif status == "pass" and rec["result"]["device_type"] != "cuda":
                status = "not checked"            # a CPU calibrates nothing: the plumbing ran
        elif name == "compile":
            rec["result"] = read_compile(out / "compile.json")
            if status == "pass" and (rec["result"]["failed"] or not rec["result"]["compile_ms"]):
                status = "FAIL"
    except (OSError, ValueError, KeyError, IndexError) as e:       # a stage that wrote nothing readable
        rec["result_error"] = f"{type(e).__name__}: {e}"
        status = "FAIL" if status == "pass" else status
    rec["status"] = status
    if status != "pass":
        rec["log_tail"] = tail(log)
    return rec


# ---- the write-up: one Markdown block, one JSON ----

def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2 ** 20:.0f}"


def result_cell(rec: dict) -> str:
    r, name = rec.get("result") or {}, rec["name"]
    if rec.get("why"):
        return rec["why"]
    if name == "env" and r:
        return (f"{r['gpu'] or 'no GPU'}; torch {r['torch']}, Triton {r['triton']}, CUDA {r['cuda']}, "
                f"nvtx {'present' if r['nvtx'] else 'missing'}, ncu {'on PATH' if r.get('ncu') else 'missing'}")
    if name.startswith("check") and r:
        s = r["summary"]
        steps = "; ".join(f"{op.rsplit(', ', 1)[-1]} rel err {_num(v, '.1e')}" for op, v in r["step_rel_err"].items())
        return (f"{s['pass']} pass, {s['skipped']} skipped (not checked), {s['failed']} failed"
                + (f"; CUDA-graph steps: {steps}" if steps else ""))
    if name == "gpu_tests" and r:
        return r["summary"]
    if name.startswith("train") and r:
        return (f"{r['steps']} steps, {_num(r['step_ms'], '.1f')} ms/step, peak "
                f"{_mib(r.get('max_memory_allocated'))} MiB allocated")
    if name == "report" and r:
        return f"{r['rows']} rows (table below)"
    if name == "calibrate" and r:
        steps = ", ".join(f"{s['step'].replace(' step', '')} {s['measured_ms']:.3g} ms"
                          + (f" ({s['measured_ms'] / s['projected_ms']:.2f}x projected)" if s["projected_ms"] else "")
                          for s in r["steps"])
        memory = ", ".join(f"{m['phase']} {_mib(m['measured_total'])} / {_mib(m['projected_total'])} MiB"
                           for m in r["memory"])
        return "; ".join(x for x in (
            steps or "no step measured",
            f"projection {r['projection']}" if r["projection"] else f"no projection: {r['no_projection']}",
            f"memory measured / projected {memory}" if memory else "",
            f"ncu: {r['ncu']}" if r["ncu"] else "", r["error"] or "") if x)
    if name == "compile" and r:
        timed = ", ".join(f"{n.split(' (')[0]} {ms:.1f} ms" for n, ms in r["compile_ms"].items())
        failed = "; ".join(f"{n.split(' (')[0]}: {why}" for n, why in r["failed"].items())
        return "; ".join(x for x in (timed, failed) if x) or "no row"
    return rec.get("result_error", "")


def markdown(meta: dict, records: list[dict], out: Path) -> str:
    env = next((r.get("result") for r in records if r["name"] == "env"), None) or {}
    passed = [r["name"] for r in records if r.get("status") == "pass"]
    others = [f"{r['name']} {r.get('status', '?')}" for r in records if r.get("status") != "pass"]
    lines = [f"### {meta['date'][:16]} UTC, {env.get('gpu') or 'CPU'}: gpu_verify"
             + (" DRY RUN (tiny, CPU: the plumbing, not a result)" if meta["dry_run"] else ""), "",
             f"- Command: `{meta['command']}`",
             f"- torch {env.get('torch')}, Triton {env.get('triton')}, CUDA {env.get('cuda')}, Python "
             f"{env.get('python')}, nvtx {'present' if env.get('nvtx') else 'missing'}; budget {meta['budget_s']} s, "
             f"total {meta.get('total_s', '?')} s",
             f"- Outcome: {len(passed)} of {len(records)} stages pass" + (f"; {', '.join(others)}" if others else ""),
             "", "| stage | status | s | limit s | result |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']}: {r['title']} | {r.get('status')} | {r.get('wall_s', '-')} | {r.get('limit_s', '-')} | "
              f"{result_cell(r).replace('|', '/')} |" for r in records]
    trained = [r for r in records if r["name"].startswith("train") and r.get("result")]
    if trained:
        lines += ["", f"Training (`--fast`, {'tiny' if meta['dry_run'] else 'paper'} preset; ms/step = median after "
                      "the first two log flushes; peak = torch.cuda.max_memory_* of the training process, graph pools "
                      "and the on-GPU data set included; projected = the calibrate stage's lab/memory.py "
                      "projection (autotuned tiles) of the pools + the data set, without the CUDA context and "
                      "workspaces):", "",
                  "| phase | steps | ms/step | it/s | peak allocated MiB | peak reserved MiB | projected MiB | fast path "
                  "| CUDA graphs | full phase: steps, projected h |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in trained:
            t = r["result"]
            lines.append(f"| {r['name'][6:]} | {t['steps']} | {_num(t['step_ms'], '.1f')} | {_num(t['it_s'], '.2f')} | "
                         f"{_mib(t.get('max_memory_allocated'))} | {_mib(t.get('max_memory_reserved'))} | "
                         f"{_mib(t.get('projected_bytes'))} | "
                         f"{'yes' if t['fast'] else 'NO (fallback)'} | {'-' if t['graphs'] is None else 'yes' if t['graphs'] else 'NO'} | "
                         f"{t['full_phase_steps']}, {_num(t['projected_full_phase_h'], '.2f')} |")
    for r in records:
        bad = (r.get("result") or {}).get("not_passed") if r["name"].startswith("check") else None
        if bad:
            lines += ["", f"{r['name']}: rows that did not pass:", *(f"- {b}" for b in bad)]
    if (out / "calibrate.json").exists():
        from vidgan_fast.benchmarks.calibrate import format_markdown
        try:
            lines += ["", format_markdown(json.loads((out / "calibrate.json").read_text())).rstrip()]
        except (ValueError, KeyError) as e:
            lines += ["", f"calibrate.json unreadable: {type(e).__name__}: {e}"]
    bench = json.loads((out / "bench.json").read_text()) if (out / "bench.json").exists() else None
    compiled = json.loads((out / "compile.json").read_text()) if (out / "compile.json").exists() else None
    if bench or compiled:
        from vidgan_fast.benchmarks.report import format_header, format_table, merge_rows, projection_note
        head = (bench or compiled)["meta"]
        rows = bench["rows"] if bench else compiled["rows"]
        if bench and compiled:          # the compile stage's phase-1 cells in the report's rows
            rows = merge_rows(rows, compiled["rows"], head["matrix_rate_flops"])
        note = projection_note(head)
        lines += ["", "Report" + (" (compile column: the compile stage's)" if compiled else "") + ":", "", "```",
                  format_header(head), "```", "", format_table(rows)] + ([note] if note else [])
    for r in records:
        if r.get("log_tail"):
            lines += ["", f"{r['name']} ({r['status']}), end of logs/{r['log']}:", "```", *r["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def write(meta: dict, records: list[dict], out: Path) -> None:
    """OUT/gpu_verify.json (every stage, and the outputs of check, check_tf32, report, calibrate and compile) and
    OUT/gpu_verify.md, each written whole (a temporary file, then a rename)."""
    extra = {}
    for name in ("check", "check_tf32", "bench", "calibrate", "compile"):
        path = out / f"{name}.json"
        if path.exists():
            try:
                extra[name] = json.loads(path.read_text())
            except ValueError as e:              # never half a file (they are written whole), but say so
                extra[name] = {"unreadable": f"{type(e).__name__}: {e}"}
    write_json(out / "gpu_verify.json", {"meta": meta, "stages": records, **extra})
    write_text(out / "gpu_verify.md", markdown(meta, records, out))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidgan_fast.benchmarks.gpu_verify", description=__doc__.split("\n\n")[0],
                                epilog="Writes OUT/gpu_verify.md and OUT/gpu_verify.json (and OUT/logs/).")
    p.add_argument("--out", required=True, help="folder for the results (created)")
    p.add_argument("--dry-run", action="store_true", help="every stage at tiny size on CPU (checks the plumbing)")
    p.add_argument("--budget", type=float, default=None, help="seconds for all stages [440; dry run 300]")
    p.add_argument("--steps", type=int, default=None, help="training steps per phase [200; dry run 3]")
    p.add_argument("--repeats", type=int, default=None, help="repeats per report row [5; dry run 1]")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (all rows) in the report stage "
                                                             "(minutes; the compile stage times phase 1 only)")
    p.add_argument("--stages", default=None, help=f"comma list of stages to run [all]: {', '.join(STAGES)} (env "
                                                  "always runs)")
    p.add_argument("--work", default=None, help="scratch folder for the training runs [a temporary folder]")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder (checkpoints, log.jsonl)")
    a = p.parse_args(argv)
    for name, dry, gpu in (("budget", 300.0, 440.0), ("steps", 3, 200), ("repeats", 1, 5)):
        if getattr(a, name) is None:
            setattr(a, name, dry if a.dry_run else gpu)
    if a.budget <= 0 or a.steps <= 0 or a.repeats <= 0:
        p.error("--budget, --steps and --repeats must be positive")
    wanted = a.stages.split(",") if a.stages else list(STAGES)
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        p.error(f"unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}")
    skipped = set(STAGES) - set(wanted) - {"env"}
    out = Path(a.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gpu_verify_"))
    stages = plan(a, out, work)
    for stale in ("check.json", "check_tf32.json", "bench.json", "train_frames.memory.json", "train_video.memory.json",
                  "calibrate.json", "calibrate.memory.json", "calibrate.memory_training.json", "compile.json"):
        (out / stale).unlink(missing_ok=True)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "dry_run": a.dry_run,
            "command": "python -m vidgan_fast.benchmarks.gpu_verify " + " ".join(argv if argv is not None else sys.argv[1:]),
            "budget_s": a.budget, "steps": a.steps, "repeats": a.repeats}
    start = time.monotonic()
    deadline, records = start + a.budget, []
    try:
        for stage in stages:
            print(f"[gpu_verify] {stage.name}: {stage.title} ...", flush=True)
            if stage.name in skipped:
                rec = {"name": stage.name, "title": stage.title, "status": "not run", "why": "not selected (--stages)"}
            else:
                rec = judge(run_stage(stage, deadline, out / "logs" / f"{stage.name}.log"), out, work, a.dry_run)
            records.append(rec)
            print(f"[gpu_verify] {stage.name}: {rec['status']} ({rec.get('wall_s', 0)} s) {result_cell(rec)}",
                  flush=True)
            meta["total_s"] = round(time.monotonic() - start, 1)
            write(meta, records, out)          # after every stage: a killed run still leaves its results
    finally:
        if not a.keep_work and not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"[gpu_verify] wrote {out / 'gpu_verify.md'} and {out / 'gpu_verify.json'}")
    return exit_status(records, a.dry_run)


def exit_status(records: list[dict], dry_run: bool) -> int:
    """0 when every stage passed (a dry run: when none failed), else 1."""
    return 0 if all(r["status"] in (DRY_RUN_OK if dry_run else ("pass",)) for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
