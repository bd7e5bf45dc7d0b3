"""The project's errors. Each one is reported by the CLI as a single `error: ...` line, never a traceback.

Torch-free (the CLI imports it before any command runs)."""
from __future__ import annotations

import copy
import errno
import re
import signal


class VidganError(Exception):
    """Base class: a problem the user can act on (bad option, bad file, failed run). The CLI exits `exit_code`."""
    exit_code = 1

    def prefixed(self, prefix: str) -> "VidganError":
        """The same error (same class and attributes) with `prefix` in front of its message."""
        if not prefix:
            return self
        other = copy.copy(self)
        other.args = (prefix + str(self),)
        return other


class ConfigError(VidganError):
    """An impossible option value, e.g. a negative batch size or an unknown loss combination."""


class OptionError(ConfigError):
    """A command line that is wrong by itself: an option value out of its range (a usage error: exit 2)."""
    exit_code = 2


class CheckpointError(VidganError):
    """A checkpoint that is missing, truncated, foreign, of the wrong phase, or of the wrong shapes."""


class TrainingError(VidganError):
    """A run that cannot go on, e.g. a NaN loss, or a run folder that already holds a checkpoint."""


class RunFolderError(TrainingError):
    """A run folder that cannot be used: held by another run, not writable, or a file."""


class TrainingInterrupted(VidganError):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was saved; `--resume` continues.
    `signum` is the signal (the CLI exits 128 + signum: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


REASONS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
           errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.ENOTDIR: "a file is in the way of a folder in that path", errno.EISDIR: "it is a folder",
           errno.ENOENT: "it does not exist", errno.EEXIST: "it already exists"}
TEMP_NAME = re.compile(r"^\.(?P<name>.+?)(\.\d+)?\.[^.]+\.tmp$")   # .frames.ckpt.k2j3.tmp, .balls.npy.41.9f3a.tmp


def os_reason(e: OSError) -> str:
    """What went wrong, in words (no errno number): 'permission denied', 'no space left on the device', ..."""
    if e.errno in REASONS:
        return REASONS[e.errno]
    return (e.strerror or str(e) or type(e).__name__).lower()


def os_error_message(e: OSError) -> str:
    """One line for an OSError that no command translated: the reason and the file (an internal temporary
    file is named by the file it stands for), and what to do."""
    name = e.filename
    if name is not None:
        from pathlib import Path
        path = Path(str(name))
        m = TEMP_NAME.match(path.name)
        name = str(path.with_name(m["name"])) if m else str(path)
    where = f"cannot write or read {name}: " if name is not None else ""
    return f"{where}{os_reason(e)}; check the path, its permissions and the free space"
