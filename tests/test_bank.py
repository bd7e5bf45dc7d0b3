"""Discriminator banks (K discriminators as one module, fast/bank.py) against their reference twin: K reference
discriminators in a models.DiscriminatorList, the module the reference path trains.

Every comparison holds the bank's result AND the fp32 reference against an fp64 run of the references:
max |bank - fp64| <= RTOL * max |fp64| per tensor, RTOL = vidgan_fast.tolerance's fp32 bound for the longest sums
here (a few thousand terms: the weight gradients sum over B x positions). Weights are random with a unit-variance-
preserving scale (checks.randomize_weights), so logits and gradients are O(1) and relative errors mean something.
The kernels run under Triton's interpreter: at the interpreter's tiles for the tiny widths (4, 8, 16), and at the
GPU tiles (kernels/common.forced_target) for widths that span several of them. The layer-by-layer kernels are
tests/test_conv.py's and test_logit.py's; here the whole bank: the chain of passes, the LeakyReLU slopes applied in
the right epilogues, the bias gradients, and which gradients a step asks for.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from vidgan_fast import models
from vidgan_fast.checks import randomize_weights
from vidgan_fast.fast import bank as bank_module
from vidgan_fast.fast.bank import FrameDiscriminatorBank, VideoDiscriminatorBank
from vidgan_fast.fast.rmsprop import FusedRMSprop
from vidgan_fast.kernels.common import forced_target
from vidgan_fast.tolerance import relative_error, tolerance

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL = tolerance("fp32", reduction=4096)      # 4e-5
WIDTHS = (4, 8, 16)


def assert_fp64_close(what, fast, ref32, ref64, rtol=RTOL):
    scale = ref64.abs().max().item()
    err = (fast.double() - ref64).abs().max().item()
    err_ref = (ref32.double() - ref64).abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} * {scale:.3g} (fp32 reference: {err_ref:.3g})"


def randomize(module, seed):
    """Random weights N(0, 1/fan_in) and biases N(0, 0.1^2), so activations stay O(1) through the layers."""
    return randomize_weights(module, torch.Generator().manual_seed(seed))


def make_references(kind, k, seed=0, widths=WIDTHS):
    torch.manual_seed(seed)
    make = models.frame_discriminators if kind == "frame" else models.video_discriminators
    return randomize(make(k, widths), seed)


def make_input(kind, b, seed=0, frames=30):
    gen = torch.Generator().manual_seed(seed + 7)
    shape = (b, 1, 30, 30) if kind == "frame" else (b, 1, frames, 30, 30)
    return torch.rand(shape, generator=gen) * 2 - 1


def bank_class(kind):
    return FrameDiscriminatorBank if kind == "frame" else VideoDiscriminatorBank


def run(model, x, grad_logits):
    """logits, input gradient and parameter gradients (by reference suffix, stacked over k) of `model`."""
    x = x.detach().clone().requires_grad_()
    logits = model(x)
    logits.backward(grad_logits)
    if isinstance(model, models.DiscriminatorList):
        names = [suffix for _, suffix in FrameDiscriminatorBank.stacked_parameter_names()]
        grads = {n: torch.stack([d.get_parameter(n).grad for d in model]) for n in names}
    else:
        grads = {suffix: model.get_parameter(name).grad for name, suffix in model.stacked_parameter_names()}
    return logits.detach(), x.grad, grads


def check_bank(kind, k, b, seed=0, precision="fp32", rtol=RTOL, widths=WIDTHS):
    refs = make_references(kind, k, seed, widths)
    bank = bank_class(kind).from_reference(list(refs), precision=precision)
    x = make_input(kind, b, seed)
    grad_logits = torch.randn(k, b, generator=torch.Generator().manual_seed(seed + 3))
    logits, dx, grads = run(bank, x, grad_logits)
    logits32, dx32, grads32 = run(refs, x, grad_logits)
    logits64, dx64, grads64 = run(copy.deepcopy(refs).double(), x.double(), grad_logits.double())
    assert logits.shape == (k, b) and logits.dtype == torch.float32
    assert_fp64_close("logits", logits, logits32, logits64, rtol)
    assert_fp64_close("input gradient", dx, dx32, dx64, rtol)
    for name in grads64:
        assert grads[name].shape == grads64[name].shape, name
        assert_fp64_close(f"{name} gradient", grads[name], grads32[name], grads64[name], rtol)


@pytest.mark.parametrize("k,b", [(1, 1), (3, 2), (5, 3)])
def test_frame_bank_matches_references(k, b):
    check_bank("frame", k, b, seed=10 * k + b)


@pytest.mark.parametrize("k,b", [(1, 1), (2, 1)])
def test_video_bank_matches_references(k, b):
    check_bank("video", k, b, seed=10 * k + b)


@pytest.mark.parametrize("family", ["hopper", "ampere"])
def test_frame_bank_multi_tile_widths_at_gpu_tiles(family):
    """Widths 80 / 130 / 72 span several channel blocks in every pass (partial blocks: masks), at the GPU tiles;
    logits and every gradient against fp64."""
    with forced_target(tile_family=family):
        check_bank("frame", 2, 2, seed=5, widths=(80, 130, 72), rtol=tolerance("fp32", 16 * 130))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("kind", ["frame", "video"])
def test_bank_on_gpu_matches_references(kind, precision, monkeypatch):
    """On a GPU, at widths spanning several tiles: logits and every gradient within the derived bound for the
    precision (bf16 also stores 3 activations and 3 input gradients in bf16); PyTorch's own TF32 off so that the
    fp32 reference is fp32. A rounded forward can flip a LeakyReLU slope near 0 (an O(1) change of one element's
    gradient): the gradient bounds hold for the tensor's largest values, as everywhere here."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    check_bank(kind, 5, 3, seed=1, precision=precision, widths=(80, 130, 72),
               rtol=tolerance(precision, 16 * 130, layers=4, stored=6 if precision == "bf16" else 0))


