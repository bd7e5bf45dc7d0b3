"""The FLOP model (vidgan_fast/lab/flops.py): hand counts of single layers, the paper configuration's per-step figures, and
cross-checks of whole models and whole reference training steps against torch.utils.flop_counter.

FlopCounterMode counts matmuls and convolutions (transposed ones as input pixels x kernel, as we do) but gives
nn.LSTM 0 FLOPs (the CPU kernel is one fused op it has no formula for), so LSTMs are checked separately against
an nn.LSTMCell unroll, which it does count, and added back where a model has one.
"""
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from vidgan_fast.lab import flops as F
from vidgan_fast.config import preset
from vidgan_fast.models import (FrameDiscriminator, FrameGenerator, VideoDiscriminator, VideoGenerator,
                                frame_discriminators)
from vidgan_fast import step as steps
from vidgan_fast.step import build_frame_generator, build_state


def counted(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


# ---------------------------------------------------------------- one layer, by hand

def test_conv_layer_hand_count():
    conv = nn.Conv2d(256, 512, 4, 2, 1)                    # D_F conv2: 8x8 -> 4x4
    [layer] = F.forward_layers(conv, conv, (3, 256, 8, 8))
    # each of 3 x 512 x 4 x 4 outputs is a dot product of length 256 x 4 x 4, 2 FLOPs per multiply-add
    assert layer.flops == 3 * 512 * 4 * 4 * (256 * 4 * 4) * 2 == 201_326_592


def test_conv_transpose_and_linear_and_conv3d_hand_counts():
    up = nn.ConvTranspose2d(1024, 512, 4, 2, 1)            # G_F up2: 4x4 -> 8x8
    assert F.total(F.forward_layers(up, up, (2, 1024, 4, 4))) == 2 * (2 * 1024 * 4 * 4) * (512 * 4 * 4)
    fc = nn.Linear(100, 4096)
    assert F.total(F.forward_layers(fc, fc, (5, 100))) == 2 * 5 * 100 * 4096
    conv3 = nn.Conv3d(256, 512, 4, (2, 1, 1), 1)           # D_V conv2: [15, 4, 4] -> [7, 3, 3]
    assert F.total(F.forward_layers(conv3, conv3, (1, 256, 15, 4, 4))) == 2 * 256 * 512 * 64 * (7 * 3 * 3)


def test_lstm_hand_count_and_cell_unroll():
    lstm = nn.LSTM(128, 256, num_layers=2, bidirectional=True)
    # per step, direction, sample: 4 gates x 256 x (in + 256) multiply-adds; layer 2 reads 2 x 256
    hand = 2 * 30 * 2 * 2 * 4 * 256 * ((128 + 256) + (512 + 256))
    assert F.total(F.forward_layers(lstm, lstm, (30, 2, 128))) == hand
    assert counted(lambda: lstm(torch.randn(3, 2, 128))) == 0     # why LSTMs are checked via the cell
    cell, x = nn.LSTMCell(12, 7), torch.randn(5, 4, 12)

    def unroll():
        h = c = torch.zeros(4, 7)
        for t in range(5):
            h, c = cell(x[t], (h, c))
    assert counted(unroll) == F.lstm_flops(5, 4, 12, 7)


def test_bad_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="positive integers"):
        F.frame_generator_flops(FrameGenerator(widths=(8, 8, 4, 4)), 0)


# ---------------------------------------------------------------- per-step figures of the paper configuration

def test_design_figures_at_paper_widths():
    g, d, v, dv = F.paper_models()                     # meta device: no memory
    assert F.frame_generator_flops(g) == pytest.approx(0.67e9, rel=0.01)
    assert F.frame_discriminator_flops(d) == pytest.approx(0.135e9, rel=0.01)
    assert F.video_discriminator_flops(dv) == pytest.approx(1.9e9, rel=0.02)
    p1 = F.phase1_d_step_flops(g, d, 48, 64)
    assert p1.parts["D_F forward"] == pytest.approx(0.8e12, rel=0.05)     # "48 of them on 128 frames"
    p2 = F.phase2_d_step_flops(v, g, dv, 16, 8)
    assert p2.parts["D_V forward"] == pytest.approx(0.5e12, rel=0.05)     # "16 of them on 16 videos"
    assert p2.parts["G_V+G_F forward"] > 240 * 0.67e9                      # G_F on 8 x 30 frames, plus G_V
    for step in (p1, p2, F.phase1_g_step_flops(g, d, 48, 64), F.phase2_g_step_flops(v, g, dv, 16, 8)):
        assert step.total == sum(step.parts.values()) == step.forward + step.backward


