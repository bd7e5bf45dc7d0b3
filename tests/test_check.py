"""`vidgan check`: the fast ops against their references, the table, the exit status, and that it can fail.

On CPU the kernels run under the Triton interpreter (conftest sets TRITON_INTERPRET=1). The full small check
runs once (module fixture, the video bank is most of it); the failure cases run one or two ops each, with one
kernel launch wrapper patched to return a wrong result.
"""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import vidgan_fast.checks as check
from vidgan_fast.check_report import CheckResult, environment, exit_status, format_table, not_checked
from vidgan_fast.checks import first_step_check, run_checks
from vidgan_fast.cli import main
from vidgan_fast.errors import ConfigError, TrainingError


def vidgan_check(args):
    """`vidgan check ARGS` through the command line."""
    return CliRunner().invoke(main, ["check", *args])


ROOT = Path(__file__).resolve().parents[1]
OP_ROWS = ["project_frames forward", "project_frames input grad", "project_videos forward",
           "project_videos input grad", "FrameDiscriminatorBank forward", "FrameDiscriminatorBank input grad",
           "FrameDiscriminatorBank weight grads", "FrameDiscriminatorBank weight steps",
           "VideoDiscriminatorBank forward", "VideoDiscriminatorBank input grad", "VideoDiscriminatorBank weight grads",
           "VideoDiscriminatorBank weight steps", "FrozenFrameGenerator forward", "FrozenFrameGenerator code grad"]
EXPECTED_PATH = "triton kernel" if torch.cuda.is_available() else "triton interpreter"


@pytest.fixture(scope="module")
def all_results(device):
    return run_checks(device)


@pytest.fixture(scope="module")
def device():   # module scope (conftest's fixture is per test)
    return "cuda" if torch.cuda.is_available() else "cpu"


def by_op(results):
    return {r.op: r for r in results}


def test_every_op_passes_on_the_kernel_path(all_results):
    rows = by_op(all_results)
    assert [r.op for r in all_results if not r.op.startswith("captured")] == OP_ROWS
    for op in OP_ROWS:
        r = rows[op]
        assert r.path == EXPECTED_PATH and r.status == "pass", r
        assert r.max_abs_err is not None and 0 <= r.rel_err <= r.tol <= 1e-4, r
        assert r.ref_rel_err is not None and r.ref_rel_err <= r.tol, r   # the tolerance holds fp32 torch too
    assert "worst:" in rows["FrameDiscriminatorBank weight grads"].note


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour of the captured-step rows")
def test_captured_step_rows_are_not_checked_on_cpu(all_results):
    steps = [r for r in all_results if r.op.startswith("captured")]
    assert [r.op for r in steps] == ["captured D+G steps, phase 1", "captured D+G steps, phase 2"]
    for r in steps:
        assert r.skipped and not r.passed and r.status == "NOT CHECKED" and "CUDA graphs need a GPU" in r.note
    table = format_table(all_results)
    assert f"{len(OP_ROWS)} pass, 2 skipped (not checked), 0 failed" in table
    assert "NOT CHECKED (a skipped row is not a pass): captured D+G steps, phase 1 (CUDA graphs need a GPU)" in table
    assert exit_status(all_results) == 3 and exit_status(all_results, allow_skip=True) == 0


def fake_rows(*statuses):
    make = {"pass": lambda i: CheckResult(f"op{i}", "-", 0.0, 0.0, 1e-5, True, "triton kernel"),
            "fail": lambda i: CheckResult(f"op{i}", "-", 1.0, 1.0, 1e-5, False, "triton kernel"),
            "skip": lambda i: not_checked(f"op{i}", "-", "no GPU")}
    return [make[s](i) for i, s in enumerate(statuses)]


@pytest.mark.parametrize("statuses,summary,code,allowed", [
    (("pass", "pass"), "2 pass, 0 skipped (not checked), 0 failed", 0, 0),
    (("pass", "skip"), "1 pass, 1 skipped (not checked), 0 failed", 3, 0),
    (("skip", "skip"), "0 pass, 2 skipped (not checked), 0 failed", 3, 0),
    (("pass", "skip", "fail"), "1 pass, 1 skipped (not checked), 1 failed: op2", 1, 1),
])
def test_a_skipped_row_is_not_a_pass(statuses, summary, code, allowed):
    """Catches a summary or exit status that counts NOT CHECKED rows as passes (the old table did)."""
    rows = fake_rows(*statuses)
    table = format_table(rows)
    assert table.splitlines()[-2 if "skip" in statuses else -1] == summary
    assert ("NOT CHECKED (a skipped row is not a pass)" in table) == ("skip" in statuses)
    assert (exit_status(rows), exit_status(rows, allow_skip=True)) == (code, allowed)


