"""benchmarks/gpu_verify.py, the first-GPU-run command, and benchmarks/calibrate.py, its calibration stage, checked
on CPU: the dry run writes one Markdown block and one JSON listing every stage; a stage past its limit gets SIGTERM
and is recorded; outputs are read honestly; every file is written whole; the calibration pairs measured kernels
with the projected launches, reads Nsight Compute's CSV and puts the memory projection beside the training stages.

The dry run here runs env, check, calibrate (its steps through the Triton interpreter) and both training stages
(each a fresh Python, ~10 s of imports on a busy 2-core machine); report, gpu_tests, check_tf32 and compile are
listed as not selected and their reading is checked on canned outputs below.
`python -m vidgan_fast.benchmarks.gpu_verify --dry-run --out DIR` runs all of them (~1-2 min here).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidgan_fast.benchmarks import calibrate, gpu_verify  # noqa: E402

STAGES = ["env", "check", "calibrate", "train_frames", "train_video", "report", "gpu_tests", "check_tf32", "compile"]


def test_dry_run_writes_one_markdown_and_one_json_with_every_stage(tmp_path, monkeypatch):
    """Catches: a stage missing from either file, a CPU check that reads as a pass (its CUDA-graph rows are NOT
    CHECKED: `python -m vidgan_fast check` must exit 3, which it did not before vidgan_fast/__main__.py passed the
    status on), a calibration on a CPU that reads as a pass, a calibration whose steps, memory projection or
    write-up do not arrive, training that is not read (steps, step time, projected memory), a --fast fallback
    counted as a pass, a file left half-written. The calibration runs phase 1 only here (--phases frames: phase 2
    through the interpreter takes ~25 s more, on the same code), so phase 2's training has no projection to show."""
    plan = gpu_verify.plan

    def phase_1_calibration(*a, **kw):
        stages = plan(*a, **kw)
        next(s for s in stages if s.name == "calibrate").argv += ["--phases", "frames"]
        return stages
    monkeypatch.setattr(gpu_verify, "plan", phase_1_calibration)
    code = gpu_verify.main(["--dry-run", "--out", str(tmp_path), "--stages",
                            "check,calibrate,train_frames,train_video"])
    assert code == 0                              # a dry run: no stage failed (on a CPU none can pass all)
    data = json.loads((tmp_path / "gpu_verify.json").read_text())
    status = {s["name"]: s["status"] for s in data["stages"]}
    assert list(status) == STAGES
    assert status == {"env": "pass", "check": "not checked", "calibrate": "not checked", "train_frames": "fallback",
                      "train_video": "fallback", "report": "not run", "gpu_tests": "not run", "check_tf32": "not run",
                      "compile": "not run"}, data["stages"]
    check = next(s for s in data["stages"] if s["name"] == "check")
    assert check["returncode"] == 3 and check["result"]["summary"] == {"pass": 2, "skipped": 2, "failed": 0,
                                                                       "exit_status": 3}
    calibration = data["calibrate"]
    assert calibration["meta"]["autotune"] is False                  # VIDGAN_AUTOTUNE=0: the projection's tiles
    assert [s["step"] for s in calibration["steps"]] == ["phase 1 D step", "phase 1 G step"]
    assert all(s["measured_step_s"] > 0 and s["kernels"] and s["kernel_sum_s"] > 0 for s in calibration["steps"])
    assert "not a GPU" in calibration["projection"]["unavailable"] and calibration["ncu"] == {"skipped": "no CUDA GPU"}
    assert [m["phase"] for m in calibration["memory"]] == ["frames"]
    assert calibration["memory"][0]["projected"]["total"] > calibration["memory"][0]["projected"]["reserved"] > 0
    stage = next(s for s in data["stages"] if s["name"] == "calibrate")
    assert "--budget" in stage["command"] and stage["env"]["TRITON_INTERPRET"] == "1"
    for name in ("train_frames", "train_video"):
        result = next(s for s in data["stages"] if s["name"] == name)["result"]
        assert result["steps"] == 3 and result["step_ms"] > 0 and result["fast"] is False
    frames, video = (next(s for s in data["stages"] if s["name"] == n)["result"]
                     for n in ("train_frames", "train_video"))
    assert frames["projected_bytes"] > 0 and "projected_error" not in frames        # the calibration's projection
    assert "projected_bytes" not in video and "not asked for this phase" in video["projected_error"]
    md = (tmp_path / "gpu_verify.md").read_text()
    assert md.startswith("### ") and "DRY RUN" in md
    for name in STAGES:
        assert f"| {name}: " in md, name
    assert "2 pass, 2 skipped (not checked), 0 failed" in md and "| frames | 3 |" in md and "| video | 3 |" in md
    assert "| projected MiB |" in md and "Calibration (tiny preset, tf32, cpu; fixed tiles" in md
    assert "| phase 1 G step |" in md and "Nsight Compute: no CUDA GPU" in md
    assert "not selected (--stages)" in md and data["check"]["summary"]["exit_status"] == 3
    assert not list(tmp_path.glob(".*.tmp"))                         # written whole: no temporary file left


