"""Graceful stops: SIGINT/SIGTERM become a request to stop after the current step (train.train_phase saves and
raises TrainingInterrupted; under torchrun distributed.stop_requests makes every rank agree)."""
from __future__ import annotations

import contextlib
import signal
import time


@contextlib.contextmanager
def stop_requests(repeat_window_s: float = 0.0):
    """Turn SIGINT/SIGTERM into a request to stop after the current step; a second signal more than
    `repeat_window_s` after the first stops at once (KeyboardInterrupt)."""
    caught: list[int] = []
    first: list[float] = []

    def handler(signum, frame):
        if caught and time.monotonic() - first[0] > repeat_window_s:
            raise KeyboardInterrupt
        if not caught:
            caught.append(signum)
            first.append(time.monotonic())

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:        # not the main thread: no handlers, no graceful stop
        pass
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
