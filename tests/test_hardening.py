"""Issue 28 on the command line as a user runs it (real processes, tiny preset): concurrent samples get distinct
files, planted symlinks leave their targets untouched, damaged checkpoints are refused by every entry point, bad
inputs are one line within seconds, a full disk says so and leaves nothing behind, a kill inside a checkpoint
write leaves no temporary file after --resume, and SIGINT / SIGTERM exit 130 / 143 at any point."""
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from cli_helpers import one_error, vidgan  # tests/cli_helpers.py

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
VIDGAN = [sys.executable, "-m", "vidgan_fast"]

pytestmark = pytest.mark.usefixtures("one_thread")    # tests/conftest.py


def cli(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*VIDGAN, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout, **kw)


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in stderr and lines and sum(x.startswith("error: ") for x in lines) == 1, stderr[-2000:]
    return lines[-1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny `train all` (2 steps per phase): frames.ckpt and video.ckpt."""
    out = tmp_path_factory.mktemp("hardening") / "run"
    vidgan("train", "all", "--preset", "tiny", "--steps", 2, "--sample-n", 2, "--out", out)
    return out


# ----------------------------------------------------------------------------------------------- 1, 8: no replacing

SYNCED = """import os, sys, time
import vidgan_fast.sample                        # torch imported: wait for the others, then start at once
from vidgan_fast.cli import main
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
main(sys.argv[2:], prog_name="vidgan")
"""


def test_concurrent_samples_get_distinct_files_and_eval_numbers_its_outputs(run, tmp_path):
    out, go = tmp_path / "s", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", SYNCED, str(go), "sample", str(run / "video.ckpt"), "--n",
                               "2", "--seed", str(seed), "--out", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for seed in range(3)]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 3
    go.touch()                                   # all three pick their names within milliseconds of each other
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0] * 3, results
    wrote = [line.split()[1] for _, stdout, _ in results for line in stdout.splitlines() if line.startswith("wrote")]
    assert len(wrote) == len(set(wrote)) == 6                     # 3 GIFs and 3 strips, no name given twice
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(w).name for w in wrote)   # and no file replaced
    assert {p.stat().st_size > 0 for p in out.iterdir()} == {True}
    first = vidgan("eval", run / "video.ckpt", "--n", 2, "--out", tmp_path / "e").stdout
    before = (tmp_path / "e" / "eval.json").read_bytes()
    second = vidgan("eval", run / "video.ckpt", "--n", 2, "--seed", 1, "--out", tmp_path / "e").stdout
    assert f"wrote {tmp_path / 'e' / 'eval.json'}" in first and (tmp_path / "e" / "eval.json").read_bytes() == before
    for name in ("eval-2.json", "eval-2.png", "samples-2.gif"):
        assert f"wrote {tmp_path / 'e' / name}" in second


# ----------------------------------------------------------------------------------------------- 2: symlinks

def test_planted_symlinks_leave_their_targets_untouched(run, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    folder = tmp_path / "planted"
    folder.mkdir()
    (folder / ".lock").symlink_to(target)
    proc = cli("train", "frames", "--preset", "tiny", "--steps", 1, "--out", folder)
    assert proc.returncode == 1 and target.read_text() == "keep me\n"
    assert f"holds .lock as a link to {target}" in last_line(proc.stderr)
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]            # nothing written beside it
    (folder / ".lock").unlink()
    os.link(target, folder / ".lock")                                       # a hard link: the same file
    assert "holds .lock as a link to another file" in one_error(vidgan("train", "frames", "--preset", "tiny",
                                                                       "--steps", 1, "--out", folder, ok=False))
    (folder / ".lock").unlink()
    (folder / "log.jsonl").symlink_to(target)
    assert "holds log.jsonl as a link" in one_error(vidgan("train", "frames", "--preset", "tiny", "--steps", 1,
                                                           "--out", folder, ok=False))
    assert target.read_text() == "keep me\n"
    samples, outside = tmp_path / "samples", tmp_path / "outside.png"
    samples.mkdir()
    (samples / "frames.png").symlink_to(outside)                            # dangling, pointing out of --out
    proc = cli("sample", run / "frames.ckpt", "--n", 2, "--out", samples)
    assert proc.returncode == 0 and f"wrote {samples / 'frames-2.png'}" in proc.stdout, proc.stderr
    assert not outside.exists() and (samples / "frames.png").is_symlink()
    vidgan("sample", run / "frames.ckpt", "--n", 2, "--out", samples, "--overwrite")
    assert not outside.exists() and not (samples / "frames.png").is_symlink()   # the link replaced, not followed


# ----------------------------------------------------------------------------------------------- 3: integrity

def flip_tensor_bytes(src: Path, dst: Path) -> str:
    """Copy `src` with 4 bytes flipped inside its largest tensor record (the zip structure intact); its name."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start:start + 4] = bytes(b ^ 0xFF for b in data[start:start + 4])
    dst.write_bytes(data)
    return info.filename


def test_a_checkpoint_with_flipped_tensor_bytes_is_refused_by_every_entry_point(run, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    records = {name: flip_tensor_bytes(run / name, bad / name) for name in ("frames.ckpt", "video.ckpt")}
    before = {name: (bad / name).read_bytes() for name in records}

    def refused(error, name):
        assert f"checkpoint {bad / name} is damaged: tensor " in error and f"(record {records[name]})" in error
        assert "does not match the SHA-256" in error

    proc = cli("sample", bad / "video.ckpt", "--n", 2, "--out", tmp_path / "s")
    assert proc.returncode == 1
    refused(last_line(proc.stderr), "video.ckpt")
    refused(one_error(vidgan("eval", bad / "video.ckpt", "--n", 2, "--out", tmp_path / "e", ok=False)), "video.ckpt")
    refused(one_error(vidgan("train", "video", "--preset", "tiny", "--steps", 1, "--frames", bad / "frames.ckpt",
                             "--out", tmp_path / "v", ok=False)), "frames.ckpt")
    refused(one_error(vidgan("train", "frames", "--resume", "--out", bad, "--steps", 4, ok=False)), "frames.ckpt")
    refused(one_error(vidgan("train", "all", "--resume", "--out", bad, ok=False)), "video.ckpt")
    assert {name: (bad / name).read_bytes() for name in records} == before       # nothing trained on, nothing saved
    assert not (tmp_path / "s").exists() and not (tmp_path / "e").exists() and not (tmp_path / "v").exists()
    # a checkpoint written before the integrity record existed: loads, with one warning line
    old = torch.load(run / "frames.ckpt", weights_only=True)
    del old["integrity"]
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.warns(RuntimeWarning, match="has no integrity record \\(written by an older vidgan_fast\\)"):
        assert "wrote" in vidgan("sample", tmp_path / "old.ckpt", "--n", 2, "--out", tmp_path / "o").stdout
    flip_tensor_bytes(tmp_path / "old.ckpt", tmp_path / "old-bad.ckpt")       # ... and its damage is still found
    assert "fails its CRC-32 check" in one_error(vidgan("sample", tmp_path / "old-bad.ckpt", ok=False))


# ----------------------------------------------------------------------------------------------- 4: bad inputs

BAD_INPUTS = [
    (["train", "frames", "--seed", 2 ** 63], "invalid --seed 9223372036854775808: must be an integer from 0 to"),
    (["train", "frames", "--data-seed", 2 ** 64], "invalid --data-seed"),
    (["sample", "x.ckpt", "--seed", 2 ** 63], "Invalid value for '--seed'"),
    (["data", "--out", "d.npy", "--seed", 2 ** 63], "Invalid value for '--seed'"),
    (["train", "frames", "--device", "cuda:abc"], "Invalid value for '--device': 'cuda:abc' is not a device"),
    (["sample", "x.ckpt", "--device", "bogus"], "Invalid value for '--device'"),
    (["eval", "x.ckpt", "--device", "bogus"], "Invalid value for '--device'"),
    (["sample", "x.ckpt", "--n", 10 ** 9], "Invalid value for '--n'"),
    (["sample", "x.ckpt", "--n", 5000], "the picture files hold at most 1,024 samples"),
    (["eval", "x.ckpt", "--n", 10 ** 9], "Invalid value for '--n'"),
    (["train", "all", "--n-videos", 10 ** 12], "invalid --n-videos 1000000000000: must be at most 10,000,000"),
    (["train", "all", "--gf-widths", "100000,1024,512,256"], "each width must be at most 65,536"),
    (["train", "frames", "--k", 100000], "invalid --k 100000: must be at most 4,096"),
    (["train", "all", "--loss", "foo"], "Invalid value for '--loss'"),
    (["train", "all", "--cpu-threads", -1], "invalid --cpu-threads -1: must be an integer from 0"),
]


def test_each_bad_input_is_one_line_and_exit_2_within_seconds(tmp_path):
    """Each case in a real process; all are found before torch is imported (well under a second each)."""
    for args, fragment in BAD_INPUTS:
        start = time.monotonic()
        proc = cli(*args, cwd=tmp_path, timeout=60)
        assert proc.returncode == 2 and fragment in last_line(proc.stderr), (args, proc.stderr)
        assert time.monotonic() - start < 10, args
    assert list(tmp_path.iterdir()) == []                                   # nothing created


def test_sizes_that_cannot_fit_are_refused_before_any_model_is_built(tmp_path):
    error = one_error(vidgan("train", "frames", "--preset", "tiny", "--gf-widths", "65536,65536,16,64",
                             "--out", tmp_path / "run", ok=False))
    assert "phase 1 would need at least" in error and "GiB of memory" in error and "--gf-widths 65536" in error
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- 5: disk full

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (root only, and only where mount works: skipped otherwise)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_says_so_and_leaves_no_lock(run, small_tmpfs):
    out = small_tmpfs / "run"                  # room for the log, not for a 3 MB checkpoint
    proc = cli("train", "frames", "--preset", "tiny", "--steps", 2, "--out", out)
    assert proc.returncode == 1 and last_line(proc.stderr) == \
        f"error: no space left on the device while writing {out / 'frames.ckpt'}; no checkpoint was saved"
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl"]        # no .lock, no temporary file
    with open(small_tmpfs / "fill", "wb", buffering=0) as f:             # now fill it
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    proc = cli("train", "frames", "--preset", "tiny", "--steps", 2, "--out", small_tmpfs / "new")
    assert last_line(proc.stderr) == (f"error: no space left on the device while writing {small_tmpfs / 'new'}/.lock; "
                                      f"the run did not start")
    error = one_error(vidgan("sample", run / "frames.ckpt", "--n", 2, "--out", small_tmpfs / "s", ok=False))
    assert error == f"error: no space left on the device while writing {small_tmpfs / 's' / 'frames.png'}; nothing " \
                    f"was written"
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["fill", "run"]   # no folder, no 0-byte file left


# ----------------------------------------------------------------------------------------------- 6, 7: kills, signals

SLOW_SAVE = """import sys, time, torch
real, calls = torch.save, []
def slow(obj, f):              # the first checkpoint is written; the next one writes half, then waits to be stopped
    calls.append(1)
    if len(calls) == 1:
        return real(obj, f)
    f.write(b"half a checkpoint")
    f.flush()
    print("inside the write", file=sys.stderr, flush=True)
    time.sleep(120)
torch.save = slow
from vidgan_fast.cli import main
main(sys.argv[1:], prog_name="vidgan")
"""


def stopped_inside_a_write(out: Path, stop) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, "train", "frames", "--preset", "tiny", "--steps", "6",
                             "--checkpoint-every", "2", "--log-every", "1", "--out", str(out)], stderr=subprocess.PIPE,
                            text=True, env=ENV)
    for line in proc.stderr:
        if "inside the write" in line:
            break
    assert [p.name for p in out.glob(".frames.ckpt.*.tmp")], "the write never started"
    stop(proc)
    return proc