def test_a_stage_past_its_limit_gets_sigterm_and_is_recorded(tmp_path, monkeypatch):
    """Catches a hang eating the budget, and a SIGKILL where training needed SIGTERM to save its checkpoint."""
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('saved', flush=True), sys.exit(7)))\n"
            "print('started', sys.argv[1:], flush=True)\n"
            "time.sleep(60)\n")
    monkeypatch.setattr(gpu_verify, "LIMIT_MARGIN_S", 1)
    stage = gpu_verify.Stage("hang", "sleeps", [sys.executable, "-c", code], timeout=3, limit_arg="--budget")
    (tmp_path / "logs").mkdir()
    rec = gpu_verify.run_stage(stage, deadline=gpu_verify.time.monotonic() + 100, log_path=tmp_path / "logs" / "x.log")
    assert rec["timed_out"] and rec["returncode"] == 7 and rec["wall_s"] < 30, rec
    rec = gpu_verify.judge(rec, tmp_path, tmp_path, dry_run=True)
    # the stage was told its own limit, less the margin it needs to finish inside it
    assert rec["status"] == "TIMEOUT" and rec["log_tail"] == ["started ['--budget', '2']", "saved"]
    assert rec["command"].endswith(" --budget 2")
    late = gpu_verify.run_stage(stage, deadline=gpu_verify.time.monotonic() + 5, log_path=tmp_path / "y.log")
    assert late["status"] == "not run" and late["why"] == "time budget spent"


@pytest.mark.parametrize("rc,last,status", [
    (0, "3 passed, 1 skipped, 120 deselected in 40.1s", "pass"),
    (0, "3 skipped, 120 deselected in 4.1s", "not checked"),         # no GPU: nothing was tested
    (1, "1 failed, 2 passed, 120 deselected in 40.1s", "FAIL"),
])
def test_test_stage_counts_what_ran(tmp_path, rc, last, status):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "gpu_tests.log").write_text(f"....\n{last}\n")
    rec = {"name": "gpu_tests", "title": "pytest -m gpu", "log": "gpu_tests.log", "returncode": rc,
           "timed_out": False, "wall_s": 1.0, "limit_s": 60}
    assert gpu_verify.judge(rec, tmp_path, tmp_path, dry_run=False)["status"] == status


def _bench_row(name, **cells):
    return {"name": name, "kind": "step", "size": "paper", "flops": 2.5e12,
            "columns": {c: ({"median_s": v} if isinstance(v, float) else v) for c, v in cells.items()}}


