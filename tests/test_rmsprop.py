"""FusedRMSprop (vidgan_fast/fast/rmsprop.py, kernel kernels/rmsprop.py) against torch.optim.RMSprop.

Accuracy: several steps over tensors of odd sizes (empty, 1 element, ..., more than four GPU blocks, a
channels-last one), the kernel under the interpreter at the GPU's block and at the interpreter's, each
compared after every step with an fp64 run of torch.optim.RMSprop on the same gradients: weights and square_avg
within vidgan_fast.tolerance.tolerance("fp32") (relative to the tensor's max |fp64|; an elementwise update has no
reduction). The gradients mix normal values of several scales with exact zeros (0 / (sqrt(0) + eps) must be 0)
and tiny values (|g| ~ 1e-8, where sqrt(v) ~ eps, so eps and the order sqrt-then-add-eps matter).

Mutation check, done by hand once (each edit applied alone, then reverted): in kernels/rmsprop.py dropping eps
(NaN from 0/0), sqrt(v + eps) instead of sqrt(v) + eps, alpha and 1 - alpha swapped, the kernel never
incrementing `step`, and the last block's mask one element short each failed the accuracy and round-trip tests.

Interchange: a state_dict saved by either optimizer loads into the other and training continues as if it had
never switched (same state keys, same param_groups keys, through torch.save / torch.load as well).
"""
import copy
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from guard import guarded
from vidgan_fast.fast.rmsprop import FusedRMSprop
from vidgan_fast.kernels.common import forced_target
from vidgan_fast.kernels.rmsprop import rmsprop_update
from vidgan_fast.kernels.tiles import RMSPROP_TILES
from vidgan_fast.tolerance import relative_error, tolerance

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TILE = RMSPROP_TILES[False].block_m          # the GPU's elements per program
SHAPES = [(0,), (1,), (3,), (17,), (5, 7), (TILE,), (TILE - 1,), (4 * TILE + 5,), (2, 3, 4, 5)]
CHANNELS_LAST = 8          # index of the 4-d shape, kept channels-last (a dense, non-contiguous layout)
LR, STEPS = 1e-3, 4
TOL = tolerance("fp32")


