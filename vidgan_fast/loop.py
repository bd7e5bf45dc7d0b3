"""Helpers of the training loop (train.train_phase): the loss log with its NaN check, and graceful stops."""
from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path

import torch

from .errors import TrainingError


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


class LossLog:
    """Per-step losses kept on the device; `flush` syncs once, checks them for NaN/inf, appends to log.jsonl."""

    def __init__(self, path: Path, phase: str, phase_number: int, step: int):
        self.path, self.phase, self.phase_number, self.pending = path, phase, phase_number, []
        self.clock = (time.perf_counter(), step)

    def add(self, step: int, epoch: int, d_loss: torch.Tensor, g_loss: torch.Tensor) -> None:
        self.pending.append((step, epoch, d_loss, g_loss))

    def flush(self, kept: str) -> dict | None:
        """Write the pending steps; raise TrainingError at the first non-finite loss (`kept` says what is safe)."""
        if not self.pending:
            return None
        values = torch.stack([torch.stack([d, g]) for _, _, d, g in self.pending]).tolist()   # one sync
        now, step = time.perf_counter(), self.pending[-1][0]
        rate = round((step - self.clock[1]) / max(now - self.clock[0], 1e-9), 3)
        self.clock = (now, step)
        with open(self.path, "a") as log:
            for (step, epoch, _, _), (d, g) in zip(self.pending, values):
                for what, v in (("discriminator", d), ("generator", g)):
                    if not math.isfinite(v):
                        self.pending.clear()
                        raise TrainingError(f"loss is {'NaN' if math.isnan(v) else 'inf'} at step {step} "
                                            f"(phase {self.phase_number} {what} loss); {kept}")
                log.write(json.dumps({"phase": self.phase, "step": step, "epoch": epoch, "d_loss": d, "g_loss": g,
                                      "it_s": rate}) + "\n")
        last = {"step": self.pending[-1][0], "d_loss": values[-1][0], "g_loss": values[-1][1]}
        self.pending.clear()
        return last
