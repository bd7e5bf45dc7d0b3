"""The compile gate: every Triton kernel specialization the fast path launches, compiled for real GPU targets.

The rest of the suite runs the kernels under Triton's CPU interpreter, which accepts code the compiler rejects
(a plain Python global inside @triton.jit code once broke every LeakyReLU layer on every GPU), ignores
`input_precision`, and runs any tile size. Here one subprocess without TRITON_INTERPRET captures one D and one G step
of both phases at the tiny and the paper configuration in every precision (shape only, on meta tensors) and
compiles each specialization to PTX and a cubin for sm_75, 80, 86, 89 and 90 (sm_61, the GTX 1080 Ti, is reported
by `vidgan kernels` and recorded in benchmarks/RESULTS.md, not gated: Triton does not support it), reading
registers and spills from ptxas -v and the tensor-core instructions from the PTX (vidgan_fast/fast/kernel_gate.py).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GATE_TIMEOUT_S = 2400          # it shares the CPUs with the rest of the suite, at a lower priority
_RUN: dict = {}                 # the gate's subprocess: proc, folder, start


def compiled_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def start_gate() -> None:
    """Start the gate's subprocess, once. tests/conftest.py calls this as soon as collection shows that a test
    needs the gate, and moves those tests to the end: the gate (about 10 minutes of compiling on its own worker
    processes) then runs beside the rest of the suite, which is mostly single-threaded, instead of before it."""
    if _RUN:
        return
    from vidgan_fast.fast.kernel_gate import TARGETS
    folder = Path(tempfile.mkdtemp(prefix="vidgan-gate-"))
    targets = [arg for arch in TARGETS for arg in ("--sm", str(arch))]     # sm_61 is reported by `vidgan kernels`
    with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vidgan_fast.fast.kernel_gate", "--json",
                                 str(folder / "gate.json"), *targets], cwd=REPO, env=compiled_env(), stdout=out,
                                stderr=err, start_new_session=True, preexec_fn=_gate_process_setup)
    _RUN.update(proc=proc, folder=folder, start=time.monotonic())
    atexit.register(stop_gate)


def _gate_process_setup() -> None:
    """In the gate's process, before it starts: a lower priority than the tests beside it (their timeouts stay
    safe), and on Linux a SIGTERM when the test process dies, however it dies."""
    os.nice(10)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)     # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


def stop_gate() -> None:
    """Kill the gate's process group (its compile workers and their ptxas too) and remove its folder."""
    proc, folder = _RUN.get("proc"), _RUN.get("folder")
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def gate():
    start_gate()                 # when this module runs alone
    proc, folder = _RUN["proc"], _RUN["folder"]
    try:
        proc.wait(timeout=max(1.0, GATE_TIMEOUT_S - (time.monotonic() - _RUN["start"])))
    except subprocess.TimeoutExpired:
        stop_gate()
        pytest.fail(f"the gate ran past {GATE_TIMEOUT_S} s")
    out = folder / "gate.json"
    if not out.exists():
        stderr = (folder / "stderr.txt").read_text(errors="replace")
        pytest.fail(f"the gate did not run (exit {proc.returncode}):\n{stderr[-3000:]}")
    return json.loads(out.read_text())


def test_every_specialization_compiles_for_every_target(gate):
    from vidgan_fast.fast.kernel_gate import TARGETS
    errors = [f"{r['kernel']} [{r['spec']}] sm_{r['arch']}: {r['error']}" for r in gate["rows"]
              if r["error"] and r["arch"] in TARGETS]
    assert not errors, "\n".join(errors)
    assert {r["arch"] for r in gate["rows"]} == set(TARGETS)


def test_no_register_spills_at_paper_size_in_the_default_precision(gate):
    assert not gate["failures"], "\n".join(gate["failures"])
    paper = [r for r in gate["rows"] if "paper/tf32" in r["used_by"].split() and r["arch"] in (80, 90)]
    assert paper and all(r["spill_bytes"] == 0 for r in paper)


def test_capture_covers_every_kernel_forward_and_backward(gate):
    """Every @triton.jit kernel of kernels/ is launched by some step (fwd, dgrad, wgrad, the logit layer's three,
    projection both ways, frozen G_F forward and input gradient, the banks' fused RMSprop), at both configurations."""
    from vidgan_fast.kernels import batched_conv, frame_generator, logit, projection, rmsprop
    names = {name for module in (batched_conv, frame_generator, logit, projection, rmsprop)
             for name in vars(module) if name.startswith("_") and name.endswith("_kernel")}
    for config in ("tiny", "paper"):
        seen = {r["kernel"] for r in gate["rows"] if any(u.startswith(config + "/") for u in r["used_by"].split())}
        assert seen == names, f"{config}: not launched: {sorted(names - seen)}"
    # as on a GPU (capturable optimizers): the fused RMSprop counts steps on the device; under bf16 it also writes
    # the weights' bf16 copies
    rmsprop = [r["spec"].split() for r in gate["rows"] if r["kernel"] == "_rmsprop_kernel"]
    assert rmsprop and all("STEP=True" in spec for spec in rmsprop)
    assert any("COPY=True" in spec for spec in rmsprop) and any("COPY=False" in spec for spec in rmsprop)


