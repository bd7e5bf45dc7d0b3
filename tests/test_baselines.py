"""The report's fair baselines (benchmarks/baselines.py): the stacked-vmap discriminators and bench_bank.py's
grouped-convolution column compute what the reference DiscriminatorList computes (logits, weight gradients; for
vmap also a D step's losses and updated weights), and the compile column is wired as documented (forward+loss
fullgraph, optimizer compiled, NVTX off). CPU, seconds; no speed is asserted, and nothing here runs inductor (it
takes minutes per function on a CPU)."""
import contextlib

import pytest
import torch

from vidgan_fast import profiling
from vidgan_fast import step as steps
from vidgan_fast.benchmarks import baselines
from vidgan_fast.benchmarks.baselines import GroupedDiscriminators, StackedDiscriminators, to_vmap
from vidgan_fast.config import preset
from vidgan_fast.models import frame_discriminators, video_discriminators
from vidgan_fast.tolerance import relative_error, tolerance

pytestmark = pytest.mark.usefixtures("one_thread")
FP32 = tolerance("fp32", reduction=1024)
CASES = {"frames": (lambda: frame_discriminators(3, (4, 8, 8), seed=5), (6, 1, 30, 30)),
         "video": (lambda: video_discriminators(2, (4, 8, 8), seed=7), (3, 1, 30, 30, 30))}


@pytest.mark.parametrize("kind", CASES)
def test_vmap_logits_and_weight_gradients_match_the_reference(kind):
    build, shape = CASES[kind]
    torch.manual_seed(0)
    reference = build()
    stacked = StackedDiscriminators(reference)
    exact = build().double()                           # the same weights (same seeds), in fp64
    exact.load_state_dict(reference.state_dict())
    x = torch.rand(shape) * 2 - 1
    logits, want = stacked(x), exact(x.double())
    assert logits.shape == want.shape == (len(reference), shape[0])
    assert relative_error(logits, want) <= FP32
    (logits.square().sum() + logits.sum()).backward()
    (want.square().sum() + want.sum()).backward()
    named = [dict(d.named_parameters()) for d in exact]
    for name in stacked.param_names:
        grad = stacked.stacked[name.replace(".", "__")].grad
        ref = torch.stack([params[name].grad for params in named])
        assert grad.shape == ref.shape and relative_error(grad, ref) <= FP32, name
    # the layout round trip: discriminator k's slices under the DiscriminatorList's keys
    state = stacked.reference_state_dict()
    assert state.keys() == reference.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


@pytest.mark.parametrize("kind", CASES)
def test_grouped_convolutions_match_the_reference(kind):
    """bench_bank.py's 'grouped' column (no longer in the product): the same logits and weight gradients as the K
    reference discriminators, its parameters copies of theirs (stacked [K, ...])."""
    build, shape = CASES[kind]
    torch.manual_seed(0)
    reference = build()
    grouped = GroupedDiscriminators(reference)
    exact = build().double()
    exact.load_state_dict(reference.state_dict())
    x = torch.rand(shape) * 2 - 1
    logits, want = grouped(x), exact(x.double())
    assert logits.shape == want.shape == (len(reference), shape[0])
    assert relative_error(logits, want) <= FP32
    logits.square().sum().backward()
    want.square().sum().backward()
    for layer in GroupedDiscriminators.LAYERS:
        for kind_ in ("weight", "bias"):
            grad = getattr(grouped, f"{layer}_{kind_}").grad
            ref = torch.stack([getattr(getattr(d, layer), kind_).grad for d in exact])
            assert grad.shape == ref.shape and relative_error(grad, ref) <= FP32, (layer, kind_)
    before = reference[0].conv2.weight.detach().clone()
    with torch.no_grad():
        grouped.conv2_weight.add_(1.0)                     # copies: the references' weights are not shared
    assert torch.equal(reference[0].conv2.weight, before)


def _pair(phase, dtype=torch.float32):
    """The same tiny training state twice (same seeds), the second with stacked-vmap discriminators."""
    cfg = preset("tiny", device="cpu")
    gf = steps.build_frame_generator(cfg).state_dict() if phase == "video" else None
    states = [steps.build_state(cfg, phase, gf) for _ in range(2)]
    for state in states:                    # in place: the optimizers keep their parameters
        for module in (state.generator, state.discriminators, state.renderer):
            if module is not None:
                module.to(dtype)
    return states[0], to_vmap(states[1])


def _stacked_reference(state, per_param) -> dict:
    """{name: [K, ...]} of per_param(p) over the reference discriminators' parameters named `name`."""
    named = [dict(d.named_parameters()) for d in state.discriminators]
    return {n: torch.stack([per_param(params[n]) for params in named]) for n in named[0]}


