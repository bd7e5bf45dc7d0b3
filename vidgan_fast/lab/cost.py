"""What a training step costs on a GPU, projected from the compiled code without one: per launch, the binding limit
among instruction issue, tensor-core time, L2 sectors and DRAM bytes; per step, the op-serial sum.

    steps = project(preset("paper"), "tf32", gpus=("h100",))     # StepCost per (step, GPU): launches and torch ops
    vidgan bench --static [--per-launch]                         # the tables (lab/report.py)

How each Triton launch of the real `--fast` steps (run on meta tensors; lab/aot.record_calls) is costed on a GPU:
- compiled for the GPU's arch (lab/aot.compile_launch): registers, shared memory, warps -> CTAs per SM; the SASS
  (lab/sass.py): instructions of the main loop per iteration, of the rest once, and the matrix instruction kind;
- run on a sample of its programs under the interpreter (lab/sectors.py): unique 32-byte sectors loaded and stored
  (L2 -> SM traffic), loop trips, tl.dot FLOPs, and which tensors it reads and writes;
- limits, each a lower bound of the launch's time (lab/hardware.py holds every figure):
    issue   = busiest SM's programs x warps x (trips x loop + rest) instructions / (4 per clock) / clock
    tensor  = busiest SM's programs x dot FLOPs per program / (matrix FLOPs per clock per SM) / clock
    l2      = sectors x 32 B / L2 bandwidth (its optimistic end; the pessimistic one is reported too)
    dram    = compulsory bytes (every tensor it reads, read once; every tensor it writes, written once) / HBM
    launch  = KERNEL_MIN_US
  projected = the largest; `binding` names it. The busiest SM takes ceil(programs / SMs) programs.
- floor = max(dot FLOPs / the GPU's matrix peak at the precision, compulsory bytes / HBM): what the launch's own
  arithmetic and traffic cost on ideal hardware. FMA-only kernels (no tl.dot) count their bytes only (their FLOPs
  are a few per byte).
Torch's own kernels in the steps (the generators, the losses, batch norm, optimizer passes) are recorded as aten ops
(a dispatch mode on the same meta run): each is one kernel costing max(FLOPs / matrix peak for matmuls and
convolutions, bytes / HBM, KERNEL_MIN_US). G_V's LSTM is one op with cuDNN's dependent chain: per layer and time
step two kernels one after the other (forward), twice that in backward, each at least KERNEL_MIN_US.
Per step: projected and floor are the sums over its kernels (op-serial: one chain of kernels, as a CUDA graph of
one stream runs them); the step's nominal FLOPs (lab/flops.py) beside its executed ones show the padding.
Needs compiled-mode Triton (run from an interpreted process, it runs itself in a child process).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass, field

from vidgan_fast.lab.hardware import GPUS, KERNEL_MIN_US, GPU

Z_DIM = 100
STEP_NAMES = ("phase 1 D step", "phase 1 G step", "phase 2 D step", "phase 2 G step")


@dataclass
class TorchOp:
    """One kernel PyTorch launches in a step."""
    name: str
    flops: int
    bytes: int
    matrix: bool = False          # a matmul / convolution (cuBLAS, cuDNN): at the matrix peak
    chain: int = 1                # kernels one after another (the LSTM's recurrence)


@dataclass
class StepCapture:
    name: str
    events: list                  # aot.Call or TorchOp, in launch order


@dataclass
class LaunchCost:
    kernel: str
    label: str
    programs: int
    warps: int
    ctas_per_sm: int | None
    registers: int | None
    shared_bytes: int | None
    spill_bytes: int | None
    instruction: str              # 'wgmma', 'mma' or 'fma'
    loop_instructions: int
    total_instructions: int
    trips: float
    dot_flops: float
    l2_bytes: float
    read_efficiency: float
    write_efficiency: float
    spread: dict
    compulsory_bytes: int
    limits: dict                  # name -> seconds: issue, tensor, l2, dram, launch
    l2_pessimistic_s: float
    floor_s: float

    @property
    def projected_s(self) -> float:
        return max(self.limits.values())

    @property
    def binding(self) -> str:
        return max(self.limits, key=self.limits.get)

    @property
    def over_floor(self) -> float:
        return self.projected_s / self.floor_s if self.floor_s else math.inf


@dataclass
class TorchCost:
    op: TorchOp
    projected_s: float
    floor_s: float
    binding: str


@dataclass
class StepCost:
    name: str
    gpu: str
    precision: str
    launches: list = field(default_factory=list)     # LaunchCost
    torch_ops: list = field(default_factory=list)    # TorchCost
    nominal_flops: int = 0

    @property
    def projected_s(self) -> float:
        return sum(c.projected_s for c in self.launches) + sum(c.projected_s for c in self.torch_ops)

    @property
    def floor_s(self) -> float:
        return sum(c.floor_s for c in self.launches) + sum(c.floor_s for c in self.torch_ops)

    @property
    def triton_projected_s(self) -> float:
        return sum(c.projected_s for c in self.launches)

    @property
    def executed_flops(self) -> float:
        return sum(c.dot_flops for c in self.launches) + sum(c.op.flops for c in self.torch_ops)


# ------------------------------------------------------------------------------------------ torch's own kernels

_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
              "lift_fresh", "set_", "resize_", "_local_scalar_dense", "lift_fresh_copy", "is_same_size", "sym_size",
              "sym_numel", "sym_stride", "sym_storage_offset", "_unsafe_view", "clone_", "record_stream"}


class _AtenRecorder:
    """A dispatch mode recording every aten op that launches a kernel (not views, not allocations)."""

    def __init__(self, sink):
        from torch.utils._python_dispatch import TorchDispatchMode
        recorder = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                recorder.record(func, args, kwargs, out)
                return out
        self.mode, self.sink = Mode(), sink

    def record(self, func, args, kwargs, out) -> None:
        import torch
        from torch.utils._pytree import tree_leaves
        from torch.utils.flop_counter import flop_registry
        name = func.overloadpacket.__name__
        if name in _NO_KERNEL or getattr(func, "is_view", False):
            return
        seen, nbytes = set(), 0
        for t in tree_leaves((args, kwargs)) + tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = (t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape))
                if key not in seen:
                    seen.add(key)
                    nbytes += t.numel() * t.element_size()
        flops, matrix = 0, False
        packet = func.overloadpacket
        if packet in flop_registry:
            flops, matrix = int(flop_registry[packet](*args, **kwargs, out_val=out)), True
        self.sink(TorchOp(name, flops, nbytes, matrix))

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def _opaque_lstm(sink):
    """nn.LSTM.forward as one recorded op (cuDNN runs it as a dependent chain of small kernels; its CPU/meta
    decomposition into per-step aten ops would cost each as a launch of its own)."""
    import torch
    from vidgan_fast.lab.flops import lstm_flops

    class _LSTM(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, module, *weights):
            T, B, n_in = x.shape
            dirs = 2 if module.bidirectional else 1
            flops = lstm_flops(T, B, n_in, module.hidden_size, module.num_layers, module.bidirectional)
            sink(TorchOp("lstm forward (cuDNN chain)", flops, sum(w.numel() * w.element_size() for w in weights)
                         + x.numel() * x.element_size(), True, chain=2 * module.num_layers * T))
            ctx.meta = (x.shape, module.num_layers * T, flops, [w.shape for w in weights])
            return x.new_empty(T, B, dirs * module.hidden_size)

        @staticmethod
        def backward(ctx, grad):
            shape, steps, flops, w_shapes = ctx.meta
            sink(TorchOp("lstm backward (cuDNN chain)", 2 * flops, 3 * grad.numel() * grad.element_size(), True,
                         chain=4 * steps))
            return (grad.new_empty(shape), None, *[grad.new_empty(s) for s in w_shapes])

    def forward(self, x, hx=None):
        out = _LSTM.apply(x, self, *self._flat_weights)
        dirs = 2 if self.bidirectional else 1
        h = x.new_empty(dirs * self.num_layers, x.shape[1], self.hidden_size)
        return out, (h, h.new_empty(h.shape))
    return forward


# ------------------------------------------------------------------------------------------------- capture

def capture_steps(cfg, precision: str, gpu: GPU) -> list[StepCapture]:
    """The kernels of the four `--fast` training steps of `cfg` at `precision`, with the tiles `gpu` would take
    (steady state: each step runs twice on meta tensors and the second run is kept). Compiled-mode Triton only."""
    import torch

    from vidgan_fast import step
    from vidgan_fast.kernels.common import forced_target
    from vidgan_fast.lab.gate import meta_fast_state
    cfg = dataclasses.replace(cfg, fast=True, tf32=precision == "tf32", bf16=precision == "bf16")
    captures = []
    for phase in ("frames", "video"):
        with forced_target(arch=gpu.arch, sms=gpu.sms), _capturing() as (calls, events, patch):
            state = meta_fast_state(cfg, phase)
            for opt in (state.g_opt, state.f_opt):         # as on a GPU: torch's RMSprop takes its foreach path
                for group in getattr(opt, "param_groups", ()):
                    group["foreach"] = True
            real = torch.empty(state.phase.sample_shape, device="meta")
            z = torch.empty(state.phase.batch, Z_DIM, device="meta")
            with patch():
                for name, run in (("D", lambda: step.d_step(state, real, z)), ("G", lambda: step.g_step(state, z))):
                    run()                                   # lazy state, first-call work
                    events.clear()
                    calls.clear()
                    run()
                    captures.append(StepCapture(f"phase {1 if phase == 'frames' else 2} {name} step",
                                                _merge(events, calls)))
    return captures


@contextlib.contextmanager
def _capturing():
    """(calls, events, patch): Triton calls recorded by lab/aot.record_calls; torch ops (events, each tagged with
    the number of calls before it, to merge in launch order) recorded inside patch()."""
    import torch

    from vidgan_fast.lab.aot import record_calls
    events: list = []
    with record_calls() as calls:
        def sink(op):
            events.append((len(calls), op))

        @contextlib.contextmanager
        def patch():
            lstm_forward = torch.nn.LSTM.forward
            torch.nn.LSTM.forward = _opaque_lstm(sink)
            try:
                with _AtenRecorder(sink):
                    yield
            finally:
                torch.nn.LSTM.forward = lstm_forward
        yield calls, events, patch


def _merge(events, calls) -> list:
    out, taken = [], 0
    for before, op in events:
        out += calls[taken:before]
        taken = max(taken, before)
        out.append(op)
    return out + calls[taken:]


# ------------------------------------------------------------------------------------------------- costing

def _label(call) -> str:
    """The kernel's integer arguments, named: which layer a launch is (the constexprs are in Launch.describe)."""
    names = call.launch.kernel.arg_names
    ints = [f"{n}={v}" for n, v in zip(names, call.args) if isinstance(v, int) and not isinstance(v, bool)]
    return " ".join(ints)


