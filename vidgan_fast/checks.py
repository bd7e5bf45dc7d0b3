"""The checks of `vidgan check`: every fast op against its reference twin, on this machine, with these
torch/Triton versions (the table and exit status: check_report.py; the command: cli.py).

    results = run_checks(device="cuda")            # list[CheckResult], one row per op and direction
    print(format_table(results, check_header("cuda", paper_size=False)))
    first_step_check("cuda", phase=1)              # what `vidgan train --fast` runs first; raises TrainingError

Each check draws fresh random inputs and weights (from `seed`), runs the fast op, the fp32 reference and an fp64
run of the reference, and reports max |fast - fp64| and that error relative to max |fp64|. The tolerance follows
from the dtype: fp32 rounding grows like sqrt(n) over an n-term sum, so the bound is 2e-5 up to 1024-term sums
and 2e-5 * sqrt(n / 1024) beyond, n the longest reduction in the op (forward or backward): vidgan_fast.tolerance.
The fast ops run with exact fp32 products, and PyTorch's own TF32 switches are off during the check, so the fp32
reference is fp32: the check verifies what every precision shares (indexing, masks, fused epilogues) on this
device. The tf32/bf16 variants differ only in the product instruction; against fp64 their gradients are not
comparable by a bound (a rounded forward flips LeakyReLU/ReLU masks near 0, an O(1) change per flipped element),
so they are tested against an exact emulation of bf16 operands (tests/test_bank.py, test_projection.py) and
their tensor-core instructions are read from the compiled PTX (the compile gate, `vidgan kernels`).

Each row says which path ran: 'triton kernel' (CUDA GPU) or 'triton interpreter' (CPU, TRITON_INTERPRET=1).
Where Triton cannot run, nothing runs: the row is FALLBACK (training would take the reference path there) and
fails, unless allow_fallback; it never counts as a pass of a kernel.

STEP_CHECKS holds the captured-step rows (CUDA graph replays vs eager steps, per phase, fast/graph_check.py): a
dict name -> function (device, paper_size, seed, tf32=False) -> CheckResult. On a CPU they cannot run: NOT
CHECKED, which is not a pass (check_report.py: the summary counts such rows apart, and the command exits 3
unless --allow-skip).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from vidgan_fast import models
from vidgan_fast.check_report import (PATH_FALLBACK, PATH_INTERPRETER, PATH_KERNEL, CheckResult, environment,
                                      not_checked)
from vidgan_fast.errors import ConfigError, TrainingError
from vidgan_fast.fast.backend import triton_unavailable_reason
from vidgan_fast.kernels.mode import interpreting
from vidgan_fast.tolerance import tolerance

KERNEL_MODULES = ("vidgan_fast.kernels.projection", "vidgan_fast.kernels.conv", "vidgan_fast.kernels.logit",
                  "vidgan_fast.kernels.frame_generator", "vidgan_fast.kernels.rmsprop")


@dataclass(frozen=True)
class Sizes:
    k_frame: int
    k_video: int
    batch_frame: int
    batch_video: int
    frames_per_video: int          # for the video projection row only (a per-frame op); the bank needs 30
    frame_widths: tuple
    video_widths: tuple
    generator_widths: tuple
    codes: int


SMALL = Sizes(3, 3, 3, 3, 7, (4, 8, 16), (4, 8, 16), (16, 16, 16, 16), 3)
PAPER = Sizes(48, 16, 64, 8, 30, (256, 512, 1024), (256, 512, 768), (1024, 1024, 512, 256), 240)


# ---- comparison ----

def _errors(fast: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor):
    """(max abs err, rel err, fp32 reference rel err) of fast against ref64; shape mismatch raises."""
    if tuple(fast.shape) != tuple(ref64.shape):
        raise ValueError(f"shape {tuple(fast.shape)}, expected {tuple(ref64.shape)}")
    scale = ref64.abs().max().item() or 1.0
    err = (fast.detach().double() - ref64).abs().max().item()
    ref_err = (ref32.detach().double() - ref64).abs().max().item()
    return err, err / scale, ref_err / scale


def _row(op, shape, tensors, tol, path, allow_fallback, note=""):
    """One row from (name, fast, ref32, ref64) tuples; the worst tensor (by rel err) is reported and named."""
    worst = None
    for name, fast, ref32, ref64 in tensors:
        err, rel, ref_rel = _errors(fast, ref32, ref64)
        key = math.inf if math.isnan(rel) else rel   # a NaN is the worst
        if worst is None or key > worst[0]:
            worst = (key, name, err, rel, ref_rel)
    _, name, err, rel, ref_rel = worst
    if len(tensors) > 1:
        note = f"worst: {name}" + (f"; {note}" if note else "")
    passed = bool(rel <= tol) and (path != PATH_FALLBACK or allow_fallback)
    return CheckResult(op, shape, err, rel, tol, passed, path, note, ref_rel)


class _Ctx:
    """What every check gets: device, sizes, seeded RNG, the path to take and the tolerance policy."""

    def __init__(self, device, sizes, seed, allow_fallback):
        self.device, self.sizes, self.seed = device, sizes, seed
        self.allow_fallback = allow_fallback
        self.reason = triton_unavailable_reason(device)
        self.path = PATH_FALLBACK if self.reason else PATH_KERNEL if device.type == "cuda" else PATH_INTERPRETER
        self.note = "" if self.reason is None else f"Triton cannot run: {self.reason}"
        self.gen = torch.Generator().manual_seed(seed)

    def randn(self, *shape):
        return torch.randn(shape, generator=self.gen).to(self.device)

    def uniform(self, *shape):
        return (torch.rand(shape, generator=self.gen) * 2 - 1).to(self.device)

    def tol(self, reduction: int) -> float:
        return tolerance("fp32", reduction)

    def row(self, op, shape, tensors, reduction):
        return _row(op, shape, tensors, self.tol(reduction), self.path, self.allow_fallback, self.note)


def randomize_weights(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Weights N(0, 1/fan_in), biases N(0, 0.1^2): activations stay O(1), so relative errors mean something
    (in place; returns the module). Also what tests/test_bank.py draws its discriminators with."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module


def _run(model, x, grad_out):
    """(output, input gradient) of model at x for the upstream gradient grad_out."""
    x = x.detach().clone().requires_grad_()
    out = model(x)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), x.grad


# ---- the op checks: each returns its rows ----

def _check_projection(ctx: _Ctx, kind: str) -> list[CheckResult]:
    from vidgan_fast.fast.projection import project_frames, project_videos
    s = ctx.sizes
    if kind == "frames":
        k, b, make, project = s.k_frame, s.batch_frame, models.FrameDiscriminator, project_frames
        x, shape = ctx.uniform(b, 1, 30, 30), f"K={k} B={b} 30x30 -> 15x15"
        stride = models.FRAME_PROJ["stride"]
    else:
        k, b, t, make, project = s.k_video, s.batch_video, s.frames_per_video, models.VideoDiscriminator, project_videos
        x, shape = ctx.uniform(b, 1, t, 30, 30), f"K={k} B={b} T={t} 30x30 -> 9x9"
        stride = models.VIDEO_PROJ["stride"]
    with torch.random.fork_rng(devices=[]):
        refs = [make(seed=ctx.seed + i, widths=(1, 1, 1)).to(ctx.device) for i in range(k)]
    filters = torch.stack([d.projection[0, 0] for d in refs])
    grad = ctx.randn(k, *refs[0].project(x).shape)
    out, dx = _run(lambda v: project(v, filters).unsqueeze(2), x, grad)     # the references' channel axis
    out32, dx32 = _run(lambda v: torch.stack([d.project(v) for d in refs]), x, grad)
    refs64 = [copy.deepcopy(d).double() for d in refs]
    out64, dx64 = _run(lambda v: torch.stack([d.project(v) for d in refs64]), x.double(), grad)
    name = f"project_{kind}"
    return [ctx.row(f"{name} forward", shape, [("out", out, out32, out64)], 64),
            ctx.row(f"{name} input grad", shape, [("dx", dx, dx32, dx64)], k * math.ceil(8 / stride) ** 2)]


def _check_bank(ctx: _Ctx, kind: str) -> list[CheckResult]:
    from vidgan_fast.fast.bank import FrameDiscriminatorBank, VideoDiscriminatorBank
    s = ctx.sizes
    if kind == "frame":
        cls, k, b, widths = FrameDiscriminatorBank, s.k_frame, s.batch_frame, s.frame_widths
        make, x, spatial = models.frame_discriminators, ctx.uniform(b, 1, 30, 30), "30x30"
        reduction = max(16 * widths[2], 16 * widths[1], 64 * b, 16 * k)
    else:
        cls, k, b, widths = VideoDiscriminatorBank, s.k_video, s.batch_video, s.video_widths
        make, x, spatial = models.video_discriminators, ctx.uniform(b, 1, 30, 30, 30), "T=30 30x30"
        reduction = max(64 * widths[2], 64 * widths[1], 240 * b, 9 * k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        refs = randomize_weights(make(k, widths, seed=ctx.seed), ctx.gen).to(ctx.device)
    bank = cls.from_reference(list(refs))
    refs64 = copy.deepcopy(refs).double()
    grad = ctx.randn(k, b)
    logits, dx = _run(bank, x, grad)
    logits32, dx32 = _run(refs, x, grad)
    logits64, dx64 = _run(refs64, x.double(), grad)
    weight_grads = []
    for bank_name, suffix in cls.stacked_parameter_names():
        stacked = [torch.stack([d.get_parameter(suffix).grad for d in m]) for m in (refs, refs64)]
        weight_grads.append((suffix, bank.get_parameter(bank_name).grad, *stacked))
    shape, op = f"K={k} B={b} {spatial} w={widths}", cls.__name__
    return [ctx.row(f"{op} forward", shape, [("logits", logits, logits32, logits64)], reduction),
            ctx.row(f"{op} input grad", shape, [("dx", dx, dx32, dx64)], reduction),
            ctx.row(f"{op} weight grads", shape, weight_grads, reduction),
            ctx.row(f"{op} weight steps", shape, _weight_steps(ctx, cls, refs, x, grad, weight_grads), 2 * reduction)]


def _weight_steps(ctx: _Ctx, cls, refs, x, grad, weight_grads) -> list:
    """conv1..conv3's RMSprop steps as the fast D step makes them, inside the bank's backward (fast/bank.py
    fuse_optimizer): each weight's change against torch.optim.RMSprop on the reference's fp32 and fp64 gradients.
    The square average starts mid-run, at (0.5 to 1.5) x the largest squared gradient of its tensor, so a step is
    a smooth function of the gradient (from zero, the first step is about lr x sign(gradient), and the sign of a
    gradient near 0 is rounding noise) and the largest steps are about lr: at lr 0.1 the weights' own fp32 rounding
    is far below the bound, the gradients' (weight_grads'), for a sum twice as long."""
    from vidgan_fast.fast.rmsprop import FusedRMSprop
    lr = 0.1
    bank = cls.from_reference(list(refs))
    opt = FusedRMSprop(bank.parameters(), lr=lr)
    opt.init_state()
    rows = []
    for (suffix, _, g32, g64), layer in zip(weight_grads[0:6:2], ("conv1", "conv2", "conv3")):
        w = bank.get_parameter(f"{layer}_weight")
        average = (torch.rand(w.shape, generator=ctx.gen).to(ctx.device) + 0.5) * g64.abs().max().float() ** 2
        opt.state[w]["square_avg"].copy_(average)
        rows.append((suffix, w, w.detach().clone(), average, g32, g64))
    bank.fuse_optimizer(opt)
    _run(bank, x, grad)
    out = []
    for suffix, w, before, average, g32, g64 in rows:
        steps = []
        for g in (g32, g64):
            p = before.to(g.dtype).clone()
            ref = torch.optim.RMSprop([p], lr=lr)
            ref.state[p] = {"step": torch.zeros((), dtype=g.dtype), "square_avg": average.to(g.dtype, copy=True)}
            p.grad = g
            ref.step()
            steps.append(p - before.to(g.dtype))
        out.append((suffix, w.detach() - before, *steps))
    return out


def _random_frame_generator(ctx: _Ctx) -> models.FrameGenerator:
    """G_F with random weights (activations O(1)) and non-trivial BN statistics, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        g = models.FrameGenerator(100, ctx.sizes.generator_widths)
    gen = ctx.gen
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
                fan_in = m.in_features if isinstance(m, nn.Linear) else 4 * m.in_channels
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * fan_in ** -0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.7 + 0.3)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.3)
    return g.eval().to(ctx.device)