def test_a_kill_inside_a_checkpoint_write_then_resume_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "run"
    proc = stopped_inside_a_write(out, lambda p: p.kill())
    proc.wait(timeout=60)
    saved = (out / "frames.ckpt").read_bytes()
    assert len(list(out.glob(".frames.ckpt.*.tmp"))) == 1                  # what the kill left
    resumed = vidgan("train", "frames", "--resume", "--out", out)
    assert "note: removed 1 temporary file left by a write that was killed: .frames.ckpt." in resumed.stderr
    assert sorted(p.name for p in out.iterdir()) == ["frames.ckpt", "log.jsonl"]
    assert (out / "frames.ckpt").read_bytes() != saved and "phase 1 done: 6 steps" in resumed.stdout


def test_a_second_sigint_inside_the_save_exits_130_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"

    def twice(p):
        p.send_signal(signal.SIGINT)                 # a stop request: the run is saving already
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)                 # the second: stop now
    proc = stopped_inside_a_write(out, twice)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert last_line(err) == f"error: interrupted by SIGINT; {out / 'frames.ckpt'} (step 2) is saved; continue " \
                             f"with --resume"
    assert sorted(p.name for p in out.iterdir()) == ["frames.ckpt", "log.jsonl"]     # no .lock, no temporary file
    assert torch.load(out / "frames.ckpt", weights_only=True)["step"] == 2


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_at_start_up_exits_128_plus_its_number_and_leaves_nothing(signum, code, tmp_path):
    out = tmp_path / "new" / "run"
    proc = subprocess.Popen([*VIDGAN, "train", "frames", "--preset", "tiny", "--out", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / ".lock").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)                            # the folder is claimed; torch is being imported
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert last_line(err) == f"error: interrupted by {signal.Signals(signum).name}; nothing was saved"
    assert not (tmp_path / "new").exists()           # the folders it made are gone, with the .lock
