"""The one way the project writes files (issue 26): complete or not at all, never over a file without being
asked, never through a symbolic link.

    write_file(path, writer)                     # a new file: refused (FileExistsError) if anything is at path
    write_file(path, writer, replace=True)       # an atomic replace (checkpoints, the log cut, --overwrite)
    write_numbered(folder, [("videos.gif", w1), ("video_frames.png", w2)])   # the next free numbered set
    fd = open_append(path)                       # log.jsonl: O_APPEND, never through a symlink

`writer(f)` writes the content to a binary file object. It goes to a temporary file in the same folder
(`.NAME.PID.HEX8.tmp`, created O_EXCL | O_NOFOLLOW with mode 0666 minus the umask), is flushed and fsynced, and is
then put in place: by link(2), which fails if anything (a file, a dangling symlink) is at the name, so that
concurrent writers get distinct names and nothing is replaced; or with replace=True by rename(2), which replaces
a symlink at the name itself, never the file it points to. The folder is fsynced after. A failure at any point
removes the temporary file (a signal too); a process killed inside a write leaves the temporary file, which
`stale_temps` recognises (the next run that owns the folder removes them: run_folder.claim).

Every OSError becomes a WriteError (a VidganError: one line on the command line) naming the file, not the
temporary one, and a full disk says so: "no space left on the device while writing P; <kept>". torch.save reports
a failed write as a RuntimeError whose context is the OSError: that is recognised too.

Torch-free (the CLI and run_folder use it before torch is imported).
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Callable, Iterable

from .errors import VidganError, os_reason

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
FULL = (errno.ENOSPC, errno.EDQUOT)
# .NAME.PID.HEX8.tmp (this module); .NAME.XXXXXXXX.tmp (mkstemp, checkpoints before files.py); .NAME.PID.tmp (the
# log cut before files.py)
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.[0-9a-f]{8}|[a-z0-9_]{8}|\d+)\.tmp$")
NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK)   # link(2) not supported


class WriteError(VidganError):
    """A file that could not be written (its message names it and says what was kept)."""


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def first_os_error(e: BaseException) -> OSError | None:
    """`e` if it is an OSError, else the first OSError in its context chain (torch.save's RuntimeError)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _interrupt_in(e: BaseException) -> BaseException | None:
    """A KeyboardInterrupt (or other non-Exception) that a library wrapped into an ordinary error, if any."""
    seen = 0
    while e is not None and seen < 10:
        if not isinstance(e, Exception):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def write_error(e: BaseException, path: Path, kept: str, error: type[VidganError] = WriteError) -> VidganError:
    """The one-line error for a failed write of `path`."""
    os_error = first_os_error(e)
    tail = f"; {kept}" if kept else ""
    if os_error is not None and os_error.errno in FULL:
        return error(f"no space left on the device while writing {path}{tail}")
    if os_error is not None:
        return error(f"cannot write {path} ({os_reason(os_error)}){tail}")
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return error(f"cannot write {path} ({reason}){tail}")


def fsync_folder(folder: Path) -> None:
    """Make a rename or link in `folder` durable (best effort: not every file system lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_temp(path: Path, writer: Callable) -> Path:
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _place(tmp: Path, path: Path, replace: bool) -> None:
    """Put the complete temporary file at `path`: rename (replace) or link (FileExistsError if taken)."""
    if replace:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):   # a folder, /dev/null, a FIFO...
            raise OSError(errno.EEXIST, "it is not a regular file, and only those are replaced", str(path))
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in NO_LINKS:
            raise
        # no hard links here (some FUSE and FAT file systems): claim the name, then rename over our own claim
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o666))
        os.replace(tmp, path)


def _guarded(paths: Iterable[Path], kept: str, error: type[VidganError]):
    """Translate what a write raised: an interrupt wrapped by a library is re-raised as itself, an OSError (or a
    RuntimeError around one) becomes `error` naming the first of `paths`."""
    @contextlib.contextmanager
    def guard():
        try:
            yield
        except (VidganError, FileExistsError):
            raise
        except Exception as e:
            interrupt = _interrupt_in(e)
            if interrupt is not None:
                raise interrupt from None
            if isinstance(e, (OSError, RuntimeError)):
                raise write_error(e, next(iter(paths)), kept, error) from None
            raise
    return guard()


def write_file(path: str | Path, writer: Callable, *, replace: bool = False, kept: str = "",
               error: type[VidganError] = WriteError) -> Path:
    """Write a complete new file at `path` (see the module docstring). Without replace, FileExistsError if
    anything is at `path` (checked atomically by the link); other failures: `error` naming `path`, with `kept`
    (what is unchanged, e.g. 'the previous checkpoint is unchanged') after a semicolon."""
    path = Path(path)
    with _guarded([path], kept, error):
        tmp = _write_temp(path, writer)
        try:
            _place(tmp, path, replace)
        finally:
            tmp.unlink(missing_ok=True)          # renamed: gone already; linked: the name stays
    fsync_folder(path.parent)
    return path


def numbered(name: str, k: int) -> str:
    """name, name-2.ext, name-3.ext, ... for k = 1, 2, 3, ..."""
    p = Path(name)
    return name if k == 1 else f"{p.stem}-{k}{p.suffix}"


def write_numbered(folder: str | Path, files: list[tuple[str, Callable]], overwrite: bool = False,
                   error: type[VidganError] = WriteError) -> list[Path]:
    """Write a set of files that share a number into `folder`: the names as given, or the first k = 2, 3, ...
    at which every name-k.ext is free. Each name is taken by link(2), so processes that write into the same
    folder at the same time get distinct numbers and never replace a file (a dangling symlink counts as taken).
    overwrite=True: the names as given, each replaced atomically (a symlink there is replaced, not followed).
    The folder is created if needed; a write that fails removes the folders it created (if still empty)."""
    folder = Path(folder)
    try:
        created = make_folders(folder)
    except OSError as e:
        raise error(f"cannot create the output folder {folder} ({os_reason(e)}); choose another --out") from None
    try:
        paths = _write_set(folder, files, overwrite, error)
    except BaseException:
        remove_empty(created)
        raise
    fsync_folder(folder)
    return paths


def _write_set(folder: Path, files: list[tuple[str, Callable]], overwrite: bool, error: type[VidganError]):
    with _guarded([folder / files[0][0]], "nothing was written", error):
        temps = []
        try:
            for name, writer in files:
                temps.append(_write_temp(folder / name, writer))
            for k in itertools.count(1):
                paths = [folder / numbered(name, k) for name, _ in files]
                placed = []
                try:
                    for tmp, path in zip(temps, paths):
                        _place(tmp, path, overwrite)
                        placed.append(path)
                except FileExistsError:
                    for path in placed:             # our own links: give the number back
                        path.unlink(missing_ok=True)
                    continue
                break
        finally:
            for tmp in temps:
                tmp.unlink(missing_ok=True)
    return paths


def claim_new(path: str | Path) -> bool:
    """Create `path` empty and exclusively (its folders too), never through a symlink: FileExistsError if anything
    is there. A name taken before a long job fills it (later writes replace it atomically); returns True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o666))
    return True