def _check_frozen_generator(ctx: _Ctx) -> list[CheckResult]:
    from vidgan_fast.fast.frozen_generator import FrozenFrameGenerator
    g = _random_frame_generator(ctx)
    frozen = FrozenFrameGenerator.from_reference(g)
    m, widths = ctx.sizes.codes, ctx.sizes.generator_widths
    codes, grad = ctx.uniform(m, 100), ctx.randn(m, 1, 30, 30)
    y, dz = _run(frozen, codes, grad)
    y32, dz32 = _run(g, codes, grad)
    y64, dz64 = _run(copy.deepcopy(g).double(), codes.double(), grad)
    reduction = max(100, 4 * widths[0], *(16 * c for c in widths))
    shape, op = f"M={m} z=100 -> 30x30 w={widths} (eval BN)", "FrozenFrameGenerator"
    return [ctx.row(f"{op} forward", shape, [("frames", y, y32, y64)], reduction),
            ctx.row(f"{op} code grad", shape, [("dz", dz, dz32, dz64)], reduction)]


OP_CHECKS = {
    "project_frames": lambda ctx: _check_projection(ctx, "frames"),
    "project_videos": lambda ctx: _check_projection(ctx, "videos"),
    "frame_bank": lambda ctx: _check_bank(ctx, "frame"),
    "video_bank": lambda ctx: _check_bank(ctx, "video"),
    "frozen_generator": _check_frozen_generator,
}
PHASE_OPS = {1: ("project_frames", "frame_bank"), 2: ("project_videos", "video_bank", "frozen_generator")}


