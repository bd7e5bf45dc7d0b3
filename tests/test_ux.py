"""What a user meets on the command line (issue 15): quick --help without torch, per-command options, the default
preset, one run per folder, the log after kill -9 and --resume, exit codes of signals, early input checks that
leave nothing behind, samples that never overwrite, `vidgan sample --npy`, and `vidgan bench`'s command line."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_error, vidgan  # tests/cli_helpers.py

from vidgan_fast import step, train
from vidgan_fast.config import PRESETS
from vidgan_fast.data import load_videos, to_model_range
from vidgan_fast.errors import TrainingInterrupted
from vidgan_fast.sample import generate, to_uint8

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
QUICK = ["--preset", "tiny", "--log-every", "1"]

pytestmark = pytest.mark.usefixtures("one_thread")    # tests/conftest.py


def cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vidgan_fast", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny `train all` (2 steps per phase)."""
    out = tmp_path_factory.mktemp("ux") / "run"
    vidgan("train", "all", *QUICK, "--steps", 2, "--sample-n", 4, "--out", out)
    return out


# ----------------------------------------------------------------------------------------------- --help

HELPS = [[], ["train"], ["train", "frames"], ["train", "video"], ["train", "all"], ["sample"], ["data"],
         ["check"], ["eval"], ["bench"]]


def test_every_help_answers_without_importing_torch():
    code = ("import sys\nfrom vidgan_fast.cli import main\n"
            f"for args in {HELPS!r}:\n"
            "  for flag in ('--help', '-h'):\n"
            "    try:\n        main(args + [flag], prog_name='vidgan')\n"
            "    except SystemExit as e:\n        assert e.code in (0, None), (args, e.code)\n"
            "heavy = [m for m in ('torch', 'numpy', 'triton') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0 and proc.stdout.endswith("ok\n"), proc.stderr[-2000:]
    assert "usage: vidgan bench" in proc.stdout and "issue" not in proc.stdout.lower()


def test_help_is_quick():
    """Loose bound (a loaded 2-core machine): the point is that torch (seconds) is not imported."""
    start = time.perf_counter()
    proc = cli("--help", timeout=60)
    assert proc.returncode == 0 and "train" in proc.stdout
    assert time.perf_counter() - start < 5.0


def test_each_train_command_lists_only_the_options_it_uses():
    helps = {c: vidgan("train", c, "--help").stdout for c in ("frames", "video", "all")}
    phase1, phase2 = ("--frames-k", "--frames-batch", "--df-widths"), ("--video-k", "--gv-lstm", "--finetune-frames")
    assert all(o in helps["frames"] for o in phase1) and not any(o in helps["frames"] for o in phase2)
    assert all(o in helps["video"] for o in phase2) and not any(o in helps["video"] for o in phase1)
    assert all(o in helps["all"] for o in phase1 + phase2 + ("--sample-n",))
    assert "--sample-n" not in helps["frames"] and "--sample-n" not in helps["video"]
    assert "read from the --frames checkpoint" in " ".join(helps["video"].split())
    for text in helps.values():
        assert "--seed" in text and "--steps" in text and "--device" in text
        assert "[default: paper on a GPU (--device auto with a GPU, or cuda), else tiny" in " ".join(text.split())


# ----------------------------------------------------------------------------------------------- defaults

def test_no_preset_on_a_cpu_trains_tiny(tmp_path):
    result = vidgan("train", "frames", "--steps", 1, "--out", tmp_path / "run")
    assert "preset: tiny (no --preset given" in result.stderr
    saved = torch.load(tmp_path / "run" / "frames.ckpt", weights_only=True)["config"]
    assert tuple(saved["gf_widths"]) == PRESETS["tiny"].gf_widths


def test_paper_on_a_cpu_warns(tmp_path):
    proc = cli("train", "frames", "--preset", "paper", "--device", "cpu", "--n-videos", 10, "--out",
               tmp_path / "run", timeout=60)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "warning: --preset paper on a CPU takes minutes per step and writes checkpoints of several GB; pass "
        "--device cuda, or --preset tiny for a quick run",
        "error: invalid --frames-batch 64: is larger than --n-videos 10"]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- one run per folder

