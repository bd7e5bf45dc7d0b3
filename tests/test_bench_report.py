"""The benchmark report runs end to end (tiny sizes, CPU, few repeats) and gives a well-formed table and JSON; its
fast column runs the fast modules wherever Triton runs (here: the interpreter) and is 'unavailable: <why>' where it
cannot (here: TRITON_INTERPRET=0), with nothing standing in; the step rows carry the projection read from a
`vidgan bench --static --json` file, never computed by the report.

No timing assertions: speed is shown by the report, never asserted by tests.
"""
import json

import pytest
import torch

from vidgan_fast import step as steps
from vidgan_fast.benchmarks import bench_steps
from vidgan_fast.benchmarks.bench_ops import op_cases
from vidgan_fast.benchmarks.report import HEADER, format_header, format_table, measure_case, run_report
from vidgan_fast.benchmarks.timing import Case, time_call
from vidgan_fast.fast.backend import triton_unavailable_reason

CPU = torch.device("cpu")
RATES = {"fp32": 1e9, "tf32": None}


@pytest.fixture(scope="module")
def no_triton_reason():
    """Why the fast modules cannot be built on a CPU without the interpreter (fast/backend.py's one line)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "0")
        return triton_unavailable_reason(CPU)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The whole report on a CPU without the Triton interpreter: the fast column cannot be built there."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "0")
        rows = run_report(size="tiny", device="cpu", out_json=out, repeats=1, warmup=0, compile_enabled=False,
                          threads=1)
    return rows, json.loads(out.read_text())


def test_rows_cover_ops_and_the_four_training_steps(report, no_triton_reason):
    rows, _ = report
    names = [r["name"] for r in rows]
    assert [n.split(" (")[0] for n in names if "step" in n] == [
        "phase1 D step", "phase1 G step", "phase2 D step", "phase2 G step"]
    assert any(n.startswith("projection frames") for n in names)
    assert any(n.startswith("D_F bank fwd+bwd") for n in names)
    assert any(n.startswith("G_F frozen fwd+input-bwd") for n in names)
    assert no_triton_reason and "TRITON_INTERPRET=1" in no_triton_reason
    for r in rows:
        assert "error" not in r, r
        assert r["flops"] > 0 and r["size"] == "tiny"
        ref, comp, fast = (r["columns"][c] for c in ("reference", "compile", "fast"))
        assert ref["median_s"] > 0 and ref["repeats"] == 1
        assert "compile disabled" in comp["skipped"]
        # nothing stands in for the fast modules: the cell says why they were not built, and nothing was timed
        assert fast["unavailable"] == no_triton_reason and fast["skipped"] == "unavailable: " + no_triton_reason
        assert "median_s" not in fast and "not built here" in fast["label"]
        assert r["speedup_vs_reference"] is None and r["speedup_vs_compile"] is None and r["speedup_vs_vmap"] is None
        ran = {c: r["columns"][c]["median_s"] for c in ("reference", "vmap") if "median_s" in r["columns"][c]}
        best = min(ran, key=ran.get)
        assert r["rate_column"] == best and r["tflops"] == pytest.approx(r["flops"] / ran[best] / 1e12)
        assert r["fraction_of_matrix_rate"]["tf32"] is None and r["fraction_of_matrix_rate"]["fp32"] > 0
        assert r["peak_bytes"] is None and r["peak_reserved_bytes"] is None      # CPU: no CUDA memory figure
        assert r["projected_s"] is None and r["measured_over_projected"] is None  # no --projection
        # vmap: on the discriminator rows and the steps (eager without --compile), '-' ({}) elsewhere
        vmap = r["columns"]["vmap"]
        if "bank" in r["name"] or "step" in r["name"]:
            assert vmap["median_s"] > 0 and "vmap" in vmap["label"] and "eager" in vmap["label"], vmap
        else:
            assert vmap == {}
        for cell in (ref, vmap):                         # the TF32 switches in effect, in every timed cell
            assert cell == {} or cell["tf32"] == {"cudnn": True, "matmul": True, "triton": True}


def test_json_holds_meta_and_the_same_rows(report):
    rows, data = report
    assert data["rows"] == json.loads(json.dumps(rows))
    meta = data["meta"]
    for key in ("date", "device", "name", "torch", "triton", "size", "repeats", "threads", "matrix_rate_flops"):
        assert key in meta
    assert meta["size"] == "tiny" and meta["threads"] == 1 and meta["matrix_rate_flops"]["fp32"] > 0
    assert meta["complete"] is True and "projection" not in meta
    assert meta["columns"] == ["reference", "compile", "vmap", "fast"]
    assert "torch 2" in format_header(meta)
    assert meta["tf32"] == {"cudnn": True, "matmul": True, "triton": True}
    assert "TF32 (every column) cudnn on, matmul on, triton on" in format_header(meta)


def test_table_has_a_header_and_one_line_per_row(report, no_triton_reason):
    rows, _ = report
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |"
    assert "projected ms" in HEADER and "measured / projected" in HEADER
    body = [ln for ln in lines[2:] if ln.startswith("| ")]
    assert len(body) == len(rows)
    assert all(ln.count("|") == len(HEADER) + 1 for ln in body)
    assert all(f"| unavailable: {no_triton_reason} |" in ln for ln in body)     # the fast cell, in every row
    assert "skip* fast" not in table and "fast = fast (Triton): not built here" in table
    assert "skip* compile (all rows): skipped: compile disabled" in table
    assert "skip* vmap" not in table and "vmap = ops: K discriminators stacked" in table
    assert "peak reserved MiB: torch.cuda.max_memory_reserved" in table and "peak MiB alloc" not in table
    plain = format_table(rows, markdown=False)
    assert plain.splitlines()[0].startswith("op / step")


def _interpreter():
    reason = triton_unavailable_reason(CPU)
    if reason is not None:
        pytest.skip(f"needs the Triton interpreter on CPU tensors (conftest sets it without a GPU): {reason}")


def test_the_fast_column_runs_the_triton_kernels_where_triton_runs(monkeypatch):
    """Under the interpreter the fast column is the Triton projection (kernels/projection.py), it computes what
    the reference column computes, and its label says it is no speed measure."""
    _interpreter()
    from vidgan_fast.kernels import projection as kernel
    launched, real = [], kernel.project_forward
    monkeypatch.setattr(kernel, "project_forward", lambda *a, **kw: launched.append(1) or real(*a, **kw))
    case = op_cases("tiny", CPU, compile_enabled=False)[0]
    assert case.name.startswith("projection frames")
    x = case.inputs[0]
    fast, reference = case.columns["fast"]()(x), case.columns["reference"]()(x)
    assert launched and fast.shape == reference.shape == (8, x.shape[0], 15, 15)
    assert torch.allclose(fast, reference, atol=1e-5)
    case.columns["vmap"] = None
    row = measure_case(case, CPU, warmup=0, repeats=1, rates=RATES, tf32=True)
    cell = row["columns"]["fast"]
    assert cell["median_s"] > 0 and "interpreter" in cell["label"] and "no speed measure" in cell["label"]
    assert row["speedup_vs_reference"] == pytest.approx(row["columns"]["reference"]["median_s"] / cell["median_s"])


def test_the_fast_step_column_is_what_fast_training_builds(monkeypatch, no_triton_reason):
    """The fast step column is fast/engine.to_fast's state (banks, fused RMSprop, frozen Triton G_F) at the run's
    precision; where Triton cannot run it is the 'unavailable' string and nothing is built."""
    _interpreter()
    from vidgan_fast.fast import engine
    from vidgan_fast.fast.bank import FrameDiscriminatorBank, VideoDiscriminatorBank
    from vidgan_fast.fast.frozen_generator import FrozenFrameGenerator
    from vidgan_fast.fast.rmsprop import FusedRMSprop
    built, real = [], engine.to_fast
    monkeypatch.setattr(engine, "to_fast", lambda state, precision=None: built.append((state, precision))
                        or real(state, precision))
    cases = bench_steps.step_cases("tiny", CPU, fast_tf32=False, compile_enabled=False)
    for case in (cases[0], cases[2]):                   # phase 1 D, phase 2 D (built only: not run here)
        assert callable(case.columns["fast"]()) and "interpreter" in case.labels["fast"]
    (frames, p1), (video, p2) = built
    assert (p1, p2) == ("fp32", "fp32")
    assert isinstance(frames.discriminators, FrameDiscriminatorBank) and isinstance(frames.d_opt, FusedRMSprop)
    assert isinstance(video.discriminators, VideoDiscriminatorBank) and isinstance(video.renderer, FrozenFrameGenerator)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    case = bench_steps.step_cases("tiny", CPU, compile_enabled=False)[0]
    assert case.columns["fast"] == "unavailable: " + no_triton_reason and len(built) == 2


def test_a_failing_column_becomes_a_cell_and_the_report_goes_on():
    def broken():
        raise RuntimeError("kernel exploded\nsecond line")
    case = Case("toy", "op", 2 * 64 ** 3, [torch.randn(64, 64) for _ in range(2)],
                {"reference": lambda: (lambda x: x @ x), "compile": "skipped: not here", "fast": broken},
                {"fast": "fast"})
    row = measure_case(case, CPU, warmup=0, repeats=2, rates=RATES)
    assert row["columns"]["fast"]["skipped"] == "failed: RuntimeError: kernel exploded"
    assert "unavailable" not in row["columns"]["fast"]
    assert row["rate_column"] == "reference" and row["tflops"] > 0 and row["speedup_vs_reference"] is None
    assert "(reference)" in format_table([row])


def test_step_rows_time_the_training_code(monkeypatch):
    calls = []
    for name in ("d_step", "g_step"):
        original = getattr(steps, name)
        monkeypatch.setattr(steps, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    cases = bench_steps.step_cases("tiny", CPU, compile_enabled=False)
    for case in (cases[0], cases[1]):
        case.columns["reference"]()(case.inputs[0])
    assert calls == ["d_step", "g_step"]


def test_time_call_rotates_inputs_and_checks_arguments():
    seen = []
    timing = time_call(seen.append, [0, 1, 2], CPU, warmup=2, repeats=4)
    assert seen == [0, 1, 2, 0, 1, 2] and timing.repeats == 4 and timing.min_s <= timing.median_s <= timing.max_s
    with pytest.raises(ValueError, match="repeats"):
        time_call(seen.append, [0], CPU, repeats=0)
    with pytest.raises(ValueError, match="size"):
        run_report(size="huge", device="cpu")
    with pytest.raises(ValueError, match="unknown column 'fastest'"):
        run_report(size="tiny", device="cpu", columns=["fastest"])


def test_tf32_is_pinned_for_the_run_and_restored(monkeypatch):
    from vidgan_fast.benchmarks import report
    seen = []
    monkeypatch.setattr(report, "_cases", lambda *a: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)) or [])
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    assert run_report(size="tiny", device="cpu", fast_tf32=False) == []
    assert seen == [(False, False)]
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_peak_memory_is_reset_before_each_column_is_built(monkeypatch):
    from vidgan_fast.benchmarks import timing
    order = []
    monkeypatch.setattr(timing, "reset_peak_memory", lambda device: order.append("reset"))

    def build(column):
        order.append(column)
        return lambda x: x
    case = Case("toy", "op", 1, [torch.zeros(1)], {"reference": lambda: build("reference"), "compile": "no",
                                                   "vmap": None, "fast": lambda: build("fast")}, {})
    row = measure_case(case, CPU, warmup=0, repeats=1, rates=RATES, tf32=True)
    assert order == ["reset", "reference", "reset", "fast"]
    assert row["columns"]["vmap"] == {} and row["columns"]["fast"]["peak_reserved_bytes"] is None


def test_rows_and_columns_select_what_is_timed_and_runs_merge(monkeypatch):
    """--rows phase1 --columns reference: two rows, only the reference timed; a second run's cells (the compile
    stage's) merge into the first run's rows where those have none, with the ratios recomputed."""
    from vidgan_fast.benchmarks import report
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    rows = run_report(size="tiny", device="cpu", repeats=1, warmup=0, what="steps", compile_enabled=False,
                      threads=1, rows="phase1", columns=["reference"])
    assert [r["name"].split(" (")[0] for r in rows] == ["phase1 D step", "phase1 G step"]
    for r in rows:
        assert r["columns"]["reference"]["median_s"] > 0
        assert r["columns"]["vmap"]["skipped"] == "skipped: not selected (--columns reference)"
    extra = [{**rows[0], "columns": {"compile": {"median_s": 4 * rows[0]["columns"]["reference"]["median_s"]}}}]
    base = [{**r, "columns": {**r["columns"], "fast": {"median_s": r["columns"]["reference"]["median_s"] / 2}}}
            for r in rows]
    merged = report.merge_rows(base, extra, RATES)
    assert merged[0]["columns"]["compile"] == extra[0]["columns"]["compile"]
    assert merged[0]["speedup_vs_compile"] == pytest.approx(8.0) and merged[0]["rate_column"] == "fast"
    assert merged[1]["speedup_vs_compile"] is None and "median_s" not in base[0]["columns"]["compile"]


# ------------------------------------------------------------------------------------------- projections

def _projection_file(path, monkeypatch, gpus=("h100",), precision="tf32", preset="paper"):
    """A projection written by the real `vidgan bench --static --json` (lab/report.py), with lab.cost.project
    replaced by made-up StepCosts (projecting for real compiles every kernel: minutes)."""
    from vidgan_fast.lab import cost
    from vidgan_fast.lab import report as static

    def fake_project(cfg, precision, gpus, samples=8):      # phase 1 D: 1 ms (floor 0.5) ... phase 2 G: 4 ms
        op = cost.TorchOp("mm", 10 ** 9, 10 ** 6, matrix=True)
        return [cost.StepCost(name, gpu, precision, nominal_flops=10 ** 12,
                              torch_ops=[cost.TorchCost(op, (i + 1) * 1e-3, (i + 1) * 5e-4, "tensor")])
                for gpu in gpus for i, name in enumerate(cost.STEP_NAMES)]
    monkeypatch.setattr(cost, "project", fake_project)
    assert static.main(["--preset", preset, "--gpu", *gpus, "--precision", precision, "--no-memory",
                        "--json", str(path)]) == 0
    return path


def test_step_rows_carry_the_projection_of_the_named_gpu(tmp_path, monkeypatch, capsys):
    from vidgan_fast.benchmarks import projected
    from vidgan_fast.benchmarks.report import attach_projection, format_row
    path = _projection_file(tmp_path / "p.json", monkeypatch, gpus=("h100", "a100"))
    capsys.readouterr()
    found = projected.resolve(path, "NVIDIA H100 80GB HBM3", "tf32", "paper")
    assert found["gpu"] == "h100" and set(found["steps"]) == set(projected.STEP_NAMES)
    row = {"name": "phase2 D step (K=16, B=8)", "kind": "step", "flops": 1e9, "columns": {"fast": {"median_s": 9e-3}}}
    attach_projection(row, found)
    assert row["projected_s"] == pytest.approx(3e-3) and row["projected_floor_s"] == pytest.approx(1.5e-3)
    assert row["measured_over_projected"] == pytest.approx(3.0)
    cells = format_row(row)
    assert cells[HEADER.index("projected ms")] == "3.000" and cells[HEADER.index("measured / projected")] == "3.00x"
    op = {"name": "D_F bank forward", "kind": "op", "flops": 1e9, "columns": {"fast": {"median_s": 1.0}}}
    attach_projection(op, found)
    assert op["projected_s"] is None and format_row(op)[HEADER.index("projected ms")] == "-"
    # nothing applies: a CPU, a GPU or precision the file does not hold, another preset
    for name, precision, preset, why in (("CPU: x86_64, 2 cores", "tf32", "paper", "not a GPU"),
                                         ("NVIDIA H200", "tf32", "paper", "no h200 steps at tf32"),
                                         ("NVIDIA H100 PCIe", "bf16", "paper", "no h100 steps at bf16"),
                                         ("NVIDIA H100 PCIe", "tf32", "tiny", "projects preset paper")):
        nothing = projected.resolve(path, name, precision, preset)
        assert why in nothing["unavailable"] and "steps" not in nothing
        attach_projection(row, nothing)
        assert row["projected_s"] is None and row["measured_over_projected"] is None
    with pytest.raises(ValueError, match="does not exist"):
        projected.resolve(tmp_path / "missing.json", "NVIDIA H100", "tf32", "paper")
    (tmp_path / "bad.json").write_text('{"preset": "paper"}')
    with pytest.raises(ValueError, match="not a `vidgan bench --static --json` file"):
        projected.resolve(tmp_path / "bad.json", "NVIDIA H100", "tf32", "paper")


def test_auto_finds_the_committed_projection_of_the_gpu(tmp_path, monkeypatch):
    from vidgan_fast.benchmarks import projected
    monkeypatch.setattr(projected, "PROJECTIONS", tmp_path)
    assert "no projection of preset paper on h100 at tf32" in projected.resolve(
        "auto", "NVIDIA H100 80GB HBM3", "tf32", "paper")["unavailable"]
    _projection_file(tmp_path / "paper-h100-tf32.json", monkeypatch)
    _projection_file(tmp_path / "hopper.json", monkeypatch, gpus=("h100", "h200"), precision="bf16")
    assert projected.resolve("auto", "NVIDIA H100 80GB HBM3", "tf32", "paper")["file"].endswith("paper-h100-tf32.json")
    assert projected.resolve("auto", "NVIDIA H200", "bf16", "paper")["file"].endswith("hopper.json")
    assert "no projection" in projected.resolve("auto", "NVIDIA A100-SXM4-80GB", "tf32", "paper")["unavailable"]


def test_the_report_reads_the_projection_and_never_computes_one(tmp_path, monkeypatch):
    """run_report(projection=FILE) on a device named like an H100: the step rows get the file's figures; lab.cost
    is never called (it would compile every kernel); a wrong file is an error before anything is measured."""
    from vidgan_fast.benchmarks import report, timing
    from vidgan_fast.lab import cost
    path = _projection_file(tmp_path / "p.json", monkeypatch)

    def forbidden(*a, **kw):
        raise AssertionError("the report computed a projection")
    monkeypatch.setattr(cost, "project", forbidden)
    monkeypatch.setattr(cost, "project_here", forbidden)
    monkeypatch.setattr(timing, "device_info", lambda device: {"device": "cpu", "name": "NVIDIA H100 80GB HBM3"})
    case = Case("phase1 G step (K=48, B=64)", "step", 10 ** 9, [torch.zeros(1)],
                {"reference": lambda: (lambda x: x), "fast": lambda: (lambda x: x + 1)}, {})
    monkeypatch.setattr(report, "_cases", lambda *a: [case])
    rows = run_report(size="paper", device="cpu", out_json=tmp_path / "b.json", repeats=1, warmup=0,
                      compile_enabled=False, projection=path)
    assert rows[0]["projected_s"] == pytest.approx(2e-3)
    assert rows[0]["measured_over_projected"] == pytest.approx(rows[0]["columns"]["fast"]["median_s"] / 2e-3)
    meta = json.loads((tmp_path / "b.json").read_text())["meta"]
    assert meta["projection"]["gpu"] == "h100" and meta["projection"]["file"] == str(path)
    assert report.projection_note(meta).startswith(f"- projection: {path} (h100, tf32, preset paper")
    with pytest.raises(ValueError, match="does not exist"):
        run_report(size="paper", device="cpu", projection=tmp_path / "nope.json")
    assert report.main(["--device", "cpu", "--projection", str(tmp_path / "nope.json"), "--json",
                        str(tmp_path / "c.json")]) == 2