def test_precision_is_real_in_the_ptx(gate):
    """The interpreter ignores input_precision, so this reads the compiled PTX: exact fp32 ('ieee') products use
    no tensor core; tf32 and bf16 use tf32 / bf16 tensor-core instructions (mma.sync, or wgmma on sm_90) on every
    target that has them (sm_80 and newer)."""
    dots = [r for r in gate["rows"] if r["precision"] != "-"]
    assert {r["precision"] for r in dots} == {"ieee", "tf32", "bf16"}
    wrong = []
    for r in dots:
        if r["precision"] == "ieee" and r["mma"] != "none":
            wrong.append(r)
        elif r["precision"] in ("tf32", "bf16") and r["arch"] >= 80 and not r["mma"].endswith(r["precision"]):
            wrong.append(r)
    assert not wrong, "\n".join(f"{r['kernel']} [{r['spec']}] sm_{r['arch']}: {r['mma']}" for r in wrong)
    assert any(r["mma"].startswith("wgmma") for r in dots if r["arch"] == 90)


def _compile_source(tmp_path, source: str, arch: int = 80):
    """Compile a one-kernel module (written to tmp_path) with kernels.aot in a compiled-mode subprocess."""
    (tmp_path / "probe_kernel.py").write_text(source)
    script = (
        "import sys, json, torch\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from vidgan_fast.kernels.aot import record_launches, compile_launch\n"
        "import probe_kernel\n"
        "with record_launches() as launches:\n"
        "    probe_kernel.launch()\n"
        f"r = compile_launch(launches[0], GPUTarget('cuda', {arch}, 32))\n"
        "print(json.dumps(dict(error=r.error, spill=r.spill_bytes, mma=r.mma)))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=compiled_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PROBE = '''
import torch, triton, triton.language as tl
SLOPE = {slope}

@triton.jit
def _probe(x_ptr, y_ptr, N: tl.constexpr):
    r = tl.arange(0, N)
    a = tl.load(x_ptr + r[:, None] * N + r[None, :])
    acc = tl.dot(a, a, input_precision="ieee")
    tl.store(y_ptr + r[:, None] * N + r[None, :], tl.where(acc > 0, acc, acc * SLOPE))

def launch():
    x = torch.empty({n}, {n}, device="meta")
    _probe[(1,)](x, torch.empty_like(x), N={n}, num_warps={warps})
'''


def test_gate_rejects_a_python_global_in_jit_code(tmp_path):
    """The bug the interpreter hid: a plain Python global read inside @triton.jit code. The gate's compiler
    rejects it (the same source with a tl.constexpr global compiles)."""
    bad = _compile_source(tmp_path, PROBE.format(slope="0.2", n=16, warps=4))
    assert bad["error"] and "global" in bad["error"].lower()
    good = _compile_source(tmp_path, PROBE.format(slope="tl.constexpr(0.2)", n=16, warps=4))
    assert good["error"] is None and good["mma"] == "none"


def test_gate_sees_register_spills(tmp_path):
    """A 64x64 fp32 dot in one warp (128 accumulators per thread, plus operands) cannot fit in registers: ptxas
    reports spills (about 7 KB on sm_80) and the gate reads them."""
    spilled = _compile_source(tmp_path, PROBE.format(slope="tl.constexpr(0.2)", n=64, warps=1))
    assert spilled["error"] is None and spilled["spill"] > 0


def test_every_autotune_candidate_is_compiled_without_spills(gate):
    """Each candidate tile kernels/autotune.py may pick on a GPU (CANDIDATES of batched_conv.py and logit.py) is
    compiled at paper/tf32 for sm_80 and sm_90; the gate's spill rule covers those rows too."""
    from vidgan_fast.kernels import batched_conv, logit
    kernels = {"forward": "_conv_fwd_kernel", "dgrad": "_conv_dgrad_kernel", "wgrad": "_conv_wgrad_kernel",
               "logit_forward": "_logit_fwd_kernel", "logit_dgrad": "_logit_dgrad_kernel",
               "logit_wgrad": "_logit_wgrad_kernel"}
    for name, candidates in {**batched_conv.CANDIDATES, **logit.CANDIDATES}.items():
        for *blocks, warps in candidates:
            labels = ("BLOCK_M", "BLOCK_N", "BLOCK_R") if len(blocks) == 3 else ("BLOCK_M", "BLOCK_R")
            want = [f"{label}={v}" for label, v in zip(labels, blocks)] + [f"num_warps={warps}"]
            rows = [r for r in gate["rows"] if r["kernel"] == kernels[name] and "paper/tf32" in r["used_by"].split()
                    and all(w in r["spec"].split() for w in want)]
            assert {r["arch"] for r in rows} >= {80, 90}, (name, blocks, warps)
            assert all(r["spill_bytes"] == 0 for r in rows if r["arch"] in (80, 90)), (name, blocks, warps)


def test_gate_rejects_what_compiles_but_cannot_launch():
    """A tile whose shared memory fits sm_80 (164 KB per SM) but not sm_86 (100 KB) compiles for both; on an
    RTX 3090 its launch would fail. The gate reads CTAs per SM from ptxas' registers and the shared memory."""
    from vidgan_fast.fast.kernel_gate import Row, gate_failures
    from vidgan_fast.kernels.aot import ctas_per_sm
    smem = 120 * 1024
    rows = [Row("_k", "BLOCK=256", "paper/tf32", arch, None, 64, 0, smem, "mma.tf32", ctas_per_sm(arch, 64, smem, 4),
                "tf32") for arch in (80, 86)]
    assert [r.ctas_per_sm for r in rows] == [1, 0]
    failures = gate_failures(rows)
    assert len(failures) == 1 and "sm_86: cannot launch" in failures[0], failures
