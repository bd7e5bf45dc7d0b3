"""All K fixed random projections of a batch at once: frames -> [K, B, 15, 15], videos -> [K, B, T, 9, 9].

kernels/projection.py: one launch forward, one launch backward (the input gradient; the filters are fixed and never
get one). The geometry is models.FRAME_PROJ / VIDEO_PROJ; the reference is models.project_frames / project_videos
(one conv2d with K output channels), which tests/test_projection.py holds these equal to.
"""
from __future__ import annotations

import torch

from vidgan_fast import models


class _Projection(torch.autograd.Function):
    """images [N, H, W] -> [K, N, OH, OW]; gradient to the images only."""

    @staticmethod
    def forward(ctx, images, filters, stride, padding, precision):
        from vidgan_fast.kernels.projection import project_forward
        ctx.save_for_backward(filters)
        ctx.geometry = (tuple(images.shape), stride, padding, precision)
        return project_forward(images, filters, stride, padding, precision)

    @staticmethod
    def backward(ctx, grad_out):
        from vidgan_fast.kernels.projection import project_backward
        (filters,) = ctx.saved_tensors
        image_shape, stride, padding, precision = ctx.geometry
        grad_images = None
        if ctx.needs_input_grad[0]:
            grad_images = project_backward(grad_out.contiguous(), filters, image_shape, stride, padding, precision)
        return grad_images, None, None, None, None


def _check(x: torch.Tensor, filters: torch.Tensor, rank: int, what: str):
    if x.dim() != rank or x.shape[1] != 1:
        layout = "[B, 1, H, W]" if rank == 4 else "[B, 1, T, H, W]"
        raise ValueError(f"project_{what}: expected {what} {layout}, got shape {tuple(x.shape)}")
    if filters.dim() != 3:
        raise ValueError(f"project_{what}: expected filters [K, 8, 8], got shape {tuple(filters.shape)}")


def project_frames(x: torch.Tensor, filters: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """frames [B, 1, 30, 30], filters [K, 8, 8] -> [K, B, 15, 15] (models.FRAME_PROJ)."""
    _check(x, filters, 4, "frames")
    B, _, H, W = x.shape
    geo = models.FRAME_PROJ
    return _Projection.apply(x.reshape(B, H, W), filters.detach(), geo["stride"], geo["padding"], precision)


def project_videos(x: torch.Tensor, filters: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """videos [B, 1, T, 30, 30], filters [K, 8, 8] -> [K, B, T, 9, 9] (each frame, models.VIDEO_PROJ)."""
    _check(x, filters, 5, "videos")
    B, _, T, H, W = x.shape
    geo = models.VIDEO_PROJ
    out = _Projection.apply(x.reshape(B * T, H, W), filters.detach(), geo["stride"], geo["padding"], precision)
    return out.view(out.shape[0], B, T, *out.shape[-2:])