@pytest.mark.parametrize("kind", ["frame", "video"])
def test_bf16_bank_matches_fp64(kind):
    """precision 'bf16': bf16 operands, fp32 accumulation, bf16 storage between the layers. Logits against fp64
    within the derived bound (4 layers of products, 3 stored activations); gradients of the weights against fp64 of
    the same (the slopes come from the bank's own rounded activations: the bound assumes none flipped, which these
    O(1) activations far from 0 make true for all but a few elements; those are within the bound's margin)."""
    k = 2 if kind == "frame" else 1
    refs = make_references(kind, k, seed=4)
    bank = bank_class(kind).from_reference(list(refs), precision="bf16")
    x = make_input(kind, k, seed=4)
    logits = bank(x)
    logits64 = copy.deepcopy(refs).double()(x.double())
    assert relative_error(logits, logits64) <= tolerance("bf16", 16 * 16, layers=4, stored=3)
    assert relative_error(logits, refs(x).double()) > 1e-5       # not the fp32 result: bf16 really ran


def test_backward_returns_the_dtypes_autograd_expects():
    """Checked on _Bank.backward's own return values, before autograd would convert them: the input gradient is
    fp32 (the projection's output is), every parameter gradient fp32 (the master weights), also under bf16."""
    refs = make_references("frame", 2)
    bank = FrameDiscriminatorBank.from_reference(list(refs), precision="bf16")
    seen = []
    original = bank_module._Bank.backward

    def spy(ctx, g):
        out = original(ctx, g)
        seen.append([None if t is None else t.dtype for t in out])
        return out
    bank_module._Bank.backward = staticmethod(spy)
    try:
        x = make_input("frame", 2).requires_grad_()
        bank(x).sum().backward()
    finally:
        bank_module._Bank.backward = staticmethod(original)
    assert seen and seen[0][0] == torch.float32 and seen[0][1] is None
    assert all(d == torch.float32 for d in seen[0][2:])


def test_a_d_step_asks_for_weights_only_and_a_g_step_for_the_input_only():
    """The backward computes only what is asked: no input gradient in a D step (real and generated samples need
    none), no weight gradients in a G step (the discriminators are frozen there: requires_grad_(False))."""
    refs = make_references("frame", 2)
    bank = FrameDiscriminatorBank.from_reference(list(refs))
    calls = []
    original = bank_module.C.conv_wgrad

    def counting(*a, **kw):
        calls.append("wgrad")
        return original(*a, **kw)
    bank_module.C.conv_wgrad = counting
    try:
        bank(make_input("frame", 2)).sum().backward()                # a D step: weights only
        assert calls == ["wgrad"] * 3 and all(p.grad is not None for p in bank.parameters())
        calls.clear()
        bank.requires_grad_(False)
        x = make_input("frame", 2).requires_grad_()
        bank(x).sum().backward()                                     # a G step: the input only
        assert calls == [] and x.grad is not None
    finally:
        bank_module.C.conv_wgrad = original