def make_params(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    params[CHANNELS_LAST] = params[CHANNELS_LAST].to(memory_format=torch.channels_last)
    return [p.requires_grad_() for p in params]


def make_grads(params, gen):
    """Gradients of mixed scales, with exact zeros and tiny (~1e-8) entries, in each parameter's layout."""
    grads = []
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(-3, 2, (), generator=gen)
        kind = torch.randint(0, 8, p.shape, generator=gen)
        g = torch.where(kind == 0, 0.0, torch.where(kind == 1, g * 1e-8, g))
        grads.append(g.to(p.dtype).contiguous(memory_format=torch.channels_last) if p.dim() == 4 else g.to(p.dtype))
    return grads


def clone_params(params, dtype):
    return [p.detach().to(dtype).clone(memory_format=torch.preserve_format).requires_grad_() for p in params]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.to(p.device, p.dtype).clone(memory_format=torch.preserve_format)


def assert_same_state(what, opt, params, ref_opt, ref_params, tol=TOL):
    for i, (p, q) in enumerate(zip(params, ref_params)):
        err = relative_error(p, q)
        assert err <= tol, f"{what}: parameter {i} {tuple(p.shape)}: relative error {err:.3g} > {tol:.3g}"
        s, r = opt.state.get(p, {}), ref_opt.state.get(q, {})
        assert set(s) == set(r), f"{what}: parameter {i}: state keys {set(s)} vs {set(r)}"
        if s:
            err = relative_error(s["square_avg"], r["square_avg"])
            assert err <= tol, f"{what}: square_avg {i} {tuple(p.shape)}: relative error {err:.3g} > {tol:.3g}"
            assert s["step"].item() == r["step"].item(), f"{what}: step {i}"
            assert s["step"].dtype == r["step"].dtype and s["square_avg"].stride() == r["square_avg"].stride()


@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
@pytest.mark.parametrize("family", ["hopper", "interpreter"])
def test_matches_fp64_torch_rmsprop(family, lr_kind):
    params = make_params()
    ref = clone_params(params, torch.float64)
    lr = torch.tensor(LR) if lr_kind == "tensor" else LR
    opt = FusedRMSprop(params, lr=lr)
    ref_opt = torch.optim.RMSprop(ref, lr=LR)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        grads = make_grads(params, gen)
        grads[2] = None if step < 2 else grads[2]          # a parameter without gradient is skipped, then joins
        set_grads(params, grads)
        set_grads(ref, grads)
        with forced_target(tile_family=family):
            opt.step()
        ref_opt.step()
        assert_same_state(f"{family} step {step + 1}", opt, params, ref_opt, ref)
    assert opt.state[params[2]]["step"].item() == STEPS - 2


def test_one_launch_per_tensor_each_updated_once_with_its_copy():
    """rmsprop_update: one launch per tensor, each tensor (and its bf16 copy, where given) written exactly once and
    nothing outside it (guard bands around every output); the copy is the new weight rounded to nearest even."""
    params = [p.detach() for p in make_params()]
    grads = make_grads(params, torch.Generator().manual_seed(3))
    with guarded() as guard:
        copies = [torch.empty(p.shape, dtype=torch.bfloat16).as_strided(p.shape, p.stride()) if i % 2 else None
                  for i, p in enumerate(params)]
    avgs = [torch.rand_like(p) for p in params]
    ref = [p.double().clone() for p in params]
    ref_opt = torch.optim.RMSprop([r.requires_grad_() for r in ref], lr=LR)
    ref_opt.state.update({r: {"step": torch.zeros(()), "square_avg": v.double().clone()} for r, v in zip(ref, avgs)})
    set_grads(ref, grads)
    ref_opt.step()
    steps = [torch.zeros(()) for _ in params]
    with forced_target(tile_family="hopper"):
        assert rmsprop_update(params, grads, avgs, steps, LR, 0.99, 1e-8, copies=copies) == len(params)
    guard()
    for p, q, c in zip(params, ref, copies):
        assert relative_error(p, q) <= TOL
        if c is not None:
            assert torch.equal(c, p.to(torch.bfloat16))
    assert all(s.item() == 1 for s in steps)


def _continue(opt, params, ref_opt, ref, gen, steps=2):
    for _ in range(steps):
        grads = make_grads(params, gen)
        set_grads(params, grads)
        set_grads(ref, grads)
        opt.step()
        ref_opt.step()


def _through_file(state_dict):
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("direction", ["torch_to_fused", "fused_to_torch"])
def test_state_dict_round_trip_with_torch_rmsprop(direction):
    """Two steps on one optimizer, its state_dict (through a file) into the other, two more steps: the same as
    four steps of torch.optim.RMSprop in fp64 throughout."""
    params = make_params()
    ref = clone_params(params, torch.float64)
    ref_opt = torch.optim.RMSprop(ref, lr=LR)
    gen = torch.Generator().manual_seed(4)
    first = (torch.optim.RMSprop(params, lr=LR) if direction == "torch_to_fused"
             else FusedRMSprop(params, lr=LR))
    _continue(first, params, ref_opt, ref, gen)
    saved = first.state_dict()
    torch_sd = torch.optim.RMSprop(clone_params(params, torch.float32), lr=LR)
    torch_sd.load_state_dict(copy.deepcopy(saved))
    assert [sorted(g) for g in saved["param_groups"]] == [sorted(g) for g in torch_sd.state_dict()["param_groups"]]
    assert {k for s in saved["state"].values() for k in s} == {"step", "square_avg"}
    second = (FusedRMSprop(params, lr=0.5) if direction == "torch_to_fused"
              else torch.optim.RMSprop(params, lr=0.5))
    second.load_state_dict(_through_file(saved))           # the saved lr (1e-3) wins, as in torch
    assert second.param_groups[0]["lr"] == LR
    _continue(second, params, ref_opt, ref, gen)
    assert_same_state(direction, second, params, ref_opt, ref)


def test_capturable_state_lives_on_the_parameter_device_and_loads_as_torch_does():
    params = make_params()
    opt = FusedRMSprop(params, lr=LR, capturable=True)
    assert len(opt.init_state()) == 2 * len(params) and opt.init_state() == []
    plain = torch.optim.RMSprop(clone_params(params, torch.float32), lr=LR, capturable=True)
    plain.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt.state_dict()["param_groups"] == plain.state_dict()["param_groups"]


def test_unsupported_options_and_dtypes_raise():
    p = torch.zeros(3, requires_grad=True)
    for bad in (dict(momentum=0.9), dict(centered=True), dict(weight_decay=1e-4), dict(maximize=True)):
        with pytest.raises(NotImplementedError):
            FusedRMSprop([p], **bad)
    opt = FusedRMSprop([p])
    opt.param_groups[0]["momentum"] = 0.9                  # e.g. loaded from a state dict
    p.grad = torch.ones(3)
    with pytest.raises(NotImplementedError):
        opt.step()
    q = torch.randn(5, dtype=torch.float64, requires_grad=True)     # the kernel updates fp32 tensors only
    q.grad = torch.ones(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="fp32 tensors"):
        FusedRMSprop([q]).step()


def test_a_step_is_checked_as_rmsprop_update_checks_its_tensors():
    from vidgan_fast.kernels.rmsprop import RMSpropStep
    w, v = torch.zeros(4), torch.zeros(4)
    RMSpropStep(w, v, 0.1, 0.9, 1e-8, step=torch.zeros(1), copy=torch.zeros(4, dtype=torch.bfloat16)).check()
    for bad, fragment in ((dict(square_avg=v.double()), "fp32 tensors"),
                          (dict(copy=torch.zeros(3, dtype=torch.bfloat16)), "each copy"),
                          (dict(step=torch.zeros(2)), "steps must be 1-element"),
                          (dict(lr=torch.zeros(2)), "a tensor lr")):
        args = {**dict(weight=w, square_avg=v, lr=0.1, alpha=0.9, eps=1e-8), **bad}
        with pytest.raises(ValueError, match=f"^RMSpropStep: {fragment}"):
            RMSpropStep(**args).check()


def test_update_of_hands_over_one_parameters_step():
    """update_of(p): the step a weight-gradient launch applies in place of the optimizer (fast/bank.py): p's own
    state (made if new), its group's hyper-parameters, its copy; p's version moves (a stale saved p then raises);
    a tensor that is not one of the optimizer's parameters is refused."""
    p, q = torch.zeros(4, requires_grad=True), torch.zeros(2, requires_grad=True)
    copy_ = torch.zeros(4, dtype=torch.bfloat16)
    opt = FusedRMSprop([{"params": [q]}, {"params": [p], "lr": 0.5}], alpha=0.9, eps=1e-6, copies={p: copy_})
    version = p._version
    step = opt.update_of(p)
    assert step.weight is p and step.square_avg is opt.state[p]["square_avg"] and step.copy is copy_
    assert (step.lr, step.alpha, step.eps) == (0.5, 0.9, 1e-6) and step.step is opt.state[p]["step"]
    assert p._version > version and not opt.state.get(q)
    with pytest.raises(ValueError, match="not one of this optimizer's parameters"):
        opt.update_of(torch.zeros(4))


# ---- ahead-of-time compile (no GPU needed): sm_80 and sm_90 ----

AOT_SCRIPT = """
import json, torch
from triton.backends.compiler import GPUTarget
from vidgan_fast.lab.aot import compile_launch, record_launches
from vidgan_fast.fast.rmsprop import FusedRMSprop
meta = torch.device("meta")
# a phase-1 bank's conv2 weight (K=48, 512 x 256 x 4 x 4) and bias, and a tensor of an odd size (a masked block)
shapes = [(48, 512, 256, 4, 4), (48, 512), (48, 1, 1000, 4, 1)]
params = [torch.zeros(s, device=meta, requires_grad=True) for s in shapes]
for p in params:
    p.grad = torch.zeros_like(p)
copy = torch.zeros(shapes[0], device=meta, dtype=torch.bfloat16)
opt = FusedRMSprop(params, lr=2e-4, capturable=True, copies={params[0]: copy})
with record_launches() as launches:
    opt.step()
plain = FusedRMSprop(params, lr=2e-4)                      # not capturable: step counters on the host
with record_launches() as launches_plain:
    plain.step()
out = []
for name, launch in (("weight+copy", launches[0]), ("bias", launches[1]), ("odd size", launches[2]),
                     ("host steps", launches_plain[0])):
    for arch in (80, 90):
        r = compile_launch(launch, GPUTarget("cuda", arch, 32))
        out.append(dict(name=name, arch=arch, launches=(len(launches), len(launches_plain)), error=r.error,
                        registers=r.registers, spill=r.spill_bytes,
                        v4_load="ld.global.v4" in r.ptx, v4_store="st.global.v4" in r.ptx,
                        sqrt_rn="sqrt.rn.f32" in r.ptx, div_rn="div.rn.f32" in r.ptx,
                        bf16_rn="cvt.rn.bf16x2.f32" in r.ptx,
                        approx="sqrt.approx" in r.ptx or "div.approx" in r.ptx or "div.full" in r.ptx))
print(json.dumps(out))
"""


def test_kernel_compiles_for_sm80_and_sm90_without_spills_with_vector_loads():
    """The interpreter accepts code the compiler rejects: compile the launches a phase-1 bank's optimizer makes
    (recorded on meta tensors, compiled-mode process) for sm_80 and sm_90: a weight with its bf16 copy, a bias, a
    tensor whose size is not a multiple of the block (masked), and not capturable (step counters on the host). No
    spills; 16-byte loads and stores (masked ones too: Triton specializes sizes divisible by 16); sqrt and division are the IEEE-rounded ones (as
    PyTorch's CUDA kernels), not the approximations; the copy is rounded to nearest even in pairs
    (cvt.rn.bf16x2.f32)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-c", AOT_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 8
    for r in rows:
        assert r["launches"] == [3, 2] and r["error"] is None, r
        assert r["spill"] == 0 and r["registers"] is not None, r
        assert r["sqrt_rn"] and r["div_rn"] and not r["approx"], r
        assert r["v4_load"] and r["v4_store"], r         # a size divisible by 16 keeps 16-byte accesses masked
        assert r["bf16_rn"] == (r["name"] == "weight+copy"), r


# ---- on a CUDA GPU: graph capture, no host synchronisation ----

@pytest.mark.gpu
def test_cuda_graph_replay_matches_eager_and_step_never_syncs():
    dev = torch.device("cuda")
    params = [p.detach().to(dev).requires_grad_() for p in make_params()]
    ref = clone_params(params, torch.float64)
    opt = FusedRMSprop(params, lr=LR, capturable=True)
    ref_opt = torch.optim.RMSprop(ref, lr=LR)
    opt.init_state()
    static = [torch.zeros_like(p) for p in params]
    for p, g in zip(params, static):
        p.grad = g
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()                                  # eager, and compiles: no host synchronisation allowed
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    set_grads(ref, static)
    ref_opt.step()                                  # the eager step above, on zero gradients
    gen = torch.Generator().manual_seed(5)
    for _ in range(STEPS):
        grads = make_grads(params, gen)
        for g, new in zip(static, grads):
            g.copy_(new)
        graph.replay()
        set_grads(ref, grads)
        ref_opt.step()
    torch.cuda.synchronize()
    assert_same_state("graph replay", opt, params, ref_opt, ref)
