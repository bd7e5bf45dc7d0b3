"""The compile gate: every Triton kernel specialization the fast path launches, compiled for real GPU targets.

The rest of the suite runs the kernels under Triton's CPU interpreter, which accepts code the compiler rejects
(a plain Python global inside @triton.jit code once broke every LeakyReLU layer on every GPU), ignores
`input_precision`, and runs any tile size. Here one subprocess without TRITON_INTERPRET captures one D and one G step
of both phases at the tiny and the paper configuration in every precision (shape only, on meta tensors), as a GPU of
each tile family launches them (Hopper: sm_90; Ampere/Ada: sm_80, 86, 89), and compiles each specialization to PTX
and a cubin for its family's targets, reading registers and spills from ptxas -v and the tensor-core instructions
from the PTX (vidgan_fast/lab/gate.py: the same rules `vidgan kernels` exits with).
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
    from vidgan_fast.lab.gate import TARGETS
    folder = Path(tempfile.mkdtemp(prefix="vidgan-gate-"))
    targets = [arg for arch in TARGETS for arg in ("--sm", str(arch))]     # sm_61 is reported by `vidgan kernels`
    with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vidgan_fast.lab.gate", "--json",
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
    from vidgan_fast.lab.gate import TARGETS
    errors = [f"{r['kernel']} [{r['spec']}] sm_{r['arch']}: {r['error']}" for r in gate["rows"]
              if r["error"] and r["arch"] in TARGETS]
    assert not errors, "\n".join(errors)
    assert {r["arch"] for r in gate["rows"]} == set(TARGETS)


def test_no_register_spills_at_paper_size_in_the_tensor_core_precisions(gate):
    assert not gate["failures"], "\n".join(gate["failures"])
    for precision in ("tf32", "bf16"):
        paper = [r for r in gate["rows"] if f"paper/{precision}" in r["used_by"].split() and r["arch"] in (80, 90)]
        assert paper and all(r["spill_bytes"] == 0 for r in paper), precision
        assert any("UPDATE=True" in r["spec"].split() for r in paper), "the weight gradient with the RMSprop step"


def test_capture_covers_every_kernel_forward_and_backward(gate):
    """Every @triton.jit kernel of kernels/ is launched by some step (the banks' forward, dgrad and wgrad, the
    logit layer's three, col2im (conv1's and the projections' input gradients, G_F's last layer), the projection
    forward, the frozen G_F's dense, transposed convolutions and input gradient, the fused RMSprop), at both
    configurations."""
    from vidgan_fast.kernels import col2im, conv, frame_generator, logit, projection, rmsprop
    names = {name for module in (col2im, conv, frame_generator, logit, projection, rmsprop)
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
    """The interpreter ignores input_precision, so the gate reads the compiled PTX (lab/gate.wrong_instruction, in
    its failures and `vidgan kernels`' exit status): exact fp32 ('ieee') products use no tensor core; tf32 and bf16
    use tf32 / bf16 tensor-core instructions (mma.sync on sm_80-89, wgmma on sm_90)."""
    from vidgan_fast.lab.gate import Row, wrong_instruction
    dots = [r for r in gate["rows"] if r["precision"] != "-"]
    assert {r["precision"] for r in dots} == {"ieee", "tf32", "bf16"}
    assert not [r for r in dots if wrong_instruction(Row(**r))]
    assert any(r["mma"].startswith("wgmma") for r in dots if r["arch"] == 90)
    assert all(r["mma"].startswith("mma.") for r in dots if r["arch"] != 90 and r["precision"] != "ieee")
    wrong = Row("_k", "PRECISION=tf32", "paper/tf32", 90, None, 64, 0, 0, "none", 1, "tf32")
    assert wrong_instruction(wrong)
    from vidgan_fast.lab.gate import gate_failures
    assert any("tf32 products run on none" in f for f in gate_failures([wrong]))


def _compile_source(tmp_path, source: str, arch: int = 80):
    """Compile a one-kernel module (written to tmp_path) with lab.aot in a compiled-mode subprocess."""
    (tmp_path / "probe_kernel.py").write_text(source)
    script = (
        "import sys, json, torch\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from vidgan_fast.lab.aot import record_launches, compile_launch\n"
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
    """Each candidate tile kernels/autotune.py may pick on a GPU (kernels/tiles.py, per family) is compiled at
    paper/tf32 for sm_80 (Ampere's) and sm_90 (Hopper's); the gate's spill rule covers those rows too."""
    from vidgan_fast.kernels.tiles import conv_tiles
    kernels = {"forward": "_conv_fwd_kernel", "dgrad": "_conv_dgrad_kernel", "wgrad": "_conv_wgrad_kernel"}
    for fam, arch in (("hopper", 90), ("ampere", 80)):
        for name, kernel in kernels.items():
            for t in conv_tiles(name, fam, "tf32"):
                want = [f"BLOCK_M={t.block_m}", f"num_warps={t.warps}", f"num_stages={t.stages}"]
                rows = [r for r in gate["rows"] if r["kernel"] == kernel and r["arch"] == arch
                        and "paper/tf32" in r["used_by"].split() and all(w in r["spec"].split() for w in want)]
                assert rows, (fam, name, t)
                assert all(r["spill_bytes"] == 0 for r in rows), (fam, name, t)


def test_gate_rejects_what_compiles_but_cannot_launch():
    """A tile whose shared memory fits sm_80 (164 KB per SM) but not sm_86 (100 KB) compiles for both; on an
    RTX 3090 its launch would fail. The gate reads CTAs per SM from ptxas' registers and the shared memory."""
    from vidgan_fast.lab.aot import ctas_per_sm
    from vidgan_fast.lab.gate import Row, gate_failures
    smem = 120 * 1024
    rows = [Row("_k", "BLOCK=256", "paper/tf32", arch, None, 64, 0, smem, "mma.tf32", ctas_per_sm(arch, 64, smem, 4),
                "tf32") for arch in (80, 86)]
    assert [r.ctas_per_sm for r in rows] == [1, 0]
    failures = gate_failures(rows)
    assert len(failures) == 1 and "sm_86: cannot launch" in failures[0], failures