def test_command_exits_3_when_rows_are_not_checked(monkeypatch, tmp_path):
    """A run whose rows were skipped prints NOT CHECKED and exits 3, or 0 with --allow-skip; a failure wins."""
    monkeypatch.setitem(check.STEP_CHECKS, "step_skip", lambda device, paper, seed, tf32=False: not_checked(
        "skipped step", "-", "no GPU"))
    monkeypatch.setitem(check.STEP_CHECKS, "step_fail", lambda device, paper, seed, tf32=False: CheckResult(
        "failed step", "-", 1.0, 1.0, 1e-5, False, "CUDA graph"))
    out = tmp_path / "check.json"
    res = vidgan_check(["--device", "cpu", "--op", "step_skip", "--json", str(out)])
    assert res.exit_code == 3, res.output
    assert "NOT CHECKED" in res.output and "0 pass, 1 skipped (not checked), 0 failed" in res.output
    assert json.loads(out.read_text())["summary"] == {"pass": 0, "skipped": 1, "failed": 0, "exit_status": 3}
    res = vidgan_check(["--device", "cpu", "--op", "step_skip", "--allow-skip"])
    assert res.exit_code == 0 and "NOT CHECKED" in res.output, res.output
    res = vidgan_check(["--device", "cpu", "--op", "step_skip", "--op", "step_fail",
                                             "--allow-skip"])
    assert res.exit_code == 1, res.output
    if not torch.cuda.is_available():        # the real captured-step rows on a CPU
        res = vidgan_check(["--device", "cpu", "--op", "step_phase1", "--op", "step_phase2"])
        assert res.exit_code == 3 and "0 pass, 2 skipped (not checked), 0 failed" in res.output, res.output
    assert "--allow-skip" in vidgan_check(["--help"]).output


def test_table_lists_every_row_and_the_totals(all_results, device):
    table = format_table(all_results, environment(device))
    for key in ("device:", "torch: " + torch.__version__, "triton:", "cuda:", "TRITON_INTERPRET:"):
        assert key in table
    for op in OP_ROWS:
        assert op in table
    assert f"{len(OP_ROWS)} pass, " in table and " 0 failed" in table


