"""The run-folder lock, the cleanup of a failed start, the log cut on resume, and OS errors in words
(vidgan_fast/run_folder.py, run_log.cut_log, errors.os_error_message). Fast: no training here."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vidgan_fast import run_folder
from vidgan_fast.checkpoint import save_checkpoint, umask
from vidgan_fast.errors import CheckpointError, RunFolderError, os_error_message
from vidgan_fast.run_log import cut_log
from vidgan_fast.run_folder import LOCK_NAME, claim

REPO = Path(__file__).resolve().parents[1]
HOLD = "import sys, time\nfrom vidgan_fast.run_folder import claim\nwith claim(sys.argv[1]):\n" \
       "    print('held', flush=True)\n    time.sleep(120)\n"


def holder(folder: Path) -> subprocess.Popen:
    """Another process that claims `folder` and holds it (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_claim_creates_the_folder_and_leaves_only_what_the_run_wrote(tmp_path):
    folder = tmp_path / "a" / "b"
    with claim(folder):
        record = json.loads((folder / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] and record["started"] and record["command"]
        (folder / "frames.ckpt").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["frames.ckpt"]        # the lock file is gone


def test_a_failed_start_removes_the_folders_it_created_and_nothing_else(tmp_path):
    with pytest.raises(ValueError):
        with claim(tmp_path / "new" / "run"):
            raise ValueError("bad --data")
    assert list(tmp_path.iterdir()) == []                    # both created levels are gone
    (tmp_path / "existing").mkdir()
    with pytest.raises(ValueError):
        with claim(tmp_path / "existing"):
            raise ValueError("bad --data")
    assert (tmp_path / "existing").is_dir()                  # the user's folder stays
    with pytest.raises(ValueError):
        with claim(tmp_path / "partial"):
            (tmp_path / "partial" / "log.jsonl").write_text("{}\n")
            raise ValueError("NaN at step 3")
    assert (tmp_path / "partial" / "log.jsonl").exists()     # work started: what it wrote is kept


def test_a_live_owner_refuses_a_second_run_and_a_dead_one_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    proc = holder(folder)
    try:
        with pytest.raises(RunFolderError) as e:
            with claim(folder):
                pytest.fail("a second owner got in")
        message = str(e.value)
        assert f"run folder {folder} is in use by another run (process {proc.pid} on " in message
        assert "choose another --out" in message and "\n" not in message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (folder / LOCK_NAME).exists()                     # kill -9 left the file behind, but not the lock
    with claim(folder):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()


def test_without_flock_a_live_pid_still_holds_the_folder(tmp_path, monkeypatch):
    """File systems without flock: the record's pid is checked (same host)."""
    folder = tmp_path / "run"
    proc = holder(folder)
    try:
        monkeypatch.setattr(run_folder, "fcntl", None)
        with pytest.raises(RunFolderError, match=f"process {proc.pid}"):
            with claim(folder):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with claim(folder):                                      # its pid is gone: taken over
        pass


def test_a_run_folder_that_is_a_file_or_below_one(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(RunFolderError, match="is a file; choose another --out"):
        with claim(tmp_path / "f"):
            pass
    with pytest.raises(RunFolderError, match=f"cannot create run folder {tmp_path / 'f' / 'x' / 'y'}: "
                                             f"{tmp_path / 'f'} is a file"):
        with claim(tmp_path / "f" / "x" / "y"):
            pass


def test_an_unwritable_run_folder_is_one_error_in_words(tmp_path, monkeypatch):
    real_open = os.open

    def denied(path, *a, **kw):
        if str(path).endswith(LOCK_NAME):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)
    monkeypatch.setattr(run_folder.os, "open", denied)
    with pytest.raises(RunFolderError) as e:
        with claim(tmp_path / "run"):
            pass
    assert str(e.value) == (f"cannot write to run folder {tmp_path / 'run'} (permission denied); choose another "
                            f"--out or make it writable")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_run_folder_for_real(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(RunFolderError, match="permission denied"):
        with claim(tmp_path / "ro"):
            pass


def test_cut_log_keeps_each_step_once(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [{"run": "a", "phase": "frames", "step": s} for s in (1, 2, 3, 4)] + \
            [{"run": "a", "phase": "video", "step": s} for s in (1, 2, 3)]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"run": "a", "phase": "vi')   # torn last line
    cut_log(log, "video", 2)
    kept = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["phase"], x["step"]) for x in kept] == [("frames", 1), ("frames", 2), ("frames", 3), ("frames", 4),
                                                         ("video", 1), ("video", 2)]
    before = log.read_bytes()
    cut_log(log, "video", 2)                                 # nothing to cut: untouched
    assert log.read_bytes() == before
    cut_log(log, "frames", 0)                                # a fresh phase 1: its old lines go, phase 2's stay
    assert [json.loads(x)["phase"] for x in log.read_text().splitlines()] == ["video", "video"]
    cut_log(tmp_path / "missing.jsonl", "frames", 0)         # no log yet: nothing to do
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]


def test_os_errors_in_words():
    message = os_error_message(PermissionError(13, "Permission denied", "/runs/x/.frames.ckpt.k2j3h4.tmp"))
    assert message.startswith("cannot write or read /runs/x/frames.ckpt: permission denied;")
    assert "Errno" not in message and ".tmp" not in message
    assert "a file is in the way" in os_error_message(NotADirectoryError(20, "Not a directory", "/a/b"))
    for temp in (".balls.npy.4242.9f3a0b1c.tmp", ".log.jsonl.4242.tmp", ".frames.ckpt.123456.tmp"):
        named = os_error_message(OSError(28, "No space left on device", f"/d/{temp}"))
        assert named.startswith(f"cannot write or read /d/{temp[1:].split('.')[0]}.") and ".tmp" not in named
        assert "no space left on the device" in named


def test_checkpoints_follow_the_umask_and_a_failed_write_names_the_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "frames.ckpt", {"phase": "frames"})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()
    old = os.umask(0o077)
    try:
        assert save_checkpoint(tmp_path / "private.ckpt", {}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    real = os.replace

    def full(src, dst):
        raise OSError(28, "No space left on device", src)
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path / "frames.ckpt", {"phase": "frames", "x": 1})
    monkeypatch.setattr(os, "replace", real)
    assert str(e.value) == (f"no space left on the device while writing {tmp_path / 'frames.ckpt'}; "
                            f"the previous checkpoint is unchanged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames.ckpt", "private.ckpt"]


def test_the_log_is_checked_before_the_first_step(tmp_path):
    from vidgan_fast.errors import TrainingError
    from vidgan_fast.run_log import LossLog
    (tmp_path / "log.jsonl").mkdir()                         # something that cannot be appended to
    with pytest.raises(TrainingError, match="cannot write the log .*log.jsonl \\(it is a folder\\)"):
        LossLog(tmp_path / "log.jsonl", "frames", 1, 0, "run")
