"""Stops: SIGINT/SIGTERM at every point of a command end it with 128 + the signal's number (130, 143) and one line
that says what was saved.

- `immediate_stops()` (the CLI, around every command): either signal raises `Stopped` wherever the command is,
  start-up included; the code it unwinds through cleans up (a write removes its temporary file, a claimed run
  folder its `.lock`), and the CLI reports `interrupted by SIGINT; <what was saved>`.
- `stop_requests()` (train.train_phase, around the loop): the first signal becomes a request to stop after the
  current step (train_phase saves and raises TrainingInterrupted; under torchrun distributed.stop_requests makes
  every rank agree); a second one more than `repeat_window_s` later raises `Stopped` at once.
- Once a stop is under way (Stopped raised, or train_phase saved after a request: `stopping()`), further signals
  are ignored, so that the cleanup and the one line complete (SIGKILL still ends the process).
- `saved(note)`: what a stop now leaves behind, for that line ("runs/x/frames.ckpt (step 400) is saved; continue
  with --resume"); "nothing was saved" until a command says otherwise.

Torch-free (the CLI installs the handlers before torch is imported).
"""
from __future__ import annotations

import contextlib
import signal
import time

NOTHING = "nothing was saved"
_note = [NOTHING]
_stopping = [False]        # a stop is under way: later signals are ignored, so its cleanup and its line complete


class Stopped(KeyboardInterrupt):
    """A stopping signal that ended the command at once (a KeyboardInterrupt, so `except Exception` lets it
    through); `signum` says which (the CLI exits 128 + signum)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def stopping() -> None:
    """A stop is under way (a signal ended the command, or train_phase saved after one): ignore further signals."""
    _stopping[0] = True


def saved(note: str | None = None) -> str:
    """Set (if given) and return what a stop leaves behind."""
    if note is not None:
        _note[0] = note
    return _note[0]


def _install(handler) -> dict:
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:        # not the main thread: the process's handlers stay as they are
        pass
    return previous


def _restore(previous: dict) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


@contextlib.contextmanager
def immediate_stops():
    """SIGINT/SIGTERM raise Stopped inside the block (see the module docstring); the note starts afresh."""
    def handler(signum, frame):
        if not _stopping[0]:
            stopping()
            raise Stopped(signum)

    _note[0], _stopping[0] = NOTHING, False
    previous = _install(handler)
    try:
        yield
    finally:
        _restore(previous)


@contextlib.contextmanager
def stop_requests(repeat_window_s: float = 0.0):
    """Turn SIGINT/SIGTERM into a request to stop after the current step; a second signal more than
    `repeat_window_s` after the first stops at once (Stopped)."""
    caught: list[int] = []
    first: list[float] = []

    def handler(signum, frame):
        if _stopping[0]:
            return
        if caught and time.monotonic() - first[0] > repeat_window_s:
            stopping()
            raise Stopped(signum)
        if not caught:
            caught.append(signum)
            first.append(time.monotonic())

    _stopping[0] = False
    previous = _install(handler)
    try:
        yield caught
    finally:
        _restore(previous)