def _steps(reference, stacked, dtype, check_d=lambda: None):
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        real = (torch.rand(reference.phase.sample_shape, generator=gen) * 2 - 1).to(dtype)
        z_d, z_g = (torch.randn(reference.phase.batch, steps.Z_DIM, generator=gen).to(dtype) for _ in range(2))
        d_ref, d_vmap = steps.d_step(reference, real, z_d), steps.d_step(stacked, real, z_d)
        assert relative_error(d_vmap, d_ref) <= FP32
        check_d()
        g_ref, g_vmap = steps.g_step(reference, z_g), steps.g_step(stacked, z_g)
        assert relative_error(g_vmap, g_ref) <= FP32
    assert all(p.requires_grad for p in stacked.discriminators.parameters())     # g_step gave them back


@pytest.mark.parametrize("phase", ["frames", "video"])
def test_vmap_steps_give_the_reference_losses(phase):
    """fp32, two D and G steps on the training code's d_step / g_step: the same losses."""
    reference, stacked = _pair(phase)
    opt = stacked.d_opt
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["foreach"] is True
    assert opt.param_groups[0]["lr"] == reference.d_opt.param_groups[0]["lr"]
    assert len(opt.param_groups[0]["params"]) == 8       # one stacked tensor per reference parameter
    _steps(reference, stacked, torch.float32)


@pytest.mark.parametrize("phase", ["frames", "video"])
def test_vmap_d_step_updates_as_the_reference(phase):
    """The same two steps in fp64, so that the comparison tests the formulation and not fp32 rounding: after each
    D step the weight gradients, RMSprop's square_avg and the updated weights. (In fp32 the weights cannot be
    held to a tensor-wide bound: the bias gradient of conv4 is a sum of +-0.5/B terms that cancels to ~1e-4, and
    RMSprop divides each gradient by its own running magnitude, so rounding noise there moves a weight by ~lr.)"""
    reference, stacked = _pair(phase, torch.float64)

    def check_d():
        grads = _stacked_reference(reference, lambda p: p.grad)
        averages = _stacked_reference(reference, lambda p: reference.d_opt.state[p]["square_avg"])
        weights = _stacked_reference(reference, lambda p: p)
        for name, param in stacked.discriminators.stacked.items():
            name = name.replace("__", ".")
            assert relative_error(param.grad, grads[name]) <= FP32, name
            assert relative_error(stacked.d_opt.state[param]["square_avg"], averages[name]) <= FP32, name
            assert relative_error(param, weights[name]) <= FP32, name
    _steps(reference, stacked, torch.float64, check_d)


def test_nvtx_disabled_turns_ranges_into_no_ops():
    with profiling.nvtx_disabled():
        with profiling.nvtx_disabled():
            assert isinstance(profiling.nvtx_range("x", "data"), contextlib.nullcontext)
        assert isinstance(profiling.nvtx_range("x"), contextlib.nullcontext)
    assert profiling._enabled is True


@pytest.mark.parametrize("phase", ["frames", "video"])
def test_the_compile_column_compiles_forward_fullgraph_and_the_optimizer(phase, monkeypatch):
    """torch.compile replaced by a recorder: what is compiled, with which options, and in what setting it runs."""
    compiled, seen = [], []

    def fake_compile(fn, **kwargs):
        compiled.append((getattr(fn, "__name__", type(fn).__name__), kwargs))

        def run(*a, **kw):
            seen.append((profiling._enabled, torch._dynamo.config.allow_rnn))
            return fn(*a, **kw)
        return run
    monkeypatch.setattr(torch, "compile", fake_compile)
    reference, stacked = _pair(phase)
    kw = {"mode": "max-autotune", "dynamic": False}
    d = baselines.compiled_step(reference, "D", kw)
    g = baselines.compiled_step(stacked, "G", kw)
    names = [name for name, _ in compiled]
    assert names == ["step", "d_losses", "step", "g_loss"]      # optimizer steps, then the forward+loss
    assert all(options == {**kw, "fullgraph": True} for name, options in compiled if name != "step")
    assert all(options == kw for name, options in compiled if name == "step")
    real = torch.rand(reference.phase.sample_shape) * 2 - 1
    z = torch.randn(reference.phase.batch, steps.Z_DIM)
    assert torch.isfinite(d((real, z))) and torch.isfinite(g(z))
    assert len(seen) == 4 and all(not nvtx for nvtx, _ in seen)      # forward and optimizer, D and G
    assert all(rnn == (phase == "video") for _, rnn in seen)
    assert profiling._enabled and not torch._dynamo.config.allow_rnn
