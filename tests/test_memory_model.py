"""The projected GPU memory of `--fast` training (vidgan_fast/memory_model.py): the live-bytes counter by hand,
and the projection of the real steps on meta tensors against what must be in memory.

Mutation check, done by hand once: counting a storage again for each view or in-place result (no dedup), and never
freeing (no weak reference) each failed these tests."""
from __future__ import annotations

import pytest
import torch

from vidgan_fast import memory_model
from vidgan_fast.config import preset
from vidgan_fast.roofline import bank_params

pytestmark = pytest.mark.usefixtures("one_thread")


def test_live_bytes_by_hand():
    live = memory_model.LiveBytes()
    with live:
        a = torch.empty(1000, device="meta")                  # 4,000 B
        b = torch.empty(500, dtype=torch.bfloat16, device="meta")   # 1,000 B
        view, tail = a.view(10, 100), a[1:]                   # views: no new storage
        a.add_(1.0)                                           # in place: no new storage
        assert live.now == live.peak == 5000
        del a, view, tail
        assert live.now == 1000 and live.peak == 5000
        live.reset_peak()
        c = b.float()                                         # 2,000 B
        assert live.now == live.peak == 3000
    del b, c
    assert live.now == 0


@pytest.mark.parametrize("name", ["paper"])
def test_projection_holds_what_training_keeps(name):
    """Persistent bytes hold at least each bank's weights, gradients and square_avg (12 B per parameter); under
    bf16 phase 1 keeps exactly 2 B more per bank weight (the bf16 copies; G_F stays fp32). The steps' peaks sit
    above it, and the paper preset fits the paper's 11 GiB with the data set on the GPU."""
    cfg = preset(name)
    tf32, bf16 = memory_model.project(cfg, "tf32"), memory_model.project(cfg, "bf16")
    banks = {"frames": cfg.frames_k * bank_params(cfg.df_widths, 2),
             "video": cfg.video_k * bank_params(cfg.dv_widths, 3)}
    from vidgan_fast.roofline import frame_generator_params
    g_f = 4 * frame_generator_params(cfg)        # phase 2 keeps the reference G_F beside its folded renderer
    for r in tf32 + bf16:
        assert r["persistent"] >= 12 * banks[r["phase"]] + (2 * g_f if r["phase"] == "video" else 3 * g_f)
        assert r["persistent"] < r["d_peak"] and r["persistent"] < r["g_peak"]
    copies = cfg.frames_k * bank_params(cfg.df_widths, 2, biases=False)
    assert bf16[0]["persistent"] - tf32[0]["persistent"] == 2 * copies
    assert all(max(r["d_peak"], r["g_peak"]) + r["data"] < 11 * 2 ** 30 for r in tf32)


@pytest.mark.parametrize("phase", ["frames", "video"])
def test_every_tensor_the_state_holds_is_counted(phase):
    """Persistent memory starts from every module and optimizer state the training state holds (phase 2 keeps the
    reference G_F beside its folded renderer)."""
    from vidgan_fast.fast.backend import launching_nothing
    from vidgan_fast.fast.kernel_gate import meta_fast_state
    with launching_nothing():
        state = meta_fast_state(preset("tiny", fast=True), phase)
    counted = {id(t) for t in memory_model._state_tensors(state)}
    modules = [m for m in vars(state).values() if isinstance(m, torch.nn.Module)]
    optimizers = [o for o in vars(state).values() if isinstance(o, torch.optim.Optimizer)]
    held = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    held += [t for o in optimizers for s in o.state.values() for t in s.values() if torch.is_tensor(t)]
    assert len(modules) >= 2 and held and all(id(t) in counted for t in held)
