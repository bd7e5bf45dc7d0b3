"""benchmarks/gpu_verify.py, the first-GPU-run command, checked on CPU: its dry run writes one Markdown block and
one JSON listing every stage; a stage past its limit gets SIGTERM and is recorded; outputs are read honestly.

The dry run here runs env, check and both training stages (each a fresh Python, ~10 s of imports on a busy
2-core machine); report, gpu_tests and check_tf32 are listed as not selected and their reading is checked on
canned outputs below. `python -m vidgan_fast.benchmarks.gpu_verify --dry-run --out DIR` runs all of them (~2 min here).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidgan_fast.benchmarks import gpu_verify  # noqa: E402

STAGES = ["env", "check", "train_frames", "train_video", "report", "gpu_tests", "check_tf32"]


def test_dry_run_writes_one_markdown_and_one_json_with_every_stage(tmp_path):
    """Catches: a stage missing from either file, a CPU check that reads as a pass (its CUDA-graph rows are NOT
    CHECKED: `python -m vidgan_fast check` must exit 3, which it did not before vidgan_fast/__main__.py passed the
    status on), training that is not read (steps, step time), a --fast fallback counted as a pass."""
    code = gpu_verify.main(["--dry-run", "--out", str(tmp_path), "--stages", "check,train_frames,train_video"])
    assert code == 1                                          # not every stage passed (none can on a CPU)
    data = json.loads((tmp_path / "gpu_verify.json").read_text())
    status = {s["name"]: s["status"] for s in data["stages"]}
    assert list(status) == STAGES
    assert status == {"env": "pass", "check": "not checked", "train_frames": "fallback", "train_video": "fallback",
                      "report": "not run", "gpu_tests": "not run", "check_tf32": "not run"}, data["stages"]
    check = next(s for s in data["stages"] if s["name"] == "check")
    assert check["returncode"] == 3 and check["result"]["summary"] == {"pass": 2, "skipped": 2, "failed": 0,
                                                                       "exit_status": 3}
    for name in ("train_frames", "train_video"):
        result = next(s for s in data["stages"] if s["name"] == name)["result"]
        assert result["steps"] == 3 and result["step_ms"] > 0 and result["fast"] is False
        assert result["projected_bytes"] > 0 and "projected_error" not in result     # memory_model beside it
    md = (tmp_path / "gpu_verify.md").read_text()
    assert md.startswith("### ") and "DRY RUN" in md
    for name in STAGES:
        assert f"| {name}: " in md, name
    assert "2 pass, 2 skipped (not checked), 0 failed" in md and "| frames | 3 |" in md and "| video | 3 |" in md
    assert "| projected MiB |" in md
    assert "not selected (--stages)" in md and data["check"]["summary"]["exit_status"] == 3


def test_a_stage_past_its_limit_gets_sigterm_and_is_recorded(tmp_path):
    """Catches a hang eating the budget, and a SIGKILL where training needed SIGTERM to save its checkpoint."""
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('saved', flush=True), sys.exit(7)))\n"
            "print('started', flush=True)\n"
            "time.sleep(60)\n")
    stage = gpu_verify.Stage("hang", "sleeps", [sys.executable, "-c", code], timeout=2)
    (tmp_path / "logs").mkdir()
    rec = gpu_verify.run_stage(stage, deadline=gpu_verify.time.monotonic() + 100, log_path=tmp_path / "logs" / "x.log")
    assert rec["timed_out"] and rec["returncode"] == 7 and rec["wall_s"] < 30, rec
    rec = gpu_verify.judge(rec, tmp_path, tmp_path, dry_run=True)
    assert rec["status"] == "TIMEOUT" and rec["log_tail"] == ["started", "saved"]
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


def test_report_and_failed_checks_reach_the_markdown(tmp_path):
    (tmp_path / "logs").mkdir()
    for name in ("report", "check"):
        (tmp_path / "logs" / f"{name}.log").write_text("x\n")
    meta = {"date": "2026-12-01T00:00", "name": "NVIDIA H200 (sm_90)", "torch": "2.11", "triton": "3.6",
            "size": "paper", "threads": 16, "repeats": 5, "fast_tf32": True, "matrix_rate_flops": {"tf32": 4e14}}
    row = {"name": "phase1 D step", "kind": "step", "size": "paper", "flops": 2.5e12, "columns": {
        "reference": {"median_s": 0.5}, "fast": {"median_s": 0.05}}, "speedup_vs_reference": 10.0}
    (tmp_path / "bench.json").write_text(json.dumps({"meta": meta, "rows": [row]}))
    (tmp_path / "check.json").write_text(json.dumps({"environment": {}, "summary": {
        "pass": 13, "skipped": 0, "failed": 1, "exit_status": 1}, "results": [
        {"op": "captured D+G steps, phase 1", "status": "FAIL", "note": "worst: d_opt state[x].square_avg",
         "rel_err": 0.3}]}))
    base = {"timed_out": False, "wall_s": 1.0, "limit_s": 60}
    records = [gpu_verify.judge({**base, "name": "report", "title": "report", "log": "report.log", "returncode": 0},
                                tmp_path, tmp_path, False),
               gpu_verify.judge({**base, "name": "check", "title": "check", "log": "check.log", "returncode": 1},
                                tmp_path, tmp_path, False)]
    assert [r["status"] for r in records] == ["pass", "FAIL"]
    md = gpu_verify.markdown({"date": meta["date"], "dry_run": False, "command": "c", "budget_s": 460}, records,
                             tmp_path)
    assert "| phase1 D step | 2.5e+03 | 500.000 |" in md and "NVIDIA H200 (sm_90)" in md
    assert "- captured D+G steps, phase 1: FAIL (worst: d_opt state[x].square_avg)" in md
    assert "phase 1 rel err 3.0e-01" in md and "Outcome: 1 of 2 stages pass; check FAIL" in md


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    for argv, message in ((["--stages", "nope"], "unknown stage 'nope'"), (["--steps", "0"], "must be positive")):
        with pytest.raises(SystemExit) as e:
            gpu_verify.main(["--out", str(tmp_path), *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]
