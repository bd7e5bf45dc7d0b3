"""The run's log (train.train_phase writes it): per-step losses with their NaN check, the run id, and the cut
that keeps each step once across --resume.

log.jsonl holds one JSON object per step: {"run", "phase", "step", "epoch", "d_loss", "g_loss", "it_s"}. "run" is
the run's id (made when a phase starts fresh, saved in its checkpoint, the same after --resume; phase 2 of
`train all` keeps phase 1's). Before a phase appends, cut_log drops that phase's lines past the step it starts
from (the checkpoint's step on --resume, 0 for a fresh start), so after an interruption (kill -9 included) and
--resume the log holds every step once, as an uninterrupted run's would.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import secrets
import time
from pathlib import Path

import torch

from .errors import TrainingError, os_reason


def new_run_id() -> str:
    """A run id: start time and 4 random hex digits, e.g. '20250101-120000-3fa2'."""
    return f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _kept(line: str, phase: str, step: int) -> bool:
    try:
        record = json.loads(line)
        return record["phase"] != phase or record["step"] <= step
    except (ValueError, KeyError, TypeError):
        return False          # a torn last line (the process was killed while writing) goes too


def cut_log(path: Path, phase: str, step: int) -> None:
    """Drop the lines of `phase` with a step above `step` (and torn lines) from the log at `path`, atomically;
    the other phase's lines stay as they are. Nothing to do if no line goes."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _kept(line, phase, step)]
    if len(kept) == len(lines) and all(line.endswith("\n") for line in lines):
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text("".join(line if line.endswith("\n") else line + "\n" for line in kept))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LossLog:
    """Per-step losses kept on the device; `flush` syncs once, checks them for NaN/inf, appends to log.jsonl."""

    def __init__(self, path: Path, phase: str, phase_number: int, step: int, run: str = ""):
        self.path, self.phase, self.phase_number, self.run, self.pending = path, phase, phase_number, run, []
        self.clock = (time.perf_counter(), step)
        try:                          # an unwritable log is found before the first step, not after
            open(self.path, "a").close()
        except OSError as e:
            raise TrainingError(f"cannot write the log {self.path} ({os_reason(e)}); make it writable or choose "
                                f"another --out") from None

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
        try:
            with open(self.path, "a") as log:
                for (step, epoch, _, _), (d, g) in zip(self.pending, values):
                    for what, v in (("discriminator", d), ("generator", g)):
                        if not math.isfinite(v):
                            self.pending.clear()
                            raise TrainingError(f"loss is {'NaN' if math.isnan(v) else 'inf'} at step {step} "
                                                f"(phase {self.phase_number} {what} loss); {kept}")
                    log.write(json.dumps({"run": self.run, "phase": self.phase, "step": step, "epoch": epoch,
                                          "d_loss": d, "g_loss": g, "it_s": rate}) + "\n")
        except OSError as e:
            self.pending.clear()
            raise TrainingError(f"cannot write the log {self.path} ({os_reason(e)}); {kept}") from None
        last = {"step": self.pending[-1][0], "d_loss": values[-1][0], "g_loss": values[-1][1]}
        self.pending.clear()
        return last
