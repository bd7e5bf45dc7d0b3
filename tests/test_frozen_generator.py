"""FrozenFrameGenerator (BN-folded G_F, Triton kernels, code-only backward) against the reference G_F.

The module's reference twin is the G_F it was folded from, in eval mode (what phase 2 renders with on the
reference path). The module and the fp32 reference are compared with an fp64 run of the reference, as the largest
error relative to the largest fp64 value: fp32 with reductions of up to a few thousand terms lands near 1e-6;
the bound FP32_TOL is vidgan_fast.tolerance's for such sums (the fp32 eager reference is checked against it too).
Outputs are written inside sentinel-filled buffers (tests/guard.py). Under the Triton interpreter (CPU) the widths are small;
of the paper's layer shapes only the last two transposed convolutions at M = 1 are affordable there (about
15 s; up1 and up2 take minutes each), the full paper-width generator is checked by the GPU-only test.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vidgan_fast.kernels.frame_generator as K
from guard import guarded
from vidgan_fast.fast.frozen_generator import FrozenFrameGenerator
from vidgan_fast.kernels.common import forced_target
from vidgan_fast.models import FrameGenerator, VideoGenerator
from vidgan_fast.tolerance import tolerance

FP32_TOL = tolerance("fp32", reduction=4096)    # 4e-5
TINY = (16, 16, 16, 16)


def random_frame_generator(widths=TINY, z_dim=100, seed=0) -> FrameGenerator:
    """A G_F in eval mode with random weights scaled to keep activations O(1) and non-trivial BN statistics."""
    torch.manual_seed(seed)
    g = FrameGenerator(z_dim, widths)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, m.in_features ** -0.5)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.ConvTranspose2d):
                m.weight.normal_(0, (4 * m.in_channels) ** -0.5)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    return g.eval()


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()


def run(module, codes: torch.Tensor, grad_frames: torch.Tensor):
    """(frames, code gradient) of module at codes for the upstream gradient grad_frames (the fast module's outputs
    inside guard bands)."""
    codes = codes.clone().requires_grad_(True)
    with guarded() as guard:
        frames = module(codes)
        frames.backward(grad_frames.to(frames.dtype))
    guard()
    return frames.detach(), codes.grad


def fp64_reference(g: FrameGenerator, codes, grad_frames):
    return run(copy.deepcopy(g).double().eval(), codes.double(), grad_frames.double())


@pytest.mark.parametrize("widths,M", [(TINY, 1), (TINY, 31), ((24, 20, 12, 8), 7)])
def test_matches_reference(widths, M, device):
    g = random_frame_generator(widths, seed=M).to(device)
    codes = torch.randn(M, 100, device=device)
    grad_frames = torch.randn(M, 1, 30, 30, device=device)
    y64, dz64 = fp64_reference(g, codes, grad_frames)
    assert 0.05 < y64.std() and y64.abs().max() < 0.999   # a non-trivial, unsaturated output
    y32, dz32 = run(g, codes, grad_frames)
    assert rel_err(y32, y64) < FP32_TOL and rel_err(dz32, dz64) < FP32_TOL   # the bound is reachable

    frozen = FrozenFrameGenerator.from_reference(g)
    y, dz = run(frozen, codes, grad_frames)
    assert y.shape == (M, 1, 30, 30) and dz.shape == (M, 100) and dz.dtype == torch.float32
    assert rel_err(y, y64) < FP32_TOL
    assert rel_err(dz, dz64) < FP32_TOL


def test_small_outputs_at_dcgan_init(device):
    """A freshly initialised G_F (N(0, 0.02) weights, unit BN statistics) renders outputs near 1e-4, where a
    tanh computed as (1 - e) / (1 + e) loses relative precision; the output must still be fp32-accurate."""
    torch.manual_seed(3)
    g = FrameGenerator(widths=(32, 32, 16, 8)).eval().to(device)
    codes, grad = torch.randn(9, 100, device=device), torch.randn(9, 1, 30, 30, device=device)
    ref_frames, ref_grad = run(copy.deepcopy(g).double(), codes.double(), grad.double())
    assert ref_frames.abs().max() < 1e-2          # the regime this test is about
    frames, code_grad = run(FrozenFrameGenerator.from_reference(g), codes, grad)
    assert rel_err(frames, ref_frames) < FP32_TOL
    assert rel_err(code_grad, ref_grad) < FP32_TOL


def test_gpu_tile_sizes(device):
    """The GPU tiles (kernels/tiles.py: 128 rows, N up to 128, reduction steps of 32) also under the interpreter,
    at widths that span several of them (80: a partial block)."""
    g = random_frame_generator((64, 80, 48, 16), seed=3).to(device)
    codes, grad_frames = torch.randn(3, 100, device=device), torch.randn(3, 1, 30, 30, device=device)
    y64, dz64 = fp64_reference(g, codes, grad_frames)
    with forced_target(tile_family="hopper"):
        y, dz = run(FrozenFrameGenerator.from_reference(g), codes, grad_frames)
    assert rel_err(y, y64) < FP32_TOL and rel_err(dz, dz64) < FP32_TOL


@pytest.mark.parametrize("sms", [1, 132])
@pytest.mark.parametrize("cin,cout,size,pad", [(256, 1, 16, 2), (512, 256, 8, 1)])
def test_paper_width_layer(cin, cout, size, pad, sms, device):
    """One paper-width transposed convolution at M = 1: forward, and input gradient with the fused masks, its
    reduction in one program per output tile (sms=1) or split over several (132 SMs: fp32 partials)."""
    torch.manual_seed(cin)
    w = torch.randn(cin, cout, 4, 4, device=device, dtype=torch.float64) * (4 * cin) ** -0.5
    b = torch.randn(cout, device=device, dtype=torch.float64) * 0.1
    x = torch.randn(1, cin, size, size, device=device, dtype=torch.float64).relu()   # a ReLU output
    pre = F.conv_transpose2d(x, w, b, stride=2, padding=pad)
    y64 = torch.tanh(pre) if cout == 1 else pre.relu()
    grad = torch.randn_like(y64)
    dpre = grad * (1 - y64 ** 2) if cout == 1 else grad * (y64 > 0)
    dx64 = torch.ops.aten.convolution_backward(dpre, x, w, None, [2, 2], [pad, pad], [1, 1], True, [0, 0], 1,
                                               [True, False, False])[0] * (x > 0)
    nhwc = lambda t: t.float().permute(0, 2, 3, 1).contiguous()   # noqa: E731
    wf = K.pack_forward_weight(w.float(), pad) if cout > 1 else K.pack_tap_weight(w.float())
    if cout == 1:
        y = K.conv_transpose_tanh(nhwc(x), wf, b.float(), pad)[:, None]
        dx = K.conv_transpose_input_grad(nhwc(grad), K.pack_backward_weight(w.float()), pad,
                                         relu_input=nhwc(x), tanh_out=y.permute(0, 2, 3, 1).contiguous(), sms=sms)
    else:
        y = K.conv_transpose_relu(nhwc(x), wf, b.float(), pad).permute(0, 3, 1, 2)
        dx = K.conv_transpose_input_grad(nhwc(grad * (y64 > 0)), K.pack_backward_weight(w.float()), pad,
                                         relu_input=nhwc(x), sms=sms)
    assert rel_err(y, y64) < FP32_TOL
    assert rel_err(dx.permute(0, 3, 1, 2), dx64) < FP32_TOL


def test_no_parameters_and_nothing_requires_grad():
    frozen = FrozenFrameGenerator.from_reference(random_frame_generator())
    assert len(list(frozen.parameters())) == 0
    assert all(not b.requires_grad for b in frozen.buffers())
    codes = torch.randn(2, 100, requires_grad=True)
    frozen(codes).sum().backward()
    assert codes.grad is not None and all(b.grad is None for b in frozen.buffers())


def test_folded_once_and_independent_of_the_reference(device):
    g = random_frame_generator(seed=11).to(device)
    frozen = FrozenFrameGenerator.from_reference(g).train()   # no BN left: train() changes nothing
    before = {k: v.clone() for k, v in frozen.named_buffers()}
    codes = torch.randn(5, 100, device=device)
    y1 = frozen(codes)
    with torch.no_grad():                                  # later changes to g do not reach the frozen copy
        g.bn2.running_mean.add_(1.0)
        g.up3.weight.mul_(2.0)
    y2 = frozen(codes)
    assert torch.equal(y1, y2)
    assert all(torch.equal(before[k], v) for k, v in frozen.named_buffers())
    state = frozen.state_dict()
    assert not any(k.endswith(("_forward", "_backward", "_nhwc")) for k in state)   # packed layouts derived
    other = FrozenFrameGenerator.from_reference(random_frame_generator(seed=12).to(device))
    other.load_state_dict(state)                             # re-packs the kernel layouts
    assert torch.equal(other(codes), y1)


def test_video_generator_step_equals_reference(device):
    """One RMSprop step of a tiny G_V through the frozen module equals one through the reference G_F."""
    g = random_frame_generator(seed=21).to(device).requires_grad_(False)
    torch.manual_seed(22)
    gv_ref = VideoGenerator(z_dim=8, hidden=(16, 16), steps=4, step_dim=8, lstm_hidden=8).to(device)
    gv_fast = copy.deepcopy(gv_ref)
    frozen = FrozenFrameGenerator.from_reference(g)
    z = torch.randn(3, 8, device=device)
    target = torch.rand(3, 1, 4, 30, 30, device=device) * 2 - 1
    grads = []
    for gv, frame_generator in ((gv_ref, g), (gv_fast, frozen)):
        opt = torch.optim.RMSprop(gv.parameters(), lr=2e-4)
        loss = ((gv(z, frame_generator) - target) ** 2).mean()
        loss.backward()
        grads.append([p.grad.clone() for p in gv.parameters()])
        opt.step()
    assert all(p.grad is None for p in g.parameters())
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= FP32_TOL * a.abs().max() + 1e-12
    for a, b in zip(gv_ref.parameters(), gv_fast.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)   # RMSprop's first step moves each weight ~2e-3


def test_bad_codes_are_rejected():
    frozen = FrozenFrameGenerator.from_reference(random_frame_generator())
    with pytest.raises(ValueError, match=r"codes must be \[M, 100\]"):
        frozen(torch.randn(4, 99))
    with pytest.raises(ValueError, match="codes are torch.float64"):
        frozen(torch.randn(4, 100, dtype=torch.float64))
    with pytest.raises(ValueError, match="precision must be one of"):
        FrozenFrameGenerator.from_reference(random_frame_generator(), precision="fp16")
    with pytest.raises(TypeError, match="expected a models.FrameGenerator"):
        FrozenFrameGenerator.from_reference(nn.Linear(3, 3))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_paper_widths_on_gpu(precision):
    g = random_frame_generator((1024, 1024, 512, 256), seed=1).cuda()
    codes, grad_frames = torch.randn(240, 100, device="cuda"), torch.randn(240, 1, 30, 30, device="cuda")
    y64, dz64 = fp64_reference(g, codes, grad_frames)
    tol = tolerance(precision, 16 * 1024, layers=5, stored=4 if precision == "bf16" else 0)   # bf16: h0..h3 stored
    y, dz = run(FrozenFrameGenerator.from_reference(g, precision=precision), codes, grad_frames)
    assert rel_err(y, y64) < tol
    if precision == "fp32":    # rounded products flip ReLU masks near 0: the code gradient has no bound vs fp64
        assert rel_err(dz, dz64) < tol