# ---- captured steps (CUDA graphs) ----

def _graphed_steps(phase: int):
    """Row: fast/graph_check.check_graphed_steps: 3 replays vs 3 eager steps, every tensor compared."""
    def check(device: torch.device, paper_size: bool, seed: int, tf32: bool = False) -> CheckResult:
        op, shape = f"captured D+G steps, phase {phase}", "3 replays vs 3 eager steps"
        if device.type != "cuda":
            return not_checked(op, shape, "CUDA graphs need a GPU")
        from vidgan_fast.fast.graph_check import check_graphed_steps
        err, rel, tol, passed, note = check_graphed_steps(phase, device, paper_size=paper_size, seed=seed,
                                                          tf32=tf32)
        return CheckResult(op, shape, err, rel, tol, bool(passed), "CUDA graph", note or "")
    return check


STEP_CHECKS = {"step_phase1": _graphed_steps(1), "step_phase2": _graphed_steps(2)}


# ---- running them ----

@contextlib.contextmanager
def _torch_tf32(enabled: bool):
    """PyTorch's own TF32 switches (cuDNN convolutions default to TF32) set for the duration of the check."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _failed_row(name: str, error: Exception, path: str) -> CheckResult:
    message = " ".join(str(error).split()) or type(error).__name__
    return CheckResult(name, "-", None, None, None, False, path, f"raised {type(error).__name__}: {message}")


def check_names() -> list[str]:
    return [*OP_CHECKS, *STEP_CHECKS]


def run_checks(device="cpu", paper_size: bool = False, seed: int = 0, ops=None,
               allow_fallback: bool = False, tf32: bool = False) -> list[CheckResult]:
    """Run the checks named in `ops` (default all: check_names()) on `device`; one CheckResult per row.
    tf32: the captured-step rows run the steps with TF32 products (the op rows always use exact fp32)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("check: --device cuda but PyTorch sees no CUDA GPU; use --device cpu")
    if paper_size and device.type != "cuda":
        raise ConfigError("check: --paper-size needs a CUDA GPU (the paper widths would take hours in the "
                          "Triton interpreter); the default small sizes run on CPU")
    names = check_names() if ops is None else list(ops)
    unknown = [n for n in names if n not in OP_CHECKS and n not in STEP_CHECKS]
    if unknown:
        raise ConfigError(f"check: unknown op {unknown[0]!r}; choose from {', '.join(check_names())}")
    ctx = _Ctx(device, PAPER if paper_size else SMALL, seed, allow_fallback)
    results: list[CheckResult] = []
    with _torch_tf32(False):
        for name in names:
            try:
                if name in OP_CHECKS and ctx.reason is not None:       # nothing to run: the fast op cannot
                    results.append(CheckResult(name, "-", None, None, None, allow_fallback, PATH_FALLBACK,
                                               ctx.note))
                elif name in OP_CHECKS:
                    results += OP_CHECKS[name](ctx)
                else:
                    results.append(STEP_CHECKS[name](device, paper_size, seed, tf32=tf32))
            except Exception as e:   # a crash of one op (e.g. a kernel that fails to compile) is that op's FAIL
                results.append(_failed_row(name, e, ctx.path if name in OP_CHECKS else "-"))
    return results