def test_report_compile_and_failed_checks_reach_the_markdown(tmp_path):
    """The report's table, with the compile stage's phase-1 cells merged in (and the ratios against them), the
    projection it read, and a failed check row."""
    (tmp_path / "logs").mkdir()
    for name in ("report", "check", "compile"):
        (tmp_path / "logs" / f"{name}.log").write_text("x\n")
    meta = {"date": "2026-12-01T00:00", "name": "NVIDIA H200 (sm_90)", "torch": "2.11", "triton": "3.6",
            "size": "paper", "threads": 16, "repeats": 5, "fast_tf32": True, "matrix_rate_flops": {"tf32": 4e14},
            "projection": {"file": "benchmarks/projections/paper-h200-tf32.json", "gpu": "h200", "precision": "tf32",
                           "preset": "paper", "command": "vidgan bench --static --gpu h200"}}
    row = _bench_row("phase1 D step (K=48, B=64)", reference=0.5, compile={"skipped": "skipped: compile disabled"},
                     fast=0.05)
    row.update(speedup_vs_reference=10.0, projected_s=0.025, projected_floor_s=0.01, measured_over_projected=2.0)
    (tmp_path / "bench.json").write_text(json.dumps({"meta": meta, "rows": [row]}))
    compiled = _bench_row("phase1 D step (K=48, B=64)", compile=0.2)
    compiled["columns"]["compile"]["label"] = "steps: torch.compile(mode=reduce-overhead, dynamic=False) ..."
    (tmp_path / "compile.json").write_text(json.dumps({"meta": {**meta, "columns": ["compile"]}, "rows": [compiled]}))
    (tmp_path / "check.json").write_text(json.dumps({"environment": {}, "summary": {
        "pass": 13, "skipped": 0, "failed": 1, "exit_status": 1}, "results": [
        {"op": "captured D+G steps, phase 1", "status": "FAIL", "note": "worst: d_opt state[x].square_avg",
         "rel_err": 0.3}]}))
    base = {"timed_out": False, "wall_s": 1.0, "limit_s": 60}
    records = [gpu_verify.judge({**base, "name": name, "title": name, "log": f"{name}.log", "returncode": rc},
                                tmp_path, tmp_path, False)
               for name, rc in (("report", 0), ("check", 1), ("compile", 0))]
    assert [r["status"] for r in records] == ["pass", "FAIL", "pass"]
    assert gpu_verify.result_cell(records[2]) == "phase1 D step 200.0 ms"
    md = gpu_verify.markdown({"date": meta["date"], "dry_run": False, "command": "c", "budget_s": 460}, records,
                             tmp_path)
    assert "| phase1 D step (K=48, B=64) | 2.5e+03 | 500.000 | 200.000 | - | 50.000 | 10.00x | 4.00x |" in md
    assert "| 25.000 | 10.000 | 2.00x |" in md and "NVIDIA H200 (sm_90)" in md
    assert "- projection: benchmarks/projections/paper-h200-tf32.json (h200, tf32, preset paper" in md
    assert "- captured D+G steps, phase 1: FAIL (worst: d_opt state[x].square_avg)" in md
    assert "phase 1 rel err 3.0e-01" in md and "Outcome: 2 of 3 stages pass; check FAIL" in md
    (tmp_path / "compile.json").write_text(json.dumps({"meta": meta, "rows": [
        _bench_row("phase1 D step", compile={"skipped": "failed: RuntimeError: inductor"})]}))
    rec = gpu_verify.judge({**base, "name": "compile", "title": "c", "log": "compile.log", "returncode": 0},
                           tmp_path, tmp_path, False)
    assert rec["status"] == "FAIL" and "failed: RuntimeError: inductor" in gpu_verify.result_cell(rec)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    for argv, message in ((["--stages", "nope"], "unknown stage 'nope'"), (["--steps", "0"], "must be positive")):
        with pytest.raises(SystemExit) as e:
            gpu_verify.main(["--out", str(tmp_path), *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


def test_files_are_written_whole(tmp_path, monkeypatch):
    """gpu_verify.json and .md go through a temporary file and a rename (a reader never sees half of one)."""
    from vidgan_fast import files
    renamed = []
    real = files.os.replace
    monkeypatch.setattr(files.os, "replace", lambda a, b: renamed.append((Path(a).name, Path(b).name)) or real(a, b))
    gpu_verify.write({"date": "2026-12-01T00:00", "dry_run": True, "command": "c", "budget_s": 1}, [], tmp_path)
    assert [b for _, b in renamed] == ["gpu_verify.json", "gpu_verify.md"]
    assert all(a != b and a.endswith(".tmp") for a, b in renamed)
    assert json.loads((tmp_path / "gpu_verify.json").read_text())["stages"] == []


# ------------------------------------------------------------------------------------------- calibration

def _launch(kernel, label, projected_us, binding="dram", l2_bytes=3200.0):
    return {"kernel": kernel, "label": label, "projected_s": projected_us * 1e-6, "floor_s": projected_us * 5e-7,
            "binding": binding, "limits": {"issue": projected_us * 4e-7, binding: projected_us * 1e-6},
            "l2_bytes": l2_bytes}


PROJECTED_D = {"step": "phase 1 D step", "projected_s": 1e-3, "floor_s": 5e-4, "triton_s": 6e-4,
               "launches": [_launch("_conv_fwd_kernel", "B=128 layer 1", 100), _launch("_conv_fwd_kernel", "B=128 "
                            "layer 2", 200), _launch("_rmsprop_kernel", "n=64", 300)],
               "torch_ops": [{"name": "mm", "projected_s": 4e-4, "floor_s": 2e-4}]}


def test_measured_kernels_are_paired_with_the_projected_launches():
    """Per kernel name, the k-th launch of each replay is the k-th projected launch; torch's kernels are one sum;
    a kernel launched more (or less) often than projected is compared by its sum only."""
    replay = [("_conv_fwd_kernel", 110e-6), ("void cutlass_gemm", 50e-6), ("_conv_fwd_kernel", 190e-6),
              ("_rmsprop_kernel", 330e-6)]
    events = replay + [(n, s + 10e-6) for n, s in replay]                  # two replays
    out = calibrate.compare_step(events, 2, PROJECTED_D, {"_conv_fwd_kernel", "_rmsprop_kernel"})
    assert out["paired"] is True
    assert [(l["kernel"], l["index"], l["label"]) for l in out["launches"]] == [
        ("_conv_fwd_kernel", 0, "B=128 layer 1"), ("_conv_fwd_kernel", 1, "B=128 layer 2"),
        ("_rmsprop_kernel", 0, "n=64")]
    assert [l["measured_s"] for l in out["launches"]] == pytest.approx([115e-6, 195e-6, 335e-6])
    conv = next(k for k in out["kernels"] if k["kernel"] == "_conv_fwd_kernel")
    assert conv["launches"] == 2 and conv["measured_s"] == pytest.approx(310e-6) and conv["projected_s"] == 3e-4
    assert out["torch_measured_s"] == pytest.approx(55e-6) and out["torch_projected_s"] == pytest.approx(4e-4)
    assert out["triton_measured_s"] == pytest.approx(645e-6) and out["projected_s"] == 1e-3
    once = calibrate.compare_step(replay[:2] + replay[3:], 1, PROJECTED_D, {"_conv_fwd_kernel", "_rmsprop_kernel"})
    assert once["paired"] is False and once["launches"][0]["measured_s"] is None
    assert once["launches"][2]["measured_s"] == pytest.approx(330e-6)
    alone = calibrate.compare_step(events, 2, None, set())                 # no projection: measured only
    assert alone["launches"] == [] and "projected_s" not in alone and alone["triton_measured_s"] == 0
    phase, hot, launches = calibrate.hot_kernels([{"phase": "frames", **out}, {"phase": "video", "kernels": [
        {"kernel": "_dense_kernel", "triton": True, "measured_s": 1e-4, "launches": 3}]}], n=1)
    assert (phase, hot, launches) == ("frames", ["_rmsprop_kernel"], 1)


NCU_CSV = "\n".join([          # what `ncu --csv --page raw --print-units base` prints, its own messages around it
    '==PROF== Connected to process 1234',
    '"ID","Process ID","Process Name","Kernel Name","gpu__time_duration.sum","lts__t_sectors.sum",'
    '"sm__inst_issued.avg.pct_of_peak_sustained_active"',
    '"","","","","nsecond","sector","%"',
    '"0","1234","python","_conv_fwd_kernel","120,500","1,000","45.5"',
    '"1","1234","python","_conv_fwd_kernel","190000","2000","n/a"',
    '==PROF== Disconnected from process 1234'])


def test_nsight_compute_rows_are_read_and_paired():
    rows = calibrate.parse_ncu_csv(NCU_CSV)
    assert [r["kernel"] for r in rows] == ["_conv_fwd_kernel", "_conv_fwd_kernel"]
    assert rows[0]["gpu__time_duration.sum"] == pytest.approx(120.5e-6) and rows[0]["lts__t_sectors.sum"] == 1000
    assert rows[1]["sm__inst_issued.avg.pct_of_peak_sustained_active"] is None
    assert rows[0]["dram__bytes_read.sum"] is None
    paired = calibrate.pair_ncu(rows, "frames", {"phase 1 D step": PROJECTED_D})
    assert [(r["index"], r["label"], r["projected_sectors"]) for r in paired] == [(0, "B=128 layer 1", 100.0),
                                                                                  (1, "B=128 layer 2", 100.0)]
    argv = calibrate.ncu_command(["_a", "_b"], 7, "video", "bf16")
    assert argv[:3] == ["ncu", "--profile-from-start", "off"] and "regex:^(_a|_b)$" in argv
    assert argv[argv.index("--launch-count") + 1] == "7"
    assert argv[-4:] == ["--ncu-child", "video", "--precision", "bf16"]
    assert calibrate.parse_ncu_csv("==ERROR== ERR_NVGPUCTRPERM") == []


def test_the_calibration_write_up_and_the_training_stages_read_it(tmp_path):
    events = [("_conv_fwd_kernel", 110e-6), ("_conv_fwd_kernel", 190e-6), ("_rmsprop_kernel", 330e-6), ("mm", 5e-5)]
    step = {"step": "phase 1 D step", "phase": "frames", "source": "CUDA graph replays", "replays": 20, "profiled": 1,
            "measured_step_s": 7e-4, "measured_step_min_s": 6.9e-4,
            **calibrate.compare_step(events, 1, PROJECTED_D, {"_conv_fwd_kernel", "_rmsprop_kernel"})}
    projected = {"reserved": 6 * 2 ** 30, "fixed": 2 ** 30, "total": 7 * 2 ** 30, "regular_reserved_peak": 6 * 2 ** 30,
                 "graph_reserved": 2 ** 30}
    record = {"meta": {"preset": "paper", "precision": "tf32", "device": "cuda", "device_type": "cuda",
                       "autotune": False, "source": "CUDA graphs"},
              "projection": {"file": "benchmarks/projections/paper-h100-tf32.json", "command": "vidgan bench --static"},
              "steps": [step],
              "memory": [{"phase": "frames", "max_reserved": 6 * 2 ** 30, "max_allocated": 5 * 2 ** 30,
                          "reserved_after": 6 * 2 ** 30, "outside_pools": 2 ** 29, "projected": projected}],
              "memory_training": [{"phase": "frames", "projected": {**projected, "reserved": 5 * 2 ** 30}}],
              "ncu": {"skipped": "ncu (Nsight Compute) is not on PATH"}}
    md = calibrate.format_markdown(record)
    assert "| phase 1 D step | 0.7 | 0.68 | 1 | 0.5 | 0.70 | 0.63 / 0.6 | 0.05 / 0.4 |" in md
    assert "| _conv_fwd_kernel | 1 | B=128 layer 2 | dram | 200 | 100 | 190 | 0.95 |" in md
    assert "| frames | 6144 | 5120 | 6144 | 512 | 6144 (6144 / 1024) | 1024 | 7168 | 0.93 |" in md
    assert "Nsight Compute: ncu (Nsight Compute) is not on PATH" in md and "paper-h100-tf32.json" in md
    path = tmp_path / "calibrate.json"
    path.write_text(json.dumps(record))
    brief = gpu_verify.read_calibrate(path)
    assert brief["steps"] == [{"step": "phase 1 D step", "measured_ms": pytest.approx(0.7), "projected_ms": 1.0}]
    assert brief["projection"] == "paper-h100-tf32.json" and brief["memory"][0]["measured_total"] == 6.5 * 2 ** 30
    rec = {"name": "calibrate", "title": "c", "status": "pass", "result": brief}
    assert gpu_verify.result_cell(rec).startswith("phase 1 D 0.7 ms (0.70x projected); projection paper-h100-tf32")
    # the training stages: the autotuned projection (memory_training) + the stage's 4,096 videos on the GPU
    memory = gpu_verify.projected_training_memory(path, "frames", 4096)
    assert memory == {"projected_bytes": 5 * 2 ** 30 + 4096 * 27000, "projected_total": 6 * 2 ** 30 + 4096 * 27000}
    assert "did not run" in gpu_verify.projected_training_memory(tmp_path / "none.json", "video", 16)["projected_error"]


def test_the_exit_status_says_whether_a_stage_failed():
    """A GPU run exits 0 only when every stage passed; a dry run when none failed (FAIL, TIMEOUT)."""
    cpu = [{"status": s} for s in ("pass", "not checked", "fallback", "not run")]
    assert gpu_verify.exit_status(cpu, dry_run=True) == 0 and gpu_verify.exit_status(cpu, dry_run=False) == 1
    for bad in ("FAIL", "TIMEOUT", "no graphs"):
        assert gpu_verify.exit_status(cpu + [{"status": bad}], dry_run=True) == 1
    assert gpu_verify.exit_status([{"status": "pass"}] * 3, dry_run=False) == 0
