"""The compile gate: every Triton kernel specialization the fast path launches, compiled for real GPU targets
on a machine without a GPU.

    launches = capture("paper", "tf32", "hopper")   # one D and one G step of both phases, shape only (meta tensors)
    rows = compile_all(launches, (90,))             # PTX + cubin for every (specialization, target), ptxas -v
    print(format_table(rows)); gate_failures(rows)  # what `vidgan kernels` prints, and what fails the gate

Why: the Triton interpreter (how kernels run in CI) accepts code the compiler rejects (Python globals in
@triton.jit code), ignores `input_precision` and runs any tile size; only the compiler shows compile errors,
registers, spills and whether a product runs on tensor cores. The capture runs the real `step.d_step` and
`g_step` of a `--fast` state built on the meta device, so the specializations are exactly those a GPU run
launches (lab/aot.py binds them with Triton's own binder); nothing is computed, so paper sizes cost nothing. The
tiles depend on the GPU family (kernels/tiles.py: Hopper sm_90, Ampere/Ada sm_80-89), so each target is compiled
with what a GPU of its family launches.

The gate (tests/test_compile_gate.py, and `vidgan kernels`' exit status) fails on any compile error for TARGETS, on
any specialization that could not launch there (no CTA fits an SM: shared memory or registers, e.g. a tile whose
shared memory fits sm_80's 164 KB but not sm_86/89's 100 KB), on any register spill at the paper configuration in
the tensor-core precisions (SPILL_PRECISIONS: TF32, the default, and bf16) on SPILL_TARGETS, and on any product
whose instruction does not match its precision (exact fp32: no tensor core; tf32/bf16: tensor-core mma/wgmma of
that type). The other candidate tiles that
kernels/autotune.py may pick on a GPU (kernels/tiles.py) are compiled there too, at paper/tf32 on SPILL_TARGETS
(capture_candidates: rows labelled "candidate"). GPUs older than sm_80 (the paper's GTX 1080 Ti, sm_61, among
them) are not targets: `--fast` there trains on the reference path with one warning (fast/backend.py).
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

TARGETS = (80, 86, 89, 90)
SPILL_TARGETS = (80, 90)
FAMILY_ARCH = {"hopper": 90, "ampere": 80}    # the arch whose tiles each family's targets are compiled with
ASSEMBLED_FROM = {86: 80, 89: 80}             # Triton lowers these as sm_80: its PTX, assembled by ptxas for them
CONFIGS = ("tiny", "paper")
DEFAULT_PRECISION = "tf32"            # TrainConfig's default (--tf32); see vidgan_fast/config.py
# Spills fail the gate at paper in these (exact fp32, --no-tf32, runs smaller FMA tiles, kernels/tiles.py; Triton
# 3.6 spills 16 bytes in three of them, which the gate lists but does not fail).
SPILL_PRECISIONS = (DEFAULT_PRECISION, "bf16")
# The tiny configuration (widths of 8-64 channels: partial blocks, the packed reductions) in the default precision
# only: its other precisions launch the paper's kernels on the same code paths.
CONFIG_PRECISIONS = {"tiny": (DEFAULT_PRECISION,)}


def targets_by_family(targets) -> dict:
    """{family: [targets]} (kernels/tiles.family)."""
    from vidgan_fast.kernels.tiles import family
    out: dict = {}
    for arch in targets:
        out.setdefault(family(arch), []).append(arch)
    return out


def capture(config: str, precision: str, fam: str = "hopper") -> list:
    """The kernel launches (lab.aot.Launch) of one D and one G step of both phases of preset `config`, as a GPU
    of the tile family `fam` launches them."""
    import torch

    from vidgan_fast import step
    from vidgan_fast.config import preset
    from vidgan_fast.kernels.common import forced_target
    from vidgan_fast.lab.aot import record_launches
    cfg = preset(config, tf32=precision == "tf32", bf16=precision == "bf16", fast=True)
    with forced_target(arch=FAMILY_ARCH[fam]), record_launches() as launches:
        for phase in step.PHASE_NAMES:
            state = meta_fast_state(cfg, phase)
            z = torch.empty(state.phase.batch, step.Z_DIM, device="meta")
            step.d_step(state, torch.empty(state.phase.sample_shape, device="meta"), z)
            step.g_step(state, z)
    return launches


def meta_fast_state(cfg, phase: str):
    """The `--fast` TrainState of `phase` on the meta device (shapes only), as a GPU would build it: its optimizers
    are capturable (step counters on the device, so the fused RMSprop counts them, STEP=True). Use it inside
    lab/aot.record_calls() or launching_nothing() (nothing may launch on meta), and inside
    kernels/common.forced_target(arch=...) to take a given GPU's tiles (an H100's otherwise)."""
    import torch

    from vidgan_fast import step
    from vidgan_fast.fast.engine import convert
    meta = torch.device("meta")
    with torch.device(meta), warnings.catch_warnings():   # construction only (the steps run faster outside the
        warnings.simplefilter("ignore")                   # device mode); no autocast on meta
        g_f = step.build_frame_generator(cfg).state_dict() if phase == "video" else None
        state = convert(step.build_state(cfg, phase, g_f, device=meta), capturable=False)
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


_PENDING: list = []             # (launch, [archs]) jobs, read by forked workers


def _compile_job(index: int) -> list[dict]:
    """Compile one launch for its archs: the first through Triton, those in ASSEMBLED_FROM by ptxas alone."""
    from triton.backends.compiler import GPUTarget

    from vidgan_fast.lab.aot import assemble, compile_launch
    launch, archs = _PENDING[index]
    out, base = [], {}
    for arch in archs:
        start = time.perf_counter()
        source = ASSEMBLED_FROM.get(arch)
        if source in base:
            r = assemble(base[source], arch)
        else:
            r = base[arch] = compile_launch(launch, GPUTarget("cuda", arch, 32))
        out.append(dict(error=r.error, registers=r.registers, spill_bytes=r.spill_bytes, shared_bytes=r.shared_bytes,
                        mma=r.mma, ctas_per_sm=r.ctas_per_sm, compile_s=round(time.perf_counter() - start, 2)))
    return out


def compile_all(used: dict, targets=TARGETS, jobs: int | None = None) -> list[Row]:
    """Compile every launch in `used` ({Launch: [use labels]}) for every target; rows in a stable order."""
    global _PENDING
    order = sorted(targets, key=lambda a: a in ASSEMBLED_FROM)      # a PTX's source arch before its assemblies
    _PENDING = [(launch, order) for launch in used]
    jobs = jobs or min(len(_PENDING), os.cpu_count() or 1)
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_compile_job, range(len(_PENDING)), chunksize=1)
    else:
        results = [_compile_job(i) for i in range(len(_PENDING))]
    rows = []
    for (launch, archs), per_arch in zip(_PENDING, results):
        precision = launch.constant("PRECISION") if "PRECISION" in launch.kernel.arg_names else "-"
        for arch, res in sorted(zip(archs, per_arch)):
            rows.append(Row(launch.name, launch.describe(), " ".join(used[launch]), arch, precision=precision, **res))
    _PENDING = []
    return rows


def capture_candidates(base: dict, fam: str, config: str = "paper", precision: str = DEFAULT_PRECISION) -> dict:
    """{Launch: [label]} of the launches that the other autotune candidates (kernels/tiles.py) make at `config` /
    `precision` on family `fam` and `base` does not hold: capture i forces every tunable kernel to its i-th candidate
    (or its last)."""
    from vidgan_fast.kernels.autotune import forcing
    from vidgan_fast.kernels.tiles import conv_tiles
    tunable = {name: conv_tiles(name, fam, precision) for name in ("forward", "dgrad", "wgrad")}
    used: dict = {}
    for i in range(1, max(len(c) for c in tunable.values())):
        with contextlib.ExitStack() as stack:
            for name, candidates in tunable.items():
                stack.enter_context(forcing(name, candidates[min(i, len(candidates) - 1)]))
            for launch in capture(config, precision, fam):
                if launch not in base:
                    used.setdefault(launch, [f"{config}/{precision}", "candidate"])
    return used


def capture_all(configs=CONFIGS, precisions=PRECISIONS, fam: str = "hopper") -> dict:
    """{Launch: ["config/precision", ...]} over every config and precision on family `fam`, deduplicated."""
    used: dict = {}
    for config in configs:
        for precision in (p for p in precisions if p in CONFIG_PRECISIONS.get(config, precisions)):
            for launch in capture(config, precision, fam):
                used.setdefault(launch, []).append(f"{config}/{precision}")
    return used


def wrong_instruction(r: "Row") -> bool:
    """Whether a row's products run on the wrong instruction for their precision: exact fp32 ('ieee') on a tensor
    core, or tf32 / bf16 not on a tensor-core instruction of that type."""
    if r.precision == "ieee":
        return r.mma != "none"
    return r.precision in ("tf32", "bf16") and not r.mma.endswith(r.precision)


def gate_failures(rows: list[Row]) -> list[str]:
    """What the gate rejects: compile errors on TARGETS, spills on SPILL_TARGETS at paper in SPILL_PRECISIONS."""
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
        elif (r.arch in SPILL_TARGETS and any(f"paper/{p}" in r.used_by.split() for p in SPILL_PRECISIONS)
              and (r.spill_bytes or 0) > 0):
            failures.append(f"{where}: {r.spill_bytes} bytes of register spills")
        elif r.arch in TARGETS and r.error is None and wrong_instruction(r):
            failures.append(f"{where}: {r.precision} products run on {r.mma}")
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


def run(configs=CONFIGS, precisions=PRECISIONS, targets=TARGETS, jobs=None) -> list[Row]:
    """Capture and compile, per tile family: the rows of the static table (with the autotune candidates where
    the gate checks spills: paper in the default precision, SPILL_TARGETS)."""
    rows = []
    for fam, archs in targets_by_family(targets).items():
        used = capture_all(configs, precisions, fam)
        rows += compile_all(used, tuple(archs), jobs)
        spill_targets = tuple(t for t in archs if t in SPILL_TARGETS)
        if "paper" in configs and DEFAULT_PRECISION in precisions and spill_targets:
            rows += compile_all(capture_candidates(used, fam), spill_targets, jobs)
    return rows


def main(argv=None) -> int:
    """python -m vidgan_fast.lab.gate [--json FILE] [--markdown]: the table; exit 1 if the gate fails."""
    import argparse
    import json
    p = argparse.ArgumentParser(prog="vidgan kernels", description="Compile every Triton kernel specialization the fast path launches for real GPU targets; print registers, spills, shared memory, tensor-core instructions and CTAs per SM; exit 1 if the compile gate fails.")
    p.add_argument("--config", choices=CONFIGS, action="append", help="preset(s) to capture (default: all)")
    p.add_argument("--precision", choices=PRECISIONS, action="append", help="precision(s) (default: all)")
    p.add_argument("--sm", type=int, action="append", choices=TARGETS,
                   help="target(s) (default: all of 80 86 89 90)")
    p.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    p.add_argument("--json", help="write the rows here (a new file; an existing one needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    a = p.parse_args(argv)
    if a.json and os.path.lexists(a.json) and not a.overwrite:
        p.error(f"--json {a.json} already exists; pass --overwrite to replace it, or name another file")
    rows = run(tuple(a.config or CONFIGS), tuple(a.precision or PRECISIONS), tuple(a.sm or TARGETS), a.jobs)
    print(format_table(rows, markdown=a.markdown))
    failures = gate_failures(rows)
    print(f"\n{len(rows)} compiles, {len({(r.kernel, r.spec) for r in rows})} specializations; "
          + (f"{len(failures)} gate failures:\n" + "\n".join(failures) if failures else "the gate passes"))
    if a.json:
        from vidgan_fast.files import write_file
        text = json.dumps({"rows": rows_to_json(rows), "failures": failures}, indent=1).encode()
        write_file(a.json, lambda f: f.write(text), replace=a.overwrite)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
