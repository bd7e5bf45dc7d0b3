"""bf16 weight copies written by the fused RMSprop (vidgan_fast/fast/weight_copy.py, kernels/rmsprop.py).

Under bf16 storage the banks' kernels read a bf16 copy of each fp32 master weight. The fused RMSprop writes it in
the same pass as the update, so a training step never casts; any other change of the weight (a load, a reference
optimizer step, a hand edit, the CUDA-graph warm-up's restore) leaves it stale, and the next read recasts it.
The spec of a copy: bitwise torch's `w.to(bf16)` (round to nearest even) of the weight as it is now.

Mutation check, done by hand once (each edit applied alone, then reverted): the kernel storing the copy truncated
instead of rounded, the kernel not storing the copy at all (left as before the update, still marked current),
FusedRMSprop not marking the copies current, and GraphedSteps not refreshing them after its restore each failed
at least one test here.
"""
from __future__ import annotations

import pytest
import torch

from vidgan_fast.fast import graphs, weight_copy
from vidgan_fast.fast.bank import FrameDiscriminatorBank
from vidgan_fast.fast.rmsprop import FusedRMSprop
from vidgan_fast.kernels.rmsprop import rmsprop_update

from test_bank import make_references
from test_fast_training import fresh, real_and_noise, small_cfg
from test_graphs import FakeRuntime
from test_rmsprop import LR, make_grads, make_params, set_grads

pytestmark = pytest.mark.usefixtures("one_thread")
BF16 = torch.bfloat16


def copies_like(params, dtype):
    return [torch.full_like(p, float("nan"), dtype=dtype, memory_format=torch.preserve_format) for p in params]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tiles", ["gpu", "auto"])
def test_update_writes_each_copy_rounded_to_nearest(dtype, tiles):
    """Odd sizes, an empty tensor, several GPU tiles, a channels-last tensor: the copies are exactly w_new.to(dtype),
    and w and v are exactly those of the same launch without copies."""
    params, twins = [p.detach() for p in make_params()], [p.detach() for p in make_params()]
    grads = make_grads(params, torch.Generator().manual_seed(4))
    avgs = [torch.rand_like(p) for p in params]
    avgs_twin = [v.clone(memory_format=torch.preserve_format) for v in avgs]
    copies = copies_like(params, dtype)
    rmsprop_update(params, grads, avgs, None, LR, 0.99, 1e-8, tiles=tiles, copies=copies)
    rmsprop_update(twins, grads, avgs_twin, None, LR, 0.99, 1e-8, tiles=tiles)
    for p, q, v, w, c in zip(params, twins, avgs, avgs_twin, copies):
        assert torch.equal(p, q) and torch.equal(v, w)
        assert c.stride() == p.stride() and torch.equal(c, p.to(dtype)), tuple(p.shape)


def test_update_rejects_copies_it_cannot_write():
    p, g, v = torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, 3)
    for bad in (torch.zeros(4, 3), torch.zeros(3, 4, dtype=BF16), torch.zeros(3, 4, dtype=BF16).t()):
        with pytest.raises(ValueError, match="each copy must be bf16 or fp16 with its parameter's shape"):
            rmsprop_update([p], [g], [v], None, LR, 0.99, 1e-8, copies=[bad])
    with pytest.raises(ValueError, match="same length"):
        rmsprop_update([p], [g], [v], None, LR, 0.99, 1e-8, copies=[])


def step_with_copies(impl):
    params = make_params()
    opt = FusedRMSprop(params, lr=LR, impl=impl)
    with_copy = params[::2]
    for p in with_copy:
        weight_copy.stored_copy(p, BF16)
    versions = [p._version for p in params]
    gen = torch.Generator().manual_seed(6)
    for _ in range(2):
        set_grads(params, make_grads(params, gen))
        opt.step()
    return params, with_copy, versions


def test_the_fused_step_writes_the_copies_and_keeps_them_current():
    params, with_copy, versions = step_with_copies("triton")
    assert all(p._version > v for p, v in zip(params, versions))          # as an in-place update moves them
    for p in with_copy:
        assert weight_copy.is_current(p) and weight_copy.copy_of(p)._version > 0     # the copy's too
        assert torch.equal(weight_copy.copy_of(p), p.detach().to(BF16))
    assert all(weight_copy.copy_of(p) is None for p in params[1::2])


def test_after_a_reference_step_the_copy_is_stale_and_recast_on_read():
    params, with_copy, _ = step_with_copies("ref")
    for p in with_copy:
        assert not weight_copy.is_current(p)
        assert torch.equal(weight_copy.stored_copy(p, BF16), p.detach().to(BF16))
        assert weight_copy.is_current(p)


