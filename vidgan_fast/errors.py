"""The project's errors. Each one is reported by the CLI as a single `error: ...` line, never a traceback."""
from __future__ import annotations


class VidganError(Exception):
    """Base class: a problem the user can act on (bad option, bad file, failed run)."""


class ConfigError(VidganError):
    """An impossible option value, e.g. a negative batch size or an unknown loss combination."""


class CheckpointError(VidganError):
    """A checkpoint that is missing, truncated, foreign, of the wrong phase, or of the wrong shapes."""


class TrainingError(VidganError):
    """A run that cannot go on, e.g. a NaN loss, or a run folder that already holds a checkpoint."""


class TrainingInterrupted(VidganError):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was saved; `--resume` continues."""