def first_step_check(device, phase: int | None = None, seed: int = 0, ops=None,
                     allow_fallback: bool = True) -> None:
    """The small checks `vidgan train --fast` runs before training (the ops of `phase`, or all ops), in exact
    fp32 products whatever the run's precision (see the module docstring).

    A fallback counts as checked here (training then runs that fallback); raises TrainingError naming the
    first op that disagrees with its reference."""
    if phase not in (None, *PHASE_OPS):
        raise ValueError(f"first_step_check: phase must be 1, 2 or None, got {phase!r}")
    if ops is None:
        ops = PHASE_OPS[phase] if phase is not None else tuple(OP_CHECKS)
    for r in run_checks(device, seed=seed, ops=ops, allow_fallback=allow_fallback):
        if r.passed:
            continue
        if r.skipped:
            problem = f"was not checked ({r.note})"
        elif r.path == PATH_FALLBACK:
            problem = f"cannot run here ({r.note})"
        elif r.rel_err is None:
            problem = r.note
        else:
            problem = f"max error {r.rel_err:.3g} > tolerance {r.tol:.3g} (relative)"
        raise TrainingError(f"fast path check failed: {r.op} {problem}; run `vidgan check` for details, "
                            f"or train without --fast")


# ---- what the command needs around the rows (the command itself: cli.py) ----