def test_any_in_place_change_makes_the_copy_stale():
    module = torch.nn.Linear(5, 3)
    w = module.weight
    first = weight_copy.stored_copy(w, BF16)
    assert weight_copy.stored_copy(w, BF16) is first and weight_copy.is_current(w)
    changes = [lambda: w.add_(1.0), lambda: module.load_state_dict(torch.nn.Linear(5, 3).state_dict()),
               lambda: torch.optim.RMSprop([w], lr=0.1).step()]
    w.grad = torch.ones_like(w)
    for change in changes:
        with torch.no_grad():
            change()
        assert not weight_copy.is_current(w)
        assert torch.equal(weight_copy.stored_copy(w, BF16), w.detach().to(BF16))
    assert weight_copy.stored_copy(w, torch.float16).dtype == torch.float16     # another dtype: a new copy


def test_a_copy_made_in_inference_mode_serves_training_afterwards():
    w = torch.nn.Parameter(torch.randn(4, 3))
    with torch.inference_mode():
        weight_copy.stored_copy(w, BF16)
    copy = weight_copy.stored_copy(w, BF16)
    assert not copy.is_inference() and torch.equal(copy, w.detach().to(BF16))
    copy.add_(0)                                        # writable outside inference mode


def test_a_bf16_bank_trains_on_the_copies_the_optimizer_wrote():
    """Two fused training steps of a bf16 bank: after each, every weight's copy is current, and the logits read
    through them equal (bitwise) the logits after a forced recast of every copy."""
    refs = make_references("frame", 2, seed=3, widths=(4, 8, 16))
    bank = FrameDiscriminatorBank.from_reference(list(refs), impl="triton", precision="bf16")
    opt = FusedRMSprop(bank.parameters(), lr=1e-2, impl="triton")
    x = torch.rand(3, 1, 30, 30, generator=torch.Generator().manual_seed(0)) * 2 - 1
    weights = [p for name, p in bank.named_parameters() if name.endswith("_weight")]
    for _ in range(2):
        opt.zero_grad()
        bank(x).square().mean().backward()
        opt.step()
        assert all(weight_copy.is_current(w) for w in weights)
    with torch.no_grad():
        read = bank(x)
        for w in weights:
            torch.autograd.graph.increment_version(w)
        recast = bank(x)
    assert torch.equal(read, recast)
    assert not torch.equal(weight_copy.copy_of(weights[1]), refs[0].conv2.weight.detach().to(BF16))   # trained


def test_graph_capture_starts_from_current_copies():
    """GraphedSteps rewinds its warm-up by copying the weights back, which leaves their copies stale: it recasts
    them before capture, so the captured step reads them instead of recording a cast."""
    cfg = small_cfg()
    state = fresh(cfg, "frames")
    real = real_and_noise(cfg, "frames", 0)[0]
    weights = [p for p in state.discriminators.parameters() if p.dim() > 1]
    for w in weights:
        weight_copy.stored_copy(w, BF16)
    before = [w.detach().clone() for w in weights]
    seen = []

    class Recording(FakeRuntime):
        def capture(self, fn, share_pool_with=None):
            seen.append([weight_copy.is_current(w) and torch.equal(weight_copy.copy_of(w), b.to(BF16))
                         for w, b in zip(weights, before)])
            return super().capture(fn, share_pool_with)

    graphs.GraphedSteps(state, real.shape, real.shape[0], warmup=1, runtime=Recording)
    assert len(seen) == 2 and all(all(s) for s in seen[:1]), seen


def test_a_replay_after_an_eager_weight_write_reads_a_recast_copy():
    """Between replays no Python checks the copies; GraphedSteps.d() recasts those an eager write (a load, a hand
    edit) left stale, before it replays."""
    cfg = small_cfg()
    state = fresh(cfg, "frames")
    real = real_and_noise(cfg, "frames", 0)[0]
    w = next(p for p in state.discriminators.parameters() if p.dim() > 1)
    weight_copy.stored_copy(w, BF16)
    graphed = graphs.GraphedSteps(state, real.shape, real.shape[0], warmup=1, runtime=FakeRuntime)
    with torch.no_grad():
        w.add_(1.0)
    seen, replay = [], graphed.d_graph.replay
    graphed.d_graph.replay = lambda: (seen.append(weight_copy.is_current(w) and torch.equal(
        weight_copy.copy_of(w), w.detach().to(BF16))), replay())
    graphed.d(real)
    assert seen == [True]