def _dtype_of(call) -> str:
    """'fp32', 'tf32' or 'bf16': the precision of the launch's products (its PRECISION / BF16 constexpr)."""
    launch = call.launch
    names = launch.kernel.arg_names
    if "PRECISION" in names:
        return {"ieee": "fp32", "tf32": "tf32", "bf16": "bf16"}[launch.constant("PRECISION")]
    return "fp32"


def cost_launch(call, traffic, report, code, gpu: GPU) -> LaunchCost:
    """The limits of one launch on `gpu` from its traffic (lab/sectors.py), compile report (lab/aot.py) and SASS
    (lab/sass.py)."""
    clock = gpu.clock_ghz * 1e9
    warps = report.num_warps or call.launch.option("num_warps", 4)
    per_sm = math.ceil(call.programs / gpu.sms)
    issued = code.issued(traffic.trips)
    dtype = _dtype_of(call)
    if code.mma_instruction == "fma" or dtype == "fp32":
        per_clk = gpu.fma_flops_per_clk
    else:
        per_clk = gpu.mma_flops_per_clk.get((code.mma_instruction, dtype), gpu.fma_flops_per_clk)
    dot_per_program = traffic.dot_flops / call.programs
    compulsory = call.argument_bytes(traffic.read_args) + call.argument_bytes(traffic.written_args)
    limits = {"issue": per_sm * warps * issued / gpu.issue_per_clk / clock,
              "tensor": per_sm * dot_per_program / per_clk / clock,
              "l2": traffic.l2_bytes / (gpu.l2_gbps[1] * 1e9),
              "dram": compulsory / (gpu.hbm_gbps * 1e9),
              "launch": KERNEL_MIN_US * 1e-6}
    peak = gpu.peak_flops("fp32" if dtype == "fp32" else "mma", dtype)
    floor = max(traffic.dot_flops / peak, compulsory / (gpu.hbm_gbps * 1e9))
    return LaunchCost(call.name, _label(call), call.programs, warps, report.ctas_per_sm, report.registers,
                      report.shared_bytes, report.spill_bytes, code.mma_instruction, code.loop_instructions,
                      code.total, traffic.trips, traffic.dot_flops, traffic.l2_bytes, traffic.read_efficiency,
                      traffic.write_efficiency, traffic.spread, compulsory, limits,
                      traffic.l2_bytes / (gpu.l2_gbps[0] * 1e9), floor)