def test_command_prints_the_table_and_exits_0(tmp_path, device):
    out = tmp_path / "check.json"
    res = vidgan_check(["--device", device, "--op", "project_frames", "--op", "frozen_generator",
                                             "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "torch: " in res.output and "max abs err" in res.output and "FrozenFrameGenerator code grad" in res.output
    rows = json.loads(out.read_text())["results"]
    assert [r["status"] for r in rows] == ["pass"] * 4 and {r["path"] for r in rows} == {EXPECTED_PATH}


def add_offset(module, name, monkeypatch, index=0, value=1e-3):
    """Patch the launch wrapper `module.name` so output `index` (or the only output) is off by `value`."""
    original = getattr(module, name)

    def wrong(*args, **kwargs):
        out = original(*args, **kwargs)
        if out is None:                 # conv_wgrad given an optimizer step: it returns nothing to offset
            return out
        if isinstance(out, tuple):
            return tuple(o + value if i == index else o for i, o in enumerate(out))
        return out + value
    monkeypatch.setattr(module, name, wrong)


@pytest.mark.parametrize("module,name,index,op,bad_row", [
    ("vidgan_fast.kernels.projection", "project_forward", 0, "project_frames", "project_frames forward"),
    ("vidgan_fast.kernels.projection", "project_backward", 0, "project_frames", "project_frames input grad"),
    ("vidgan_fast.kernels.conv", "conv_wgrad", 0, "frame_bank", "FrameDiscriminatorBank weight grads"),
    ("vidgan_fast.kernels.frame_generator", "conv_transpose_input_grad", 0, "frozen_generator", "FrozenFrameGenerator code grad"),
])
def test_a_wrong_kernel_fails_its_row_only(module, name, index, op, bad_row, monkeypatch, device):
    add_offset(pytest.importorskip(module), name, monkeypatch, index)
    rows = by_op(run_checks(device, ops=[op]))
    assert rows[bad_row].status == "FAIL" and not rows[bad_row].passed
    assert rows[bad_row].rel_err > rows[bad_row].tol
    assert all(r.passed for r in rows.values() if r.op != bad_row), rows


def test_a_wrong_weight_step_fails_its_row_only(monkeypatch, device):
    """The bank's weight steps (RMSprop applied inside the weight-gradient launch) are a row of their own: a step
    at twice the rate fails it and nothing else."""
    from dataclasses import replace
    from vidgan_fast.fast.rmsprop import FusedRMSprop
    original = FusedRMSprop.update_of
    monkeypatch.setattr(FusedRMSprop, "update_of", lambda self, p: replace(original(self, p),
                                                                           lr=2 * self.param_groups[0]["lr"]))
    rows = by_op(run_checks(device, ops=["frame_bank"]))
    bad = "FrameDiscriminatorBank weight steps"
    assert rows[bad].status == "FAIL" and rows[bad].rel_err > rows[bad].tol
    assert all(r.passed for r in rows.values() if r.op != bad), rows


def test_a_nan_fails(monkeypatch, device):
    add_offset(pytest.importorskip("vidgan_fast.kernels.projection"), "project_forward", monkeypatch, value=float("nan"))
    assert by_op(run_checks(device, ops=["project_frames"]))["project_frames forward"].status == "FAIL"


def test_command_names_the_wrong_op_and_exits_1(monkeypatch, device):
    add_offset(pytest.importorskip("vidgan_fast.kernels.conv"), "conv_forward", monkeypatch)
    res = vidgan_check(["--device", device, "--op", "frame_bank"])
    assert res.exit_code == 1, res.output
    line = next(l for l in res.output.splitlines() if l.startswith("FrameDiscriminatorBank forward"))
    assert "FAIL" in line
    assert "failed: FrameDiscriminatorBank forward" in res.output


def test_first_step_check_raises_naming_the_op(monkeypatch, device):
    first_step_check(device, phase=1)   # passes as is
    add_offset(pytest.importorskip("vidgan_fast.kernels.projection"), "project_backward", monkeypatch)
    with pytest.raises(TrainingError, match=r"fast path check failed: project_frames input grad max error "
                                            r"\S+ > tolerance \S+ .*run `vidgan check`.*without --fast"):
        first_step_check(device, ops=["project_frames"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU: the fallback is taken when the interpreter is off")
def test_a_fallback_is_never_a_pass_of_the_kernel(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    rows = run_checks("cpu", ops=["project_frames"])
    for r in rows:                                      # nothing ran: one row naming why
        assert r.path == "no triton" and r.status == "FALLBACK" and not r.passed and r.rel_err is None
        assert "TRITON_INTERPRET" in r.note
    assert "FALLBACK" in format_table(rows)
    allowed = run_checks("cpu", ops=["project_frames"], allow_fallback=True)
    assert all(r.passed and r.status == "pass (fallback)" for r in allowed)
    first_step_check("cpu", ops=["project_frames"])     # training takes the reference path: checked as such
    with pytest.raises(TrainingError, match="project_frames cannot run here"):
        first_step_check("cpu", ops=["project_frames"], allow_fallback=False)


def test_step_registry_and_engine_hook(monkeypatch):
    monkeypatch.setitem(check.STEP_CHECKS, "step_fake", lambda device, paper, seed, tf32=False: CheckResult(
        "fake step", "-", 1.0, 1.0, 1e-5, False, "CUDA graph"))
    monkeypatch.setitem(check.STEP_CHECKS, "step_crash", lambda device, paper, seed, tf32=False: 1 / 0)
    rows = run_checks("cpu", ops=["step_fake", "step_crash"])
    assert [r.status for r in rows] == ["FAIL", "FAIL"] and "ZeroDivisionError" in rows[1].note
    # on a GPU the rows call vidgan_fast.fast.graph_check.check_graphed_steps(phase, device, ...)
    cuda = torch.device("cuda")
    fake, calls = types.ModuleType("vidgan_fast.fast.graph_check"), []

    def check_graphed_steps(phase, device, **options):
        calls.append(options)
        return 2e-7, 1e-7, 1e-5, phase == 1, f"phase {phase}"
    fake.check_graphed_steps = check_graphed_steps
    monkeypatch.setitem(sys.modules, "vidgan_fast.fast.graph_check", fake)
    one, two = (check.STEP_CHECKS[f"step_phase{p}"](cuda, True, 5, tf32=True) for p in (1, 2))
    assert (one.status, one.path, one.rel_err, two.status) == ("pass", "CUDA graph", 1e-7, "FAIL")
    assert calls[0] == {"paper_size": True, "seed": 5, "tf32": True}     # the configuration being checked


def test_bad_requests_are_one_line_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unknown op 'nope'"):
        run_checks("cpu", ops=["nope"])
    with pytest.raises(ConfigError, match="--paper-size needs a CUDA GPU"):
        run_checks("cpu", paper_size=True)
    res = vidgan_check(["--device", "cpu", "--paper-size"])
    assert res.exit_code == 2 and "--paper-size needs a CUDA GPU" in res.output
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            run_checks("cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # the kernels are already imported (interpreted) in this process
    res = vidgan_check(["--device", "cpu", "--op", "project_frames"])
    assert res.exit_code == 1 and "run `TRITON_INTERPRET=1 vidgan check --device cpu`" in res.output


def test_global_rng_is_left_alone(device):
    state = torch.get_rng_state()
    run_checks(device, ops=["project_frames", "frozen_generator"])
    assert torch.equal(state, torch.get_rng_state())


def test_cpu_command_turns_the_interpreter_on_itself():
    """A fresh process without TRITON_INTERPRET: the command sets it before any kernel is decorated."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    code = ("from vidgan_fast.cli import main; "
            "main(['check', '--device', 'cpu', '--op', 'project_frames'])")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "TRITON_INTERPRET: 1 (set by vidgan check" in res.stdout
    assert res.stdout.count("triton interpreter") == 2 and "2 pass, 0 skipped (not checked), 0 failed" in res.stdout
