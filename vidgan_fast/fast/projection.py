"""All K fixed random projections of a batch at once: frames -> [K, B, 1, 15, 15], videos -> [K, B, 1, T, 9, 9].

`impl='triton'` runs kernels/projection.py (one launch forward, one launch backward); `impl='ref'` is the
reference models' own projection (models.project_frames / project_videos: one conv2d with K output channels) in
this layout. The geometry is models.FRAME_PROJ / VIDEO_PROJ. The filters are fixed: they never get gradients.
"""
from __future__ import annotations

import torch

from vidgan_fast import models
from vidgan_fast.fast.backend import resolve_impl


class _Projection(torch.autograd.Function):
    """images [N, H, W] -> [K, N, OH, OW]; gradient to the images only."""

    @staticmethod
    def forward(ctx, images, filters, stride, padding, precision, tiles):
        from vidgan_fast.kernels.projection import project_forward
        ctx.save_for_backward(filters)
        ctx.geometry = (tuple(images.shape), stride, padding, tiles)
        return project_forward(images, filters, stride, padding, precision, tiles)

    @staticmethod
    def backward(ctx, grad_out):
        from vidgan_fast.kernels.projection import project_backward
        (filters,) = ctx.saved_tensors
        image_shape, stride, padding, tiles = ctx.geometry
        grad_images = None
        if ctx.needs_input_grad[0]:      # a sum of products with fixed filters: no tensor-core choice to make
            grad_images = project_backward(grad_out, filters, image_shape, stride, padding, tiles)
        return grad_images, None, None, None, None, None


def _check(x: torch.Tensor, filters: torch.Tensor, rank: int, what: str):
    if x.dim() != rank or x.shape[1] != 1:
        layout = "[B, 1, H, W]" if rank == 4 else "[B, 1, T, H, W]"
        raise ValueError(f"project_{what}: expected {what} {layout}, got shape {tuple(x.shape)}")
    if filters.dim() != 3:
        raise ValueError(f"project_{what}: expected filters [K, 8, 8], got shape {tuple(filters.shape)}")


def _kernel(images, filters, geometry, precision, tiles):
    return _Projection.apply(images, filters.detach(), geometry["stride"], geometry["padding"], precision, tiles)


def project_frames(x: torch.Tensor, filters: torch.Tensor, impl: str = "auto", precision: str = "fp32",
                   tiles: str = "auto") -> torch.Tensor:
    """frames [B, 1, 30, 30], filters [K, 8, 8] -> [K, B, 1, 15, 15] (models.FRAME_PROJ)."""
    _check(x, filters, 4, "frames")
    B, _, H, W = x.shape
    if resolve_impl(impl, x.device, "project_frames") == "ref":
        return models.project_frames(x, filters).transpose(0, 1).unsqueeze(2)
    return _kernel(x.reshape(B, H, W), filters, models.FRAME_PROJ, precision, tiles).unsqueeze(2)


def project_videos(x: torch.Tensor, filters: torch.Tensor, impl: str = "auto", precision: str = "fp32",
                   tiles: str = "auto") -> torch.Tensor:
    """videos [B, 1, T, 30, 30], filters [K, 8, 8] -> [K, B, 1, T, 9, 9] (each frame, models.VIDEO_PROJ)."""
    _check(x, filters, 5, "videos")
    B, _, T, H, W = x.shape
    if resolve_impl(impl, x.device, "project_videos") == "ref":
        return models.project_videos(x, filters).transpose(0, 1).unsqueeze(2)
    out = _kernel(x.reshape(B * T, H, W), filters, models.VIDEO_PROJ, precision, tiles)
    return out.view(out.shape[0], B, 1, T, *out.shape[-2:])