def use_interpreter_on_cpu() -> str | None:
    """Make sure CPU runs go through the Triton interpreter: set TRITON_INTERPRET=1 for this process when no
    kernel has been decorated yet (triton.jit reads it at decoration time). Returns a note, or raises."""
    if interpreting():
        return None
    loaded = [m for m in KERNEL_MODULES if m in sys.modules]
    if loaded:
        raise ConfigError(f"--device cpu needs TRITON_INTERPRET=1 before the kernels are imported, and "
                          f"{loaded[0]} already is; run `TRITON_INTERPRET=1 vidgan check --device cpu`")
    os.environ["TRITON_INTERPRET"] = "1"
    return "1 (set by vidgan check for this process)"


def check_header(device: str, paper_size: bool, interpret_note: str | None = None) -> dict:
    """The table's header: the environment (check_report.environment), the sizes and the precision checked."""
    header = environment(device)
    if interpret_note:
        header["TRITON_INTERPRET"] = interpret_note
    sizes = PAPER if paper_size else SMALL
    header["sizes"] = f"{'paper' if paper_size else 'small'} (K={sizes.k_frame}/{sizes.k_video}, " \
                      f"B={sizes.batch_frame}/{sizes.batch_video} for frames/videos)"
    header["precision"] = "fp32 (exact products; PyTorch TF32 off); tf32/bf16 products: `vidgan kernels`"
    return header