def cost_torch_op(op: TorchOp, gpu: GPU, precision: str) -> TorchCost:
    compute = op.flops / gpu.peak_flops("mma" if op.matrix else "fp32", precision)
    memory = op.bytes / (gpu.hbm_gbps * 1e9)
    launch = op.chain * KERNEL_MIN_US * 1e-6
    limits = {"tensor" if op.matrix else "compute": compute, "dram": memory, "launch": launch}
    binding = max(limits, key=limits.get)
    return TorchCost(op, limits[binding], max(compute, memory), binding)


def project_here(cfg, precision: str, gpus=("h100",), samples: int = 8, seed: int = 0) -> list[StepCost]:
    """project() in this (compiled-mode) process."""
    from triton.backends.compiler import GPUTarget

    from vidgan_fast.lab.aot import compile_launch
    from vidgan_fast.lab.sass import read_sass
    from vidgan_fast.lab.sectors import CallSpec, trace_in_subprocess
    captures = {key: capture_steps(cfg, precision, GPUS[key]) for key in gpus}
    specs, index = [], {}
    for caps in captures.values():
        for cap in caps:
            for e in cap.events:
                if not isinstance(e, TorchOp) and repr(CallSpec.of(e)) not in index:
                    index[repr(CallSpec.of(e))] = len(specs)
                    specs.append(CallSpec.of(e))
    traffic = trace_in_subprocess(specs, samples, seed)
    compiled: dict = {}
    nominal = _nominal_flops(cfg)
    out = []
    for key in gpus:
        gpu = GPUS[key]
        for cap, nominal_flops in zip(captures[key], nominal):
            cost = StepCost(cap.name, gpu.key, precision, nominal_flops=nominal_flops)
            for e in cap.events:
                if isinstance(e, TorchOp):
                    cost.torch_ops.append(cost_torch_op(e, gpu, precision))
                    continue
                if (e.launch, gpu.arch) not in compiled:
                    report = compile_launch(e.launch, GPUTarget("cuda", gpu.arch, 32))
                    if not report.ok:
                        raise RuntimeError(f"{e.name} does not compile for sm_{gpu.arch}: {report.error}")
                    compiled[(e.launch, gpu.arch)] = (report, read_sass(report.cubin))
                report, code = compiled[(e.launch, gpu.arch)]
                cost.launches.append(cost_launch(e, traffic[index[repr(CallSpec.of(e))]], report, code, gpu))
            out.append(cost)
    return out


