"""The rows of `vidgan check`, their table and the exit status (checks.py runs the checks, cli.py is the command).

A row is pass, FAIL, FALLBACK (Triton cannot run here: nothing ran, training takes the reference path) or NOT CHECKED (skipped: it could not
run here, e.g. CUDA graphs on a CPU). A row that was not checked is never a pass: the summary counts it apart,
and the exit status is
    0  every row ran and passed
    1  a row failed
    3  nothing failed, but rows were not checked (0 with allow_skip: the user accepts that)
"""
from __future__ import annotations

import os
import platform
import json
from dataclasses import asdict, dataclass

import torch

PATH_KERNEL, PATH_INTERPRETER, PATH_FALLBACK = "triton kernel", "triton interpreter", "no triton"
EXIT_PASS, EXIT_FAILED, EXIT_NOT_CHECKED = 0, 1, 3


@dataclass
class CheckResult:
    op: str
    shape: str
    max_abs_err: float | None
    rel_err: float | None          # max_abs_err / max |fp64 reference|
    tol: float | None              # bound on rel_err
    passed: bool                   # ran and within tol; False for a skipped row
    path: str                      # PATH_KERNEL, PATH_INTERPRETER, PATH_FALLBACK, or what a step check ran
    note: str = ""
    ref_rel_err: float | None = None   # the fp32 eager reference's own rel_err, for scale
    skipped: bool = False          # not checked here (note says why)

    @property
    def status(self) -> str:
        if self.skipped:
            return "NOT CHECKED"
        if self.path == PATH_FALLBACK:
            return "pass (fallback)" if self.passed else "FALLBACK"
        return "pass" if self.passed else "FAIL"


def not_checked(op: str, shape: str, why: str) -> CheckResult:
    return CheckResult(op, shape, None, None, None, False, "-", why, skipped=True)


def tally(results: list[CheckResult]) -> dict[str, list[str]]:
    """{'pass': ops, 'skipped': ops, 'failed': ops}."""
    return {"pass": [r.op for r in results if r.passed and not r.skipped],
            "skipped": [r.op for r in results if r.skipped],
            "failed": [r.op for r in results if not r.passed and not r.skipped]}


def exit_status(results: list[CheckResult], allow_skip: bool = False) -> int:
    counts = tally(results)
    if counts["failed"]:
        return EXIT_FAILED
    return EXIT_NOT_CHECKED if counts["skipped"] and not allow_skip else EXIT_PASS


def summary(results: list[CheckResult]) -> list[str]:
    """'12 pass, 2 skipped (not checked), 0 failed[: ops]', and a line naming what was not checked and why."""
    counts = tally(results)
    failed = counts["failed"]
    lines = [f"{len(counts['pass'])} pass, {len(counts['skipped'])} skipped (not checked), {len(failed)} failed"
             + (f": {', '.join(failed)}" if failed else "")]
    if counts["skipped"]:
        lines.append("NOT CHECKED (a skipped row is not a pass): "
                     + "; ".join(f"{r.op} ({r.note})" for r in results if r.skipped))
    return lines


def environment(device) -> dict[str, str]:
    """Device, versions and modes, for the header of the table."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name = f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"
    else:
        name = f"CPU ({platform.processor() or platform.machine()})"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {"device": name, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda or "none (CPU build of torch)",
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "unset"),
            "python": platform.python_version()}


def _num(v) -> str:
    return "-" if v is None else f"{v:.2e}"


def format_table(results: list[CheckResult], header: dict[str, str] | None = None) -> str:
    columns = ("op", "shape", "path", "max abs err", "rel err", "tol", "fp32 ref", "status", "note")
    rows = [(r.op, r.shape, r.path, _num(r.max_abs_err), _num(r.rel_err), _num(r.tol), _num(r.ref_rel_err),
             r.status, r.note) for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()   # noqa: E731
    out = [f"{k}: {v}" for k, v in (header or {}).items()]
    out += ["" if header else None, line(columns), line(["-" * w for w in widths]), *map(line, rows)]
    out += ["", *summary(results)]
    return "\n".join(o for o in out if o is not None)


def write_json(path, results: list[CheckResult], header: dict[str, str], status: int, replace: bool = False) -> None:
    """The rows, the header and the summary (with the exit status) as JSON (files.write_file: complete or absent)."""
    from .files import write_file
    rows = [dict(asdict(r), status=r.status) for r in results]
    text = json.dumps({"environment": header, "results": rows,
                       "summary": {k: len(v) for k, v in tally(results).items()} | {"exit_status": status}}, indent=1)
    write_file(path, lambda f: f.write(text.encode()), replace=replace)
