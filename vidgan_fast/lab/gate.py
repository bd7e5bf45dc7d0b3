"""The compile gate: every Triton kernel specialization the fast path launches, compiled for real GPU targets
on a machine without a GPU.

    launches = capture("paper", "tf32")        # one D and one G step of both phases, shape only (meta tensors)
    reports = compile_all(launches)            # PTX + cubin for every (specialization, target), ptxas -v
    print(format_table(reports))               # what `vidgan kernels` prints

Why: the Triton interpreter (how kernels run in CI) accepts code the compiler rejects (Python globals in
@triton.jit code), ignores `input_precision` and runs any tile size; only the compiler shows compile errors,
registers, spills and whether a product runs on tensor cores. The capture runs the real `step.d_step` and
`g_step` of a `--fast` state built on the meta device, so the specializations are exactly those a GPU run
launches (kernels/aot.py binds them with Triton's own binder); nothing is computed, so paper sizes cost nothing.

The gate (tests/test_compile_gate.py) fails on any compile error for TARGETS, on any specialization that could not
launch there (no CTA fits an SM: shared memory or registers, e.g. a tile whose shared memory fits sm_80's 164 KB
but not sm_86/89's 100 KB), and on any register spill at the paper configuration in the default precision (TF32) on SPILL_TARGETS. The other candidate tiles that
kernels/autotune.py may pick on a GPU (CANDIDATES of kernels/batched_conv.py and kernels/logit.py) are compiled
there too, at paper/tf32 on SPILL_TARGETS only (capture_candidates: rows labelled "paper/tf32 candidate").
sm_61 (the paper's GTX 1080 Ti) is compiled and reported, not gated: Triton does not support GPUs older than Volta, and `--fast` there trains on
the reference path with one warning.
Needs compiled-mode kernels: run in a process without TRITON_INTERPRET (the test starts one).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
import warnings
from dataclasses import asdict, dataclass

from vidgan_fast.kernels.mode import PRECISIONS

TARGETS = (75, 80, 86, 89, 90)
REPORTED_TARGETS = (61,)
SPILL_TARGETS = (80, 90)
CONFIGS = ("tiny", "paper")
DEFAULT_PRECISION = "tf32"            # TrainConfig's default (--tf32); see vidgan_fast/config.py


def capture(config: str, precision: str) -> list:
    """The kernel launches (kernels.aot.Launch) of one D and one G step of both phases of preset `config`."""
    import torch

    from vidgan_fast import step
    from vidgan_fast.config import preset
    from vidgan_fast.fast.backend import recording_launches
    cfg = preset(config, tf32=precision == "tf32", bf16=precision == "bf16", fast=True)
    with recording_launches() as launches:
        for phase in step.PHASE_NAMES:
            state = meta_fast_state(cfg, phase)
            z = torch.empty(state.phase.batch, step.Z_DIM, device="meta")
            step.d_step(state, torch.empty(state.phase.sample_shape, device="meta"), z)
            step.g_step(state, z)
    return launches


def meta_fast_state(cfg, phase: str):
    """The `--fast` TrainState of `phase` on the meta device (shapes only); call inside
    fast.backend.recording_launches() or launching_nothing(), where the fast ops accept meta tensors."""
    import torch

    from vidgan_fast import step
    from vidgan_fast.fast.engine import to_fast
    meta = torch.device("meta")
    with torch.device(meta), warnings.catch_warnings():   # construction only (the steps run faster outside the
        warnings.simplefilter("ignore")                   # device mode); no autocast on meta
        g_f = step.build_frame_generator(cfg).state_dict() if phase == "video" else None
        state = to_fast(step.build_state(cfg, phase, g_f, device=meta))
    for group in state.d_opt.param_groups:   # as engine.to_fast makes it on a GPU: the fused RMSprop's step
        group["capturable"] = True           # counters on the device, so its kernel counts them (STEP=True)
    return state


@dataclass
class Row:
    """One (specialization, target) of the static table."""
    kernel: str
    spec: str                  # constexprs and launch options
    used_by: str               # configs x precisions that launch it, e.g. "paper/tf32 tiny/tf32"
    arch: int
    error: str | None
    registers: int | None
    spill_bytes: int | None
    shared_bytes: int | None
    mma: str
    ctas_per_sm: int | None
    precision: str             # the kernel's PRECISION constexpr ("ieee", "tf32", "bf16"), or "-" without dots
    compile_s: float = 0.0     # wall seconds of the compile (PTX, cubin and ptxas -v), one worker


_PENDING: list = []             # (launch, arch) jobs, read by forked workers


def _compile_job(index: int) -> dict:
    from triton.backends.compiler import GPUTarget

    from vidgan_fast.kernels.aot import compile_launch
    launch, arch = _PENDING[index]
    start = time.perf_counter()
    r = compile_launch(launch, GPUTarget("cuda", arch, 32))
    return dict(error=r.error, registers=r.registers, spill_bytes=r.spill_bytes, shared_bytes=r.shared_bytes,
                mma=r.mma, ctas_per_sm=r.ctas_per_sm, compile_s=round(time.perf_counter() - start, 2))


def compile_all(used: dict, targets=TARGETS + REPORTED_TARGETS, jobs: int | None = None) -> list[Row]:
    """Compile every launch in `used` ({Launch: [use labels]}) for every target; rows in a stable order."""
    global _PENDING
    _PENDING = [(launch, arch) for launch in used for arch in targets]
    jobs = jobs or min(len(_PENDING), os.cpu_count() or 1)
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_compile_job, range(len(_PENDING)), chunksize=1)
    else:
        results = [_compile_job(i) for i in range(len(_PENDING))]
    rows = []
    for (launch, arch), res in zip(_PENDING, results):
        precision = launch.constant("PRECISION") if "PRECISION" in launch.kernel.arg_names else "-"
        rows.append(Row(launch.name, launch.describe(), " ".join(used[launch]), arch, precision=precision, **res))
    _PENDING = []
    return rows


def capture_candidates(base: dict, config: str = "paper", precision: str = DEFAULT_PRECISION) -> dict:
    """{Launch: [label]} of the launches that the other autotune candidates make at `config` / `precision` and
    `base` does not hold: capture i forces every tunable kernel to its i-th candidate (or its last)."""
    from vidgan_fast.kernels import batched_conv, logit
    from vidgan_fast.kernels.autotune import forcing
    tunable = {**batched_conv.CANDIDATES, **logit.CANDIDATES}
    used: dict = {}
    for i in range(1, max(len(c) for c in tunable.values())):
        with contextlib.ExitStack() as stack:
            for name, candidates in tunable.items():
                stack.enter_context(forcing(name, candidates[min(i, len(candidates) - 1)]))
            for launch in capture(config, precision):
                if launch not in base:
                    used.setdefault(launch, [f"{config}/{precision}", "candidate"])
    return used


def capture_all(configs=CONFIGS, precisions=PRECISIONS) -> dict:
    """{Launch: ["config/precision", ...]} over every config and precision, deduplicated."""
    used: dict = {}
    for config in configs:
        for precision in precisions:
            for launch in capture(config, precision):
                used.setdefault(launch, []).append(f"{config}/{precision}")
    return used


def gate_failures(rows: list[Row]) -> list[str]:
    """What the gate rejects: compile errors on TARGETS, spills on SPILL_TARGETS at paper/default precision."""
    failures = []
    for r in rows:
        where = f"{r.kernel} [{r.spec}] on sm_{r.arch}"
        if r.arch in TARGETS and r.error:
            failures.append(f"{where}: {r.error}")
        elif r.arch in TARGETS and (r.registers is None or r.spill_bytes is None):
            failures.append(f"{where}: no ptxas -v report (registers and spills unknown)")
        elif r.arch in TARGETS and r.ctas_per_sm == 0:       # compiles, but the launch would fail on that GPU
            failures.append(f"{where}: cannot launch: {r.shared_bytes} B of shared memory or {r.registers} "
                            f"registers per thread exceed the SM's")
        elif (r.arch in SPILL_TARGETS and f"paper/{DEFAULT_PRECISION}" in r.used_by.split()
              and (r.spill_bytes or 0) > 0):
            failures.append(f"{where}: {r.spill_bytes} bytes of register spills")
    return failures


def format_table(rows: list[Row], markdown: bool = False) -> str:
    """The static table: one line per specialization and target."""
    head = ("kernel", "specialization", "used by", "sm", "regs", "spill B", "smem KiB", "tensor core",
            "CTAs/SM", "status")
    body = [head]
    for r in rows:
        status = "ERROR: " + (r.error or "")[:120] if r.error else "ok"
        body.append((r.kernel, r.spec, r.used_by, str(r.arch), _n(r.registers), _n(r.spill_bytes),
                     "-" if r.shared_bytes is None else f"{r.shared_bytes / 1024:.0f}", r.mma, _n(r.ctas_per_sm),
                     status))
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in body]
        lines.insert(1, "|" + "|".join("---" for _ in head) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in body) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body)


def _n(v) -> str:
    return "-" if v is None else str(v)


def rows_to_json(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


def run(configs=CONFIGS, precisions=PRECISIONS, targets=TARGETS + REPORTED_TARGETS, jobs=None) -> list[Row]:
    """Capture and compile: the rows of the static table (with the autotune candidates where the gate checks
    spills: paper in the default precision, SPILL_TARGETS)."""
    used = capture_all(configs, precisions)
    rows = compile_all(used, targets, jobs)
    spill_targets = tuple(t for t in targets if t in SPILL_TARGETS)
    if "paper" in configs and DEFAULT_PRECISION in precisions and spill_targets:
        rows += compile_all(capture_candidates(used), spill_targets, jobs)
    return rows


def main(argv=None) -> int:
    """python -m vidgan_fast.fast.kernel_gate [--json FILE] [--markdown]: the table; exit 1 if the gate fails."""
    import argparse
    import json
    p = argparse.ArgumentParser(prog="vidgan kernels", description="Compile every Triton kernel specialization the fast path launches for real GPU targets; print registers, spills, shared memory, tensor-core instructions and CTAs per SM; exit 1 if the compile gate fails.")
    p.add_argument("--config", choices=CONFIGS, action="append", help="preset(s) to capture (default: all)")
    p.add_argument("--precision", choices=PRECISIONS, action="append", help="precision(s) (default: all)")
    p.add_argument("--sm", type=int, action="append", help="target(s), e.g. 80 (default: 75 80 86 89 90 and 61)")
    p.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    a = p.parse_args(argv)
    rows = run(tuple(a.config or CONFIGS), tuple(a.precision or PRECISIONS),
               tuple(a.sm or TARGETS + REPORTED_TARGETS), a.jobs)
    print(format_table(rows, markdown=a.markdown))
    failures = gate_failures(rows)
    print(f"\n{len(rows)} compiles, {len({(r.kernel, r.spec) for r in rows})} specializations; "
          + (f"{len(failures)} gate failures:\n" + "\n".join(failures) if failures else "the gate passes"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows_to_json(rows), "failures": failures}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