def test_two_runs_into_one_folder(tmp_path):
    """Started together: one trains, the other gets one error line and changes nothing."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "vidgan_fast", "train", "frames", *QUICK, "--steps", 3, "--out", out]
    procs = [subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ENV) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    (_, out_ok, _), = [r for r in results if r[0] == 0]
    (_, _, err), = [r for r in results if r[0] == 1]
    winner = [p for p, r in zip(procs, results) if r[0] == 0][0]
    last = err.strip().splitlines()[-1]
    prefix = f"error: run folder {out} is in use by another run ("
    assert last.startswith(prefix), last
    # the owner is named once its record is written; in the moment between taking the lock and writing it, the
    # loser is told the owner is starting (run_folder.describe_owner)
    owner = last.removeprefix(prefix)
    assert owner.startswith(f"process {winner.pid} on ") or owner.startswith("a process that is starting)"), last
    assert "choose another --out" in last and "Traceback" not in err
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and len({r["run"] for r in log}) == 1
    assert torch.load(out / "frames.ckpt", weights_only=True)["run"] == log[0]["run"]
    assert "phase 1 done: 3 steps" in out_ok
    assert sorted(p.name for p in out.iterdir()) == ["frames.ckpt", "log.jsonl"]       # no lock left


def test_kill_9_then_resume_logs_every_step_once(tmp_path):
    out = tmp_path / "run"
    args = ["train", "frames", *QUICK, "--steps", 10, "--checkpoint-every", 4]
    proc = subprocess.Popen([sys.executable, "-m", "vidgan_fast", *map(str, args), "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = out / "log.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None and \
            (not log.exists() or log.read_text().count("\n") < 5):
        time.sleep(0.02)
    proc.kill()                                               # SIGKILL: no handler runs, the lock file stays
    proc.wait()
    saved = torch.load(out / "frames.ckpt", weights_only=True)["step"]
    logged = [json.loads(line)["step"] for line in log.read_text().splitlines() if line.endswith("}")]
    assert saved == 4 and max(logged) > saved and (out / ".lock").exists()
    vidgan("train", "frames", "--resume", "--out", out)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 11))
    assert len({r["run"] for r in lines}) == 1                # a resumed run keeps its id
    vidgan(*args, "--out", tmp_path / "straight")
    a, b = (torch.load(p / "frames.ckpt", weights_only=True) for p in (out, tmp_path / "straight"))
    for key, value in a["generator"].items():
        assert torch.equal(value, b["generator"][key]), key
    straight = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["d_loss"], r["g_loss"]) for r in lines] == \
        [(r["step"], r["d_loss"], r["g_loss"]) for r in straight]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopping_signal_exits_128_plus_its_number(signum, code, tmp_path, monkeypatch):
    def stopped(state, out, progress=True):
        raise TrainingInterrupted(f"{signal.Signals(signum).name} at step 1 of phase 1: ...", signum=signum)
    monkeypatch.setattr(train, "train_phase", stopped)
    result = vidgan("train", "frames", *QUICK, "--out", tmp_path / "run", ok=False)
    name = signal.Signals(signum).name
    assert result.exit_code == code and one_error(result).startswith(f"error: interrupted by {name}")


# ----------------------------------------------------------------------------------------------- early checks

def test_bad_inputs_are_found_before_any_model_is_built_and_leave_no_folder(tmp_path, monkeypatch):
    def never(*a, **kw):
        raise AssertionError("a model was built before the inputs were checked")
    monkeypatch.setattr(step, "build_frame_generator", never)
    monkeypatch.setattr(train, "build_frame_generator", never)
    text = tmp_path / "notes.npy"
    text.write_text("not an array\n")
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((3, 30, 30, 30), np.uint8))
    cases = [(["--data", text], "is not a readable .npy array (it has no NumPy header"),
             (["--data", text], "write one with `vidgan data --n N --out NEW.npy` (or `--out"),   # never the taken name alone
             (["--data", pickled], "truncated, damaged, or an array of Python objects"),
             (["--data", short], "holds only 3 videos; pass --n-videos 3 or fewer"),
             (["--data", tmp_path / "missing.npy"], "does not exist")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA GPU"))
    for extra, fragment in cases:
        out = tmp_path / "new" / "run"
        error = one_error(vidgan("train", "all", *QUICK, *extra, "--out", out, ok=False))
        assert fragment in error and "allow_pickle" not in error
        assert not (tmp_path / "new").exists(), extra              # the folders it made are gone again
    for path in (tmp_path / "missing.ckpt", text):
        error = one_error(vidgan("train", "video", *QUICK, "--frames", path, "--out", tmp_path / "v", ok=False))
        assert path.name in error and not (tmp_path / "v").exists()


def test_an_unwritable_run_folder_is_found_before_training(tmp_path, monkeypatch):
    from vidgan_fast import run_folder
    real_open = os.open

    def denied(path, *a, **kw):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)
    monkeypatch.setattr(run_folder.os, "open", denied)
    monkeypatch.setattr(train, "open_phase", lambda *a, **kw: pytest.fail("started before the folder was checked"))
    error = one_error(vidgan("train", "frames", *QUICK, "--out", tmp_path / "run", ok=False))
    assert error == f"error: cannot write to run folder {tmp_path / 'run'} (permission denied); choose another " \
                    f"--out or make it writable"


def test_files_are_written_with_the_umask(run):
    mode = 0o666 & ~int(open("/proc/self/status").read().split("Umask:")[1].split()[0], 8) \
        if Path("/proc/self/status").exists() else 0o644
    for name in ("frames.ckpt", "video.ckpt", "log.jsonl", "samples/videos.gif"):
        assert (run / name).stat().st_mode & 0o777 == mode, name


def test_log_lines_carry_run_and_step(run):
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in lines] == [("frames", 1), ("frames", 2), ("video", 1), ("video", 2)]
    assert len({r["run"] for r in lines}) == 1 and lines[0]["run"]


# ----------------------------------------------------------------------------------------------- samples

def test_sample_writes_next_to_existing_files(run, tmp_path):
    out = tmp_path / "s"
    first = vidgan("sample", run / "video.ckpt", "--n", 2, "--out", out).stdout
    second = vidgan("sample", run / "video.ckpt", "--n", 2, "--seed", 1, "--out", out).stdout
    assert f"wrote {out / 'videos.gif'}" in first and f"wrote {out / 'videos-2.gif'}" in second
    assert f"wrote {out / 'video_frames-2.png'}" in second
    os.utime(out / "videos.gif", ns=(0, 0))
    third = vidgan("sample", run / "video.ckpt", "--n", 2, "--seed", 1, "--out", out, "--overwrite").stdout
    assert f"wrote {out / 'videos.gif'}" in third and (out / "videos.gif").stat().st_mtime_ns > 0
    assert sorted(p.name for p in out.iterdir()) == ["video_frames-2.png", "video_frames.png", "videos-2.gif",
                                                     "videos.gif"]
    assert "wrote" in vidgan("sample", run / "video.ckpt", "--n", 2).stdout      # beside train all's samples
    assert (run / "samples" / "videos-2.gif").exists()


@pytest.mark.parametrize("phase, shape", [("video", (3, 30, 30, 30)), ("frames", (3, 30, 30))])
def test_sample_npy_writes_the_data_set_layout(phase, shape, run, tmp_path):
    path = tmp_path / f"{phase}.npy"
    result = vidgan("sample", run / f"{phase}.ckpt", "--n", 3, "--seed", 5, "--npy", path)
    assert f"wrote {path} (uint8 {list(shape)})" in result.stdout
    array = np.load(path)
    assert array.dtype == np.uint8 and array.shape == shape
    _, x = generate(run / f"{phase}.ckpt", n=3, seed=5)
    assert np.array_equal(array, to_uint8(x[:, 0]).numpy())   # the same samples, quantised as the data set
    if phase == "video":
        assert load_videos(path).shape == shape                # `vidgan train --data` could read it back
    before = path.read_bytes()
    error = one_error(vidgan("sample", run / f"{phase}.ckpt", "--n", 2, "--npy", path, ok=False))
    assert "already exists; pass --overwrite" in error and path.read_bytes() == before
    vidgan("sample", run / f"{phase}.ckpt", "--n", 2, "--npy", path, "--overwrite")
    assert np.load(path).shape[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]           # no temporary file left


def test_to_uint8_inverts_reading_a_data_file(tmp_path):
    vidgan("data", "--n", 3, "--out", tmp_path / "d.npy")
    stored = load_videos(tmp_path / "d.npy")
    x = to_model_range(torch.from_numpy(np.array(stored)).float() / 255)
    assert np.array_equal(to_uint8(x).numpy(), stored)


# ----------------------------------------------------------------------------------------------- bench

def test_bench_prints_the_header_first_and_saves_every_row(tmp_path, monkeypatch):
    """Stopped after two rows: the header and both rows are out, and the JSON holds them."""
    from vidgan_fast.benchmarks import report
    real, calls = report.measure_case, []

    def measure(*a, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(report, "measure_case", measure)
    out = tmp_path / "bench.json"
    result = vidgan("bench", "--device", "cpu", "--what", "ops", "--repeats", 1, "--warmup", 0, "--json", out,
                    ok=False)
    assert result.exit_code == 130
    assert one_error(result) == f"error: interrupted after 2 of 8 rows; {out} holds them"
    lines = result.stdout.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| op / step |") and len(table) == 2 + 2
    assert "[1/8] projection frames" in result.stderr and "[3/8]" in result.stderr
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == 2 and saved["meta"]["complete"] is False
    assert saved["meta"]["repeats"] == 1 and saved["meta"]["compile"] is False and saved["meta"]["threads"] == 1
    assert saved["meta"]["command"].startswith("vidgan bench")


def test_bench_defaults_follow_the_device(monkeypatch, tmp_path):
    from vidgan_fast.benchmarks import report
    seen = {}
    monkeypatch.setattr(report, "run_report", lambda *a, **kw: seen.update(args=a) or [])
    monkeypatch.chdir(tmp_path)
    assert report.main(["--device", "cpu"]) == 0       # the JSON goes to a new file in results/, never ./bench.json
    [made] = (tmp_path / "results").iterdir()
    assert seen["args"][2] == str(Path("results") / made.name) and made.name.startswith("bench-")
    assert report.main(["--device", "cpu", "--json", str(made)]) == 2              # taken: needs --overwrite
    assert report.main(["--device", "cpu", "--json", os.devnull, "--overwrite"]) == 0
    size, device, _, repeats, warmup, what, compile_enabled, _, threads = seen["args"]
    assert (size, device, repeats, warmup, compile_enabled, threads) == ("auto", "cpu", 3, 1, False, 1)
    assert report.main(["--device", "cpu", "--compile", "--repeats", "7", "--json", os.devnull, "--overwrite"]) == 0
    assert seen["args"][3] == 7 and seen["args"][6] is True
    assert seen["args"][7] is True                  # TF32 on by default, as training
    assert report.main(["--device", "cpu", "--no-tf32", "--json", os.devnull, "--overwrite"]) == 0 and seen["args"][7] is False
    assert report.COLUMNS == __import__("vidgan_fast.benchmarks.timing", fromlist=["COLUMNS"]).COLUMNS