def project(cfg, precision: str, gpus=("h100",), samples: int = 8, seed: int = 0) -> list[StepCost]:
    """StepCost of every training step of `cfg` at `precision` on every GPU key in `gpus` (lab/hardware.GPUS);
    `samples` programs of each launch are traced (lab/sectors.py)."""
    from vidgan_fast.kernels.mode import interpreting
    if interpreting():
        from vidgan_fast.lab.processes import call_in_mode
        return call_in_mode("compiled", __name__, "project_here", cfg, precision, tuple(gpus), samples, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return project_here(cfg, precision, tuple(gpus), samples, seed)


def _nominal_flops(cfg) -> list[int]:
    """The four steps' nominal FLOPs (lab/flops.py: every tap of every output, 2 per multiply-add)."""
    import torch

    from vidgan_fast import step
    from vidgan_fast.lab import flops as F
    from vidgan_fast.models import FrameDiscriminator, VideoDiscriminator
    with torch.device("meta"):
        g = step.build_frame_generator(cfg)
        v = step.build_video_generator(cfg)
        d, dv = FrameDiscriminator(widths=cfg.df_widths), VideoDiscriminator(widths=cfg.dv_widths)
    return [F.phase1_d_step_flops(g, [d], cfg.frames_k, cfg.frames_batch).total,
            F.phase1_g_step_flops(g, [d], cfg.frames_k, cfg.frames_batch).total,
            F.phase2_d_step_flops(v, g, [dv], cfg.video_k, cfg.video_batch).total,
            F.phase2_g_step_flops(v, g, [dv], cfg.video_k, cfg.video_batch).total]


def schedule_hours(steps: list[StepCost], cfg, floor: bool = False) -> float:
    """Projected (or op-serial floor) hours of the whole schedule of `cfg` on one GPU: each phase's steps, one D
    and one G step each, from that GPU's four StepCosts."""
    from vidgan_fast.step import Phase
    by_name = {s.name: (s.floor_s if floor else s.projected_s) for s in steps}
    total = 0.0
    for phase, number in (("frames", 1), ("video", 2)):
        _, n = Phase.of(cfg, phase).schedule(cfg.n_videos)
        total += n * (by_name[f"phase {number} D step"] + by_name[f"phase {number} G step"])
    return total / 3600


def as_dict(step: StepCost) -> dict:
    """A StepCost as JSON-ready data (the report's --json)."""
    return {"step": step.name, "gpu": step.gpu, "precision": step.precision, "projected_s": step.projected_s,
            "floor_s": step.floor_s, "triton_s": step.triton_projected_s, "nominal_flops": step.nominal_flops,
            "executed_flops": step.executed_flops,
            "launches": [{**{k: v for k, v in vars(c).items() if k != "spread"}, "projected_s": c.projected_s,
                          "binding": c.binding, "spread": c.spread} for c in step.launches],
            "torch_ops": [{"name": c.op.name, "flops": c.op.flops, "bytes": c.op.bytes, "chain": c.op.chain,
                           "projected_s": c.projected_s, "floor_s": c.floor_s, "binding": c.binding}
                          for c in step.torch_ops]}
