"""The projection kernel (all K fixed projections in one launch) against the reference discriminators' own
`project`, forward and input-gradient backward, for frames and videos, impl='triton' (interpreter on CPU) and 'ref'.

Tolerance: both the fast result and the fp32 reference are compared with an fp64 run of the reference;
max |fast - fp64| <= 1e-5 * max |fp64| (fp32 epsilon is 1.2e-7; the sums here are 64 taps, or 64*K for dx).
"""
import copy

import pytest
import torch

from vidgan_fast import models
from vidgan_fast.fast import backend
from vidgan_fast.fast.projection import project_frames, project_videos
from vidgan_fast.tolerance import relative_error, tolerance

RTOL = tolerance("fp32", reduction=1024)      # 64-tap sums and their transposes: 2e-5


def assert_fp64_close(what, fast, ref32, ref64, rtol=RTOL):
    scale = ref64.abs().max().item()
    err = (fast.double() - ref64).abs().max().item()
    err_ref = (ref32.double() - ref64).abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} * {scale:.3g} (fp32 reference: {err_ref:.3g})"


def run_reference(discriminators, x, grad_out):
    """Stacked reference projections [K, ...] of x and d(sum(out * grad_out))/dx."""
    x = x.detach().clone().requires_grad_()
    out = torch.stack([d.project(x) for d in discriminators])
    out.backward(grad_out)
    return out.detach(), x.grad


def check_projection(project, discriminators, x, impl, tiles="auto", precision="fp32", rtol=RTOL):
    gen = torch.Generator().manual_seed(1)
    filters = torch.stack([d.projection[0, 0] for d in discriminators]).requires_grad_()
    xf = x.clone().requires_grad_()
    out = project(xf, filters, impl=impl, tiles=tiles, precision=precision)
    grad_out = torch.randn(out.shape, generator=gen)
    out.backward(grad_out)
    ref32, dx32 = run_reference(discriminators, x, grad_out)
    ref64, dx64 = run_reference([copy.deepcopy(d).double() for d in discriminators], x.double(), grad_out.double())
    assert out.shape == ref64.shape
    assert_fp64_close("projection", out, ref32, ref64, rtol)
    assert_fp64_close("input gradient", xf.grad, dx32, dx64)     # the backward has no precision choice
    assert filters.grad is None, "the projections are fixed: they must never get a gradient"


@pytest.mark.parametrize("impl", ["triton", "ref"])
@pytest.mark.parametrize("k,b,size", [(1, 1, 30), (3, 3, 30), (5, 2, 30), (70, 1, 30), (3, 2, 17)])
def test_project_frames_matches_reference(impl, k, b, size, tiles="auto"):
    torch.manual_seed(k * 100 + b)
    ds = [models.FrameDiscriminator(seed=i, widths=(2, 2, 2)) for i in range(k)]
    x = torch.rand(b, 1, size, size + 2) * 2 - 1      # odd, non-square frames exercise every mask
    check_projection(project_frames, ds, x, impl, tiles)


@pytest.mark.parametrize("impl", ["triton", "ref"])
@pytest.mark.parametrize("k,b,t", [(1, 1, 30), (3, 2, 7), (5, 3, 5), (16, 1, 3)])
def test_project_videos_matches_reference(impl, k, b, t, tiles="auto"):
    torch.manual_seed(k * 100 + b)
    ds = [models.VideoDiscriminator(seed=1000 + i, widths=(2, 2, 2)) for i in range(k)]
    x = torch.rand(b, 1, t, 30, 30) * 2 - 1
    check_projection(project_videos, ds, x, impl, tiles)


def test_projection_output_shapes_follow_design():
    filters = torch.stack([models.projection_filter(i)[0, 0] for i in range(4)])
    assert project_frames(torch.zeros(3, 1, 30, 30), filters, impl="triton").shape == (4, 3, 1, 15, 15)
    assert project_videos(torch.zeros(2, 1, 30, 30, 30), filters, impl="triton").shape == (4, 2, 1, 30, 9, 9)


def test_projection_rejects_bad_shapes():
    filters = torch.stack([models.projection_filter(i)[0, 0] for i in range(2)])
    with pytest.raises(ValueError, match="expected frames"):
        project_frames(torch.zeros(3, 2, 30, 30), filters)
    with pytest.raises(ValueError, match="expected videos"):
        project_videos(torch.zeros(3, 1, 30, 30), filters)
    with pytest.raises(ValueError, match="filters"):
        project_frames(torch.zeros(3, 1, 30, 30), filters[0])


def test_projection_impl_resolution_on_cpu_without_interpreter(monkeypatch):
    """impl='triton' without TRITON_INTERPRET on CPU raises; impl='auto' falls back to 'ref' with a warning."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")          # the resolver reads it at call time
    monkeypatch.setattr(backend, "_warned", set())
    filters = torch.stack([models.projection_filter(i)[0, 0] for i in range(3)])
    x = torch.rand(2, 1, 30, 30)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        project_frames(x, filters, impl="triton")
    with pytest.warns(RuntimeWarning, match="running the PyTorch reference path instead"):
        out = project_frames(x, filters, impl="auto")
    assert torch.equal(out, project_frames(x, filters, impl="ref"))


def test_projection_with_gpu_tile_sizes():
    """The interpreter normally runs larger tiles (fewer numpy steps); the GPU tiles must be right too."""
    test_project_frames_matches_reference("triton", 5, 2, 30, tiles="gpu")
    test_project_videos_matches_reference("triton", 3, 2, 7, tiles="gpu")


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
        check_projection(project_frames, ds, x, "triton", "gpu")
        return
    filters = torch.stack([d.projection[0, 0] for d in ds])
    out = project_frames(x, filters, "triton", "bf16", "gpu")
    rounded = [copy.deepcopy(d).double() for d in ds]
    for d in rounded:
        d.projection.copy_(d.projection.float().bfloat16().double())
    ref = torch.stack([d.project(x.bfloat16().double()) for d in rounded])
    assert relative_error(out, ref) <= tolerance("fp32", 64)
    assert relative_error(project_frames(x, filters, "triton", "fp32", "gpu"), ref) > 1e-4