def test_weights_are_stored_channels_last_and_gradients_keep_their_layout():
    """Each weight parameter has the reference's shape [K, Cout, Cin, *kernel] over (tap, Cin)-contiguous memory
    (the kernels' layout); its gradient has the same strides (no copy into another layout), so the fused RMSprop
    updates parameter, gradient and state in one pass."""
    bank = VideoDiscriminatorBank.from_reference(list(make_references("video", 1)))
    bank(make_input("video", 1)).sum().backward()
    for name in ("conv2_weight", "conv3_weight"):
        w = bank.get_parameter(name)
        assert w.movedim(2, -1).is_contiguous() and not w.is_contiguous()
        assert w.grad.stride() == w.stride()


# ---- layouts: reference <-> bank ----

@pytest.mark.parametrize("kind", ["frame", "video"])
def test_round_trip_is_exact(kind):
    refs = make_references(kind, 3)
    cls = FrameDiscriminatorBank if kind == "frame" else VideoDiscriminatorBank
    bank = cls.from_reference(list(refs))
    back = bank.to_reference()
    assert [type(d) for d in back] == [type(d) for d in refs]
    assert [d.seed for d in back] == [d.seed for d in refs] and back[0].widths == WIDTHS
    for d, r in zip(back, refs):
        sd, rsd = d.state_dict(), r.state_dict()
        assert list(sd) == list(rsd)
        assert all(torch.equal(sd[key], rsd[key]) for key in sd)
    with torch.no_grad():        # to_reference carries the bank's *current* weights
        bank.conv3_weight[2].mul_(3.0)
    assert torch.equal(bank.to_reference()[2].conv3.weight, refs[2].conv3.weight * 3.0)
    assert torch.equal(bank.to_reference()[1].conv3.weight, refs[1].conv3.weight)


def test_to_reference_leaves_the_global_rng_alone():
    bank = FrameDiscriminatorBank.from_reference(list(make_references("frame", 2)))
    state = torch.get_rng_state()
    bank.to_reference()
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("kind", ["frame", "video"])
def test_reference_state_dict_equals_discriminator_list(kind):
    refs = make_references(kind, 4)
    cls = FrameDiscriminatorBank if kind == "frame" else VideoDiscriminatorBank
    bank = cls.from_reference(list(refs))
    sd, expected = bank.reference_state_dict(), refs.state_dict()
    assert list(sd) == list(expected)
    for key in expected:
        assert sd[key].shape == expected[key].shape and torch.equal(sd[key], expected[key]), key
    other = cls.from_reference(list(make_references(kind, 4, seed=5)))
    other.load_reference_state_dict(expected)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), bank.state_dict().values()))
    with pytest.raises(KeyError, match="missing keys"):
        other.load_reference_state_dict({key: v for key, v in expected.items() if key != "2.conv1.bias"})


def test_stacked_parameter_names_follow_parameter_order():
    refs = make_references("frame", 2)
    bank = FrameDiscriminatorBank.from_reference(list(refs))
    pairs = bank.stacked_parameter_names()
    assert [name for name, _ in bank.named_parameters()] == [name for name, _ in pairs]
    assert [name for name, _ in refs[0].named_parameters()] == [suffix for _, suffix in pairs]


def test_from_reference_validates_its_inputs():
    frames = [models.FrameDiscriminator(0, WIDTHS), models.FrameDiscriminator(1, (4, 8, 8))]
    with pytest.raises(ValueError, match="widths"):
        FrameDiscriminatorBank.from_reference(frames)
    with pytest.raises(TypeError, match="FrameDiscriminator"):
        FrameDiscriminatorBank.from_reference([models.VideoDiscriminator(0, WIDTHS)])
    with pytest.raises(ValueError, match="at least one"):
        VideoDiscriminatorBank.from_reference([])
    bank = FrameDiscriminatorBank.from_reference(frames[:1])
    with pytest.raises(ValueError, match=r"expected input frames \[B, 1, H, W\]"):
        bank(torch.zeros(2, 3, 30, 30))


# ---- training: an optimizer step on the bank is a step on each reference ----

