"""The benchmark report runs end to end (tiny sizes, CPU, few repeats) and gives a well-formed table and JSON.

No timing assertions: speed is shown by the report, never asserted by tests.
"""
import json

import pytest
import torch

from vidgan_fast import step as steps
from vidgan_fast.benchmarks import bench_steps
from vidgan_fast.benchmarks.report import HEADER, format_header, format_table, measure_case, run_report
from vidgan_fast.benchmarks.timing import Case, time_call

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    rows = run_report(size="tiny", device="cpu", out_json=out, repeats=1, warmup=0, compile_enabled=False,
                      threads=1)
    return rows, json.loads(out.read_text())


def test_rows_cover_ops_and_the_four_training_steps(report):
    rows, _ = report
    names = [r["name"] for r in rows]
    assert [n.split(" (")[0] for n in names if "step" in n] == [
        "phase1 D step", "phase1 G step", "phase2 D step", "phase2 G step"]
    assert any(n.startswith("projection frames") for n in names)
    assert any(n.startswith("D_F bank fwd+bwd") for n in names)
    assert any(n.startswith("G_F frozen fwd+input-bwd") for n in names)
    for r in rows:
        assert "error" not in r, r
        assert all("skipped" not in r["columns"][c] for c in ("reference", "fast")), r["columns"]
        assert r["flops"] > 0 and r["size"] == "tiny"
        ref, comp, fast = (r["columns"][c] for c in ("reference", "compile", "fast"))
        assert ref["median_s"] > 0 and fast["median_s"] > 0 and ref["repeats"] == 1
        assert "compile disabled" in comp["skipped"]
        assert "impl='ref'" in fast["label"]            # on CPU the fast column says what it really is
        assert r["speedup_vs_reference"] == pytest.approx(ref["median_s"] / fast["median_s"])
        assert r["speedup_vs_compile"] is None
        assert r["tflops"] == pytest.approx(r["flops"] / fast["median_s"] / 1e12)
        assert r["fraction_of_matrix_rate"]["tf32"] is None and r["fraction_of_matrix_rate"]["fp32"] > 0
        assert r["peak_bytes"] is None and r["peak_reserved_bytes"] is None      # CPU: no CUDA memory figure
        # vmap: on the discriminator rows and the steps (eager without --compile), '-' ({}) elsewhere
        vmap = r["columns"]["vmap"]
        if "bank" in r["name"] or "step" in r["name"]:
            assert vmap["median_s"] > 0 and "vmap" in vmap["label"] and "eager" in vmap["label"], vmap
            assert r["speedup_vs_vmap"] == pytest.approx(vmap["median_s"] / fast["median_s"])
        else:
            assert vmap == {} and r["speedup_vs_vmap"] is None
        for cell in (ref, fast, vmap):                   # the TF32 switches in effect, in every timed cell
            assert cell == {} or cell["tf32"] == {"cudnn": True, "matmul": True, "triton": True}


def test_json_holds_meta_and_the_same_rows(report):
    rows, data = report
    assert data["rows"] == json.loads(json.dumps(rows))
    meta = data["meta"]
    for key in ("date", "device", "name", "torch", "triton", "size", "repeats", "threads", "matrix_rate_flops"):
        assert key in meta
    assert meta["size"] == "tiny" and meta["threads"] == 1 and meta["matrix_rate_flops"]["fp32"] > 0
    assert "torch 2" in format_header(meta)
    assert meta["tf32"] == {"cudnn": True, "matmul": True, "triton": True}
    assert "TF32 (every column) cudnn on, matmul on, triton on" in format_header(meta)


def test_table_has_a_header_and_one_line_per_row(report):
    rows, _ = report
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |"
    body = [ln for ln in lines[2:] if ln.startswith("| ")]
    assert len(body) == len(rows)
    assert all(ln.count("|") == len(HEADER) + 1 for ln in body)
    assert "skip* compile (all rows): skipped: compile disabled" in table
    assert "skip* vmap" not in table and "vmap = ops: K discriminators stacked" in table
    assert "peak reserved MiB: torch.cuda.max_memory_reserved" in table and "peak MiB alloc" not in table
    plain = format_table(rows, markdown=False)
    assert plain.splitlines()[0].startswith("op / step")


def test_a_failing_column_becomes_a_cell_and_the_report_goes_on():
    def broken():
        raise RuntimeError("kernel exploded\nsecond line")
    case = Case("toy", "op", 2 * 64 ** 3, [torch.randn(64, 64) for _ in range(2)],
                {"reference": lambda: (lambda x: x @ x), "compile": "skipped: not here", "fast": broken},
                {"fast": "fast"})
    row = measure_case(case, CPU, warmup=0, repeats=2, rates={"fp32": 1e9, "tf32": None})
    assert row["columns"]["fast"]["skipped"] == "failed: RuntimeError: kernel exploded"
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
    row = measure_case(case, CPU, warmup=0, repeats=1, rates={"fp32": 1e9, "tf32": None}, tf32=True)
    assert order == ["reset", "reference", "reset", "fast"]
    assert row["columns"]["vmap"] == {} and row["columns"]["fast"]["peak_reserved_bytes"] is None


def test_step_rows_carry_the_roofline_floor_of_the_named_gpu():
    from vidgan_fast.benchmarks.report import attach_floor, format_row, step_floors
    from vidgan_fast.config import preset
    from vidgan_fast.roofline import floor, step_models
    from vidgan_fast.roofline_devices import DEVICES
    assert step_floors("paper", "CPU: x86_64, 2 cores", "tf32") == {}
    floors = step_floors("paper", "NVIDIA H100 80GB HBM3", "tf32")
    expected = floor(step_models(preset("paper"), "tf32")[2], DEVICES["h100"], "tf32")["floor_s"]
    row = {"name": "phase2 D step (K=16, B=8)", "kind": "step", "flops": 1e9,
           "columns": {"fast": {"median_s": 3 * expected}}}
    attach_floor(row, floors)
    assert row["floor_s"] == expected and abs(row["fast_over_floor"] - 3.0) < 1e-12
    cells = format_row(row)
    assert f"{expected * 1e3:.3f}" in cells and "3.00x" in cells
    op = {"name": "D_F bank forward", "kind": "op", "flops": 1e9, "columns": {"fast": {"median_s": 1.0}}}
    attach_floor(op, floors)
    assert op["floor_s"] is None and op["fast_over_floor"] is None