def open_append(path: str | Path) -> int:
    """An O_APPEND descriptor of `path` (created if missing), never opened through a symlink (OSError ELOOP)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW | CLOEXEC, 0o666)


def stale_temps(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """The temporary files in `folder` that a write of one of `names` left when its process was killed
    (regular files whose name matches TEMP_PATTERN for one of `names`; never a symlink)."""
    names, found = set(names), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        m = TEMP_PATTERN.match(entry.name)
        if m and m["name"] in names and entry.is_file(follow_symlinks=False):
            found.append(Path(folder) / entry.name)
    return sorted(found)


def is_symlink(path: Path) -> bool:
    return os.path.islink(path)


def make_folders(folder: str | Path) -> list[Path]:
    """mkdir -p `folder`; returns the folders this call created, deepest first (for remove_empty after a failed
    start). OSError as os.mkdir raises it."""
    missing, p = [], Path(folder)
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    created = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
                created.append(d)
            except FileExistsError:
                if not d.is_dir():
                    raise
    except BaseException:
        remove_empty(created[::-1])
        raise
    return created[::-1]


def remove_empty(folders: list[Path]) -> None:
    """rmdir each of `folders` (deepest first) that is empty; stop at the first that is not."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


def human(nbytes: float) -> str:
    """A size in words: '512 bytes', '3.2 MB', '2.70 GB'."""
    if nbytes < 1e3:
        return f"{int(nbytes)} bytes"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} bytes"