@pytest.mark.parametrize("kind", ["frame", "video"])
def test_rmsprop_step_on_bank_equals_step_on_references(kind):
    """Same gradients in, same weights out: the stacked layout does not change what RMSprop does."""
    k, b = 3, 2
    refs = make_references(kind, k)
    cls = FrameDiscriminatorBank if kind == "frame" else VideoDiscriminatorBank
    bank = cls.from_reference(list(refs))
    x = make_input(kind, b)
    real = torch.ones(k, b)
    ref_opt = torch.optim.RMSprop(refs.parameters(), lr=3e-4)
    bank_opt = torch.optim.RMSprop(bank.parameters(), lr=3e-4)
    for _ in range(2):           # two steps, so the optimizer state carries over too
        ref_opt.zero_grad()
        F.binary_cross_entropy_with_logits(refs(x), real, reduction="none").mean(1).sum().backward()
        ref_opt.step()
        bank_opt.zero_grad()
        for name, suffix in bank.stacked_parameter_names():     # the reference's gradients, stacked
            bank.get_parameter(name).grad = torch.stack([d.get_parameter(suffix).grad for d in refs])
        bank_opt.step()
    sd, expected = bank.reference_state_dict(), refs.state_dict()
    for key in expected:
        assert torch.allclose(sd[key], expected[key], rtol=0, atol=1e-7), key


@pytest.mark.parametrize("fused", [False, True])
def test_training_step_with_own_gradients_matches_references(fused):
    """A full D step (per-k losses summed, backward, RMSprop) on the bank vs the references.

    RMSprop's first step is ~lr * sign(grad), which amplifies fp32 noise in near-zero gradients; so the
    references run in fp64 and the bank's result must agree to the fp32 gradient accuracy propagated
    through that step: |w_bank - w_ref64| <= lr * 1e-2 (instead of 2 lr for a wrong gradient sign).
    """
    k, b, lr = 3, 3, 1e-3
    refs = make_references("frame", k)
    bank = FrameDiscriminatorBank.from_reference(list(refs))
    refs64 = copy.deepcopy(refs).double()
    x = make_input("frame", b)                     # no input gradient here, as in a D step on real data
    target = torch.ones(k, b)
    for model, xin in [(bank, x), (refs64, x.double())]:
        cls = FusedRMSprop if fused and model is bank else torch.optim.RMSprop
        opt = cls(model.parameters(), lr=lr, eps=1e-3)   # eps damps the sign amplification
        F.binary_cross_entropy_with_logits(model(xin), target.to(xin.dtype), reduction="none").mean(1).sum().backward()
        opt.step()
    sd, expected = bank.reference_state_dict(), refs64.state_dict()
    for key in expected:
        err = (sd[key].double() - expected[key]).abs().max().item()
        assert err <= lr * 1e-2, f"{key}: {err:.3g}"


# ---- the bf16 copies the bank owns ----

def _current(bank) -> bool:
    return all(torch.equal(c, p.to(c.dtype)) for p, c in bank.stored_copy_of().items())


def test_bf16_copies_are_current_after_every_write_the_bank_knows_of():
    """The bank's stored bf16 weights equal its weights rounded to bf16 after construction, after
    load_reference_state_dict, after a FusedRMSprop step that was given them (written in the same pass), and after
    refresh_stored_weights(); a write the bank does not see (torch's own optimizer) leaves them stale until then.
    Under fp32 and tf32 the bank keeps no copies."""
    refs = make_references("frame", 2)
    assert FrameDiscriminatorBank.from_reference(list(refs)).stored_weights() == []
    bank = FrameDiscriminatorBank.from_reference(list(refs), precision="bf16")
    assert len(bank.stored_weights()) == 4 and _current(bank)
    bank.load_reference_state_dict(make_references("frame", 2, seed=9).state_dict())
    assert _current(bank)
    x = make_input("frame", 2)
    opt = FusedRMSprop(bank.parameters(), lr=1e-2, copies=bank.stored_copy_of())
    bank(x).sum().backward()
    opt.step()
    assert _current(bank)
    torch_opt = torch.optim.RMSprop(bank.parameters(), lr=1e-2)
    torch_opt.step()
    assert not _current(bank)
    bank.refresh_stored_weights()
    assert _current(bank)
    assert "conv1_weight_stored" not in bank.state_dict()        # never in a checkpoint
