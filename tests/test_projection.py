"""The projection kernels (all K fixed projections in one launch, fast/projection.py) against the reference
discriminators' own `project`, forward and input-gradient backward, for frames and videos (under the interpreter on
CPU; at the GPU tiles too, kernels/common.forced_target).

Tolerance: both the fast result and the fp32 reference are compared with an fp64 run of the reference;
max |fast - fp64| <= 1e-5 * max |fp64| (fp32 epsilon is 1.2e-7; the sums here are 64 taps, or 64*K for dx).
"""
import copy

import pytest
import torch

from guard import guarded
from vidgan_fast import models
from vidgan_fast.fast.projection import project_frames, project_videos
from vidgan_fast.kernels.common import forced_target
from vidgan_fast.tolerance import relative_error, tolerance

RTOL = tolerance("fp32", reduction=1024)      # 64-tap sums and their transposes: 2e-5


def assert_fp64_close(what, fast, ref32, ref64, rtol=RTOL):
    scale = ref64.abs().max().item()
    err = (fast.double() - ref64).abs().max().item()
    err_ref = (ref32.double() - ref64).abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} * {scale:.3g} (fp32 reference: {err_ref:.3g})"


def run_reference(discriminators, x, grad_out):
    """Stacked reference projections [K, ...] of x (without their one-channel axis) and d(sum(out * grad_out))/dx."""
    x = x.detach().clone().requires_grad_()
    out = torch.stack([d.project(x)[:, 0] for d in discriminators])
    out.backward(grad_out)
    return out.detach(), x.grad


def check_projection(project, discriminators, x, family="interpreter", precision="fp32", rtol=RTOL):
    gen = torch.Generator().manual_seed(1)
    filters = torch.stack([d.projection[0, 0] for d in discriminators]).requires_grad_()
    xf = x.clone().requires_grad_()
    with forced_target(tile_family=family), guarded() as guard:
        out = project(xf, filters, precision=precision)
        grad_out = torch.randn(out.shape, generator=gen)
        out.backward(grad_out)
    guard()
    ref32, dx32 = run_reference(discriminators, x, grad_out)
    ref64, dx64 = run_reference([copy.deepcopy(d).double() for d in discriminators], x.double(), grad_out.double())
    assert out.shape == ref64.shape
    assert_fp64_close("projection", out, ref32, ref64, rtol)
    assert_fp64_close("input gradient", xf.grad, dx32, dx64)     # the backward has no precision choice
    assert filters.grad is None, "the projections are fixed: they must never get a gradient"


@pytest.mark.parametrize("k,b,size", [(1, 1, 30), (3, 3, 30), (70, 1, 30), (3, 2, 17)])
def test_project_frames_matches_reference(k, b, size, family="interpreter"):
    torch.manual_seed(k * 100 + b)
    ds = [models.FrameDiscriminator(seed=i, widths=(2, 2, 2)) for i in range(k)]
    x = torch.rand(b, 1, size, size + 2) * 2 - 1      # odd, non-square frames exercise every mask
    check_projection(project_frames, ds, x, family)


@pytest.mark.parametrize("k,b,t", [(1, 1, 30), (3, 2, 7), (16, 1, 3)])
def test_project_videos_matches_reference(k, b, t, family="interpreter"):
    torch.manual_seed(k * 100 + b)
    ds = [models.VideoDiscriminator(seed=1000 + i, widths=(2, 2, 2)) for i in range(k)]
    x = torch.rand(b, 1, t, 30, 30) * 2 - 1
    check_projection(project_videos, ds, x, family)


def test_projection_output_shapes_follow_design():
    filters = torch.stack([models.projection_filter(i)[0, 0] for i in range(4)])
    assert project_frames(torch.zeros(3, 1, 30, 30), filters).shape == (4, 3, 15, 15)
    assert project_videos(torch.zeros(2, 1, 30, 30, 30), filters).shape == (4, 2, 30, 9, 9)


def test_projection_rejects_bad_shapes():
    filters = torch.stack([models.projection_filter(i)[0, 0] for i in range(2)])
    with pytest.raises(ValueError, match="expected frames"):
        project_frames(torch.zeros(3, 2, 30, 30), filters)
    with pytest.raises(ValueError, match="expected videos"):
        project_videos(torch.zeros(3, 1, 30, 30), filters)
    with pytest.raises(ValueError, match="filters"):
        project_frames(torch.zeros(3, 1, 30, 30), filters[0])


def test_projection_with_gpu_tile_sizes():
    """The interpreter normally runs larger tiles (fewer numpy steps); the GPU tiles must be right too."""
    test_project_frames_matches_reference(5, 2, 30, family="hopper")
    test_project_videos_matches_reference(3, 2, 7, family="hopper")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_projection_k48_at_gpu_tiles(precision):
    """K=48 (the paper's frame discriminators) spans two of the GPU's 32-projection tiles, and 3 frames of 225
    outputs span 11 pixel tiles. What it catches (tried by breaking the kernel): a forward that ignores the
    projection-tile index (program_id(1) -> 0) fails with errors of 1e38; at K <= 32 (one tile) it passes.
    bf16 means bf16-rounded operands with fp32 accumulation, so its reference is fp64 on the rounded frames and
    filters, within the fp32 bound; it must also differ from fp32 (a switch that silently does nothing fails)."""
    torch.manual_seed(48)
    ds = [models.FrameDiscriminator(seed=i, widths=(2, 2, 2)) for i in range(48)]
    x = torch.rand(3, 1, 30, 30) * 2 - 1
    if precision == "fp32":
        check_projection(project_frames, ds, x, "hopper")
        return
    filters = torch.stack([d.projection[0, 0] for d in ds])
    with forced_target(tile_family="hopper"):
        out = project_frames(x, filters, "bf16")
        out32 = project_frames(x, filters, "fp32")
    rounded = [copy.deepcopy(d).double() for d in ds]
    for d in rounded:
        d.projection.copy_(d.projection.float().bfloat16().double())
    ref = torch.stack([d.project(x.bfloat16().double())[:, 0] for d in rounded])
    assert relative_error(out, ref) <= tolerance("fp32", 64)
    assert relative_error(out32, ref) > 1e-4