def test_counting_leaves_the_module_untouched():
    g = FrameGenerator(widths=(8, 8, 4, 4)).train()
    before = {k: t.clone() for k, t in g.state_dict().items()}
    F.frame_generator_flops(g, 3)
    assert g.training and all(torch.equal(before[k], t) for k, t in g.state_dict().items())


# ---------------------------------------------------------------- whole models vs FlopCounterMode

def test_models_match_flop_counter_at_small_widths():
    torch.manual_seed(0)
    g = FrameGenerator(widths=(16, 12, 8, 4)).eval()
    assert F.frame_generator_flops(g, 3) == counted(lambda: g(torch.randn(3, 100)))
    d = FrameDiscriminator(widths=(4, 8, 12))
    assert F.frame_discriminator_flops(d, 5) == counted(lambda: d(torch.randn(5, 1, 30, 30)))
    dv = VideoDiscriminator(widths=(4, 6, 8))
    assert F.video_discriminator_flops(dv, 2, 30) == counted(lambda: dv(torch.randn(2, 1, 30, 30, 30)))
    v = VideoGenerator(hidden=(16, 24), lstm_hidden=8).eval()
    lstm = F.lstm_flops(30, 2, 128, 8, 2, True)
    assert F.video_generator_flops(v, g, 2) == counted(lambda: v(torch.randn(2, 100), g)) + lstm


def test_backward_rules_match_autograd():
    """A D step needs weight grads and no gradient into conv1; a G step needs input grads only (and through
    the projection). FlopCounterMode sees exactly the gradients autograd computes."""
    torch.manual_seed(0)
    ds = frame_discriminators(2, (4, 8, 12))
    layers = F.frame_discriminator_layers(ds[0], 6)
    x = torch.randn(6, 1, 30, 30)
    assert counted(lambda: ds(x).sum().backward()) == 2 * (F.total(layers) + F.backward_flops(layers, True, False))
    ds.requires_grad_(False)
    xg = x.clone().requires_grad_()
    assert counted(lambda: ds(xg).sum().backward()) == 2 * (F.total(layers) + F.backward_flops(layers, False, True))


@pytest.mark.parametrize("phase", ["frames", "video"])
def test_step_counts_match_the_reference_training_steps(phase):
    """d_step / g_step at the tiny preset, counted by FlopCounterMode, equal the step formulas
    (phase 2 plus its LSTM: forward only in the D step, forward + input and weight grads in the G step)."""
    cfg = preset("tiny")
    state = build_state(cfg, phase, build_frame_generator(cfg).state_dict() if phase == "video" else None)
    k, b = state.phase.k, state.phase.batch
    real = torch.rand((b, 1, 30, 30) if phase == "frames" else (b, 1, 30, 30, 30)) * 2 - 1
    z = torch.randn(b, 100)
    d_counted = counted(lambda: steps.d_step(state, real, z))
    g_counted = counted(lambda: steps.g_step(state, z))
    if phase == "frames":
        d_step = F.phase1_d_step_flops(state.generator, state.discriminators, k, b)
        g_step = F.phase1_g_step_flops(state.generator, state.discriminators, k, b)
        lstm = 0
    else:
        args = (state.generator, state.frame_generator, state.discriminators, k, b)
        d_step, g_step = F.phase2_d_step_flops(*args), F.phase2_g_step_flops(*args)
        [lstm] = [layer.flops for layer in F.video_generator_layers(state.generator, b) if layer.kind == "LSTM"]
    assert d_step.total == d_counted + lstm
    assert g_step.total == g_counted + 3 * lstm
