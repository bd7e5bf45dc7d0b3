"""A run folder is owned by one process at a time, and a start that fails leaves no empty folder behind.

    with claim("runs/x"):        # creates runs/x if needed; RunFolderError if another live run holds it
        ...                      # train; if this raises and runs/x was created here and is still empty,
                                 # runs/x is removed again

The lock is `runs/x/.lock`, held with flock(2) for the whole run. The kernel drops the lock when the process
ends, however it ends (kill -9 included), so a crashed run never leaves the folder stuck: the next run takes the
lock over at once, and only then (a live owner, even one that hangs, keeps it). The file names its owner (pid,
host, start time, command), so a refused run says who holds the folder. It is removed when the run ends; a file
left by a killed run holds no lock and is harmless. Under torchrun only rank 0 claims the folder (the others
write nothing). On a file system without flock the owner's pid is checked instead (same host only).

Nothing in the folder is opened through a symlink: a `.lock`, checkpoint, log or `samples` that is one is refused
with one line naming it. The owner removes the temporary files that a killed checkpoint or log write left
(files.TEMP_PATTERN). A claim that fails leaves nothing: no `.lock` (a full disk included), no folder it made.

Torch-free: the CLI uses it before any model is built.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import stat
import sys
from pathlib import Path

from .errors import RunFolderError, os_reason
from .files import CLOEXEC, NOFOLLOW, make_folders, remove_empty, stale_temps, write_error

LOCK_NAME = ".lock"
RUN_FILES = ("frames.ckpt", "video.ckpt", "log.jsonl", "samples")     # what a run writes (and --resume reads)

try:
    import fcntl
except ImportError:          # not POSIX: pid check only
    fcntl = None


def owner_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(["vidgan", *sys.argv[1:]])[:300]}


def describe_owner(text: str) -> str:
    try:
        o = json.loads(text)
        return f"process {o['pid']} on {o['host']}, started {o['started']}: {o['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that is starting"


def make_folder(folder: Path) -> list[Path]:
    """mkdir -p `folder` (files.make_folders) with a run folder's one-line errors; returns the folders this call
    created, deepest first."""
    p = folder
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    if p.exists() and not p.is_dir():
        raise RunFolderError(f"cannot create run folder {folder}: {p} is a file; choose another --out")
    try:
        return make_folders(folder)
    except FileExistsError as e:           # a file appeared at one of the names meanwhile
        raise RunFolderError(f"cannot use {folder} as run folder: {e.filename} is a file; choose another --out") \
            from None
    except OSError as e:
        raise RunFolderError(f"cannot create run folder {folder} ({os_reason(e)} at {e.filename}); choose another "
                             f"--out or fix the permissions") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _locked_by_live_pid(fd: int) -> bool:
    """Without flock: does the record in the file name a live process on this host (other than this one)?"""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, host = int(record["pid"]), record["host"]
    except (ValueError, KeyError, TypeError, OSError):
        return False
    return host == socket.gethostname() and pid != os.getpid() and _alive(pid)


def _refuse_link(folder: Path, name: str) -> RunFolderError:
    target = os.readlink(folder / name) if os.path.islink(folder / name) else "another file"
    return RunFolderError(f"run folder {folder} holds {name} as a link to {target}; a run writes only its own "
                          f"regular files there (never through a link): remove {folder / name} or choose another --out")


def _open_lock(folder: Path) -> tuple[int, bool]:
    """(descriptor, created) of folder/.lock, opened without following a symlink."""
    path = folder / LOCK_NAME
    flags = os.O_RDWR | NOFOLLOW | CLOEXEC
    try:
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            return os.open(path, flags), False
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise _refuse_link(folder, LOCK_NAME) from None
        if isinstance(e, FileNotFoundError):        # removed between the two opens by a run that just ended
            return _open_lock(folder)
        raise RunFolderError(f"cannot write to run folder {folder} ({os_reason(e)}); choose another --out or "
                             f"make it writable") from None


def acquire(folder: Path) -> int:
    """Open and lock folder/.lock, write this process's record into it; returns the open descriptor. A failure
    after the lock was taken removes the file again (nothing is left behind, a full disk included)."""
    path = folder / LOCK_NAME
    while True:
        fd, created = _open_lock(folder)
        locked = False
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:     # a planted hard link or special file
                raise _refuse_link(folder, LOCK_NAME)
            held = False
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held = True
                except OSError as e:      # no flock on this file system: fall back to the pid check
                    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
                    held = _locked_by_live_pid(fd)
            else:
                held = _locked_by_live_pid(fd)
            if held:
                owner = describe_owner(os.pread(fd, 4096, 0).decode(errors="replace"))
                raise RunFolderError(f"run folder {folder} is in use by another run ({owner}); wait for it to "
                                     f"end or choose another --out")
            try:                          # the file we locked may have been removed by a run that just ended
                same = os.path.samestat(info, os.stat(path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            locked = True
            os.ftruncate(fd, 0)
            record = json.dumps(owner_record()).encode()
            if os.pwrite(fd, record, 0) != len(record):
                raise OSError(errno.ENOSPC, "short write", str(path))
            return fd
        except BaseException as e:
            if locked or created and not isinstance(e, RunFolderError):
                with contextlib.suppress(OSError):       # ours: never leave a 0-byte or half-written lock
                    os.unlink(path)
            with contextlib.suppress(OSError):
                os.close(fd)
            if isinstance(e, OSError):
                raise write_error(e, path, "the run did not start", RunFolderError) from None
            raise


def check_run_files(folder: Path) -> None:
    """RunFolderError if a file the run writes (or reads on --resume) is a symlink: nothing is opened through one."""
    for name in RUN_FILES:
        if os.path.islink(folder / name):
            raise _refuse_link(folder, name)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files that writes of this folder's checkpoints and log left when their process was
    killed (only names of the project's own pattern, files.TEMP_PATTERN; this process owns the folder)."""
    removed = []
    for path in stale_temps(folder, RUN_FILES):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    if removed:
        sys.stderr.write(f"note: removed {len(removed)} temporary file{'s' if len(removed) > 1 else ''} left by a "
                         f"write that was killed: {', '.join(p.name for p in removed)}\n")
    return removed


def release(folder: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(folder / LOCK_NAME)     # while still holding the lock: nobody can hold a removed file's lock
    with contextlib.suppress(OSError):
        os.close(fd)


@contextlib.contextmanager
def claim(folder: str | Path, enabled: bool = True):
    """Own run folder `folder` for the duration of the block (see the module docstring). enabled=False (torchrun
    ranks > 0): nothing is created, checked or locked."""
    if not enabled:
        yield
        return
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"run folder {folder} is a file; choose another --out")
    created = make_folder(folder)
    try:
        fd = acquire(folder)
    except BaseException:
        remove_empty(created)
        raise
    try:
        check_run_files(folder)
        remove_stale_temps(folder)
    except BaseException:
        release(folder, fd)
        remove_empty(created)
        raise
    try:
        yield
    except BaseException:
        release(folder, fd)
        remove_empty(created)
        raise
    release(folder, fd)
