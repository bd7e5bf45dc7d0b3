"""The run's log (train.train_phase writes it): the losses with their NaN check, the run id, and the cut that keeps
each step once across --resume.

log.jsonl holds one JSON object every --log-every N steps (and one at every checkpoint, so that a resumed run
continues from a line's end): {"run", "phase", "step", "epoch", "steps", "d_loss", "g_loss", "it_s"}. "step" is the
last step the line covers and "steps" how many it covers (N, fewer where a checkpoint or the end of the phase cut
the interval); "d_loss" and "g_loss" are the means of the discriminators' and the generator's loss over those
steps (every step's loss is checked for NaN/inf); "it_s" is steps per second over that line's own interval (from
the previous line, or from the start of the phase). "run" is the run's id (made when a phase starts fresh, saved in
its checkpoint, the same after --resume; phase 2 of `train all` keeps phase 1's). Before a phase appends, cut_log
drops that phase's lines past the step it starts from (the checkpoint's step on --resume, 0 for a fresh start),
so after an interruption (kill -9 included) and --resume every step is counted in exactly one line.
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
from .files import open_append, write_error, write_file


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
    text = "".join(line if line.endswith("\n") else line + "\n" for line in kept).encode()
    write_file(path, lambda f: f.write(text), replace=True, kept="the log is unchanged", error=TrainingError)


class LossLog:
    """Losses kept on the device; `flush` syncs once, checks every step's losses for NaN/inf, and appends one
    line for the steps since the previous flush (their mean losses and rate) to log.jsonl."""

    def __init__(self, path: Path, phase: str, phase_number: int, step: int, run: str = ""):
        self.path, self.phase, self.phase_number, self.run, self.pending = path, phase, phase_number, run, []
        self.clock = (time.perf_counter(), step)
        if os.path.lexists(self.path):    # an unwritable log is found before the first step, not after (a missing
            try:                          # one is made by the first line: a start that fails leaves no empty log)
                os.close(open_append(self.path))
            except OSError as e:
                raise TrainingError(f"cannot write the log {self.path} ({os_reason(e)}); make it writable or "
                                    f"choose another --out") from None

    def add(self, step: int, epoch: int, d_loss: torch.Tensor, g_loss: torch.Tensor) -> None:
        self.pending.append((step, epoch, d_loss, g_loss))

    def flush(self, kept: str) -> dict | None:
        """Write one line for the pending steps; raise TrainingError at the first non-finite loss (`kept` says what
        is safe). Returns the last step's losses (what the checkpoint records)."""
        if not self.pending:
            return None
        values = torch.stack([torch.stack([d, g]) for _, _, d, g in self.pending]).tolist()   # one sync
        pending, self.pending = self.pending, []
        for (step, _, _, _), (d, g) in zip(pending, values):
            for what, v in (("discriminator", d), ("generator", g)):
                if not math.isfinite(v):
                    raise TrainingError(f"loss is {'NaN' if math.isnan(v) else 'inf'} at step {step} "
                                        f"(phase {self.phase_number} {what} loss); {kept}")
        now, (step, epoch) = time.perf_counter(), pending[-1][:2]
        steps = step - self.clock[1]
        rate = round(steps / max(now - self.clock[0], 1e-9), 3)
        self.clock = (now, step)
        line = {"run": self.run, "phase": self.phase, "step": step, "epoch": epoch, "steps": len(pending),
                "d_loss": math.fsum(v[0] for v in values) / len(values),
                "g_loss": math.fsum(v[1] for v in values) / len(values), "it_s": rate}
        data = (json.dumps(line) + "\n").encode()
        try:
            fd = open_append(self.path)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(28, "short write", str(self.path))
            finally:
                os.close(fd)
        except OSError as e:
            raise write_error(e, self.path, kept, TrainingError) from None
        return {"step": step, "d_loss": values[-1][0], "g_loss": values[-1][1]}
