"""Writing videos as a GIF grid and frames as a PNG strip (Pillow), through files.py (complete or absent, never
over a file unless asked)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .files import write_file


def to_uint8(x: torch.Tensor | np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Map values in value_range to uint8 [0, 255]."""
    x = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
    lo, hi = value_range
    return (np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def grid(images: np.ndarray, cols: int | None = None, pad: int = 1, scale: int = 2) -> np.ndarray:
    """[N, H, W] uint8 -> one [rows*(H+pad)+pad, cols*(W+pad)+pad] uint8 image, upscaled by `scale`."""
    n, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 64, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[i]
    return np.kron(out, np.ones((scale, scale), np.uint8)) if scale > 1 else out


def gif_writer(videos: torch.Tensor | np.ndarray, value_range=(-1.0, 1.0), fps: int = 10, cols: int | None = None,
               scale: int = 2):
    """writer(f) that writes videos [N, T, H, W] (or [N, 1, T, H, W]) as one looping GIF with the N videos in a
    grid (for files.write_file / write_numbered)."""
    v = to_uint8(videos, value_range)
    if v.ndim == 5:
        v = v[:, 0]
    frames = []
    for t in range(v.shape[1]):
        g = grid(v[:, t], cols, scale=scale)
        # a time bar in the bottom padding: it shows where the loop is, and keeps every frame distinct
        # (Pillow merges identical consecutive frames, so a static video would lose its frame count)
        g[-1, : max(1, round((t + 1) / v.shape[1] * g.shape[1]))] = 255
        frames.append(Image.fromarray(g))
    return lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                    duration=int(1000 / fps), loop=0)


def strip_writer(frames: torch.Tensor | np.ndarray, value_range=(-1.0, 1.0), cols: int | None = None,
                 scale: int = 2):
    """writer(f) that writes frames [N, H, W] (or [N, 1, H, W]) as one PNG grid; cols defaults to one row."""
    f = to_uint8(frames, value_range)
    if f.ndim == 4:
        f = f[:, 0]
    image = Image.fromarray(grid(f, cols or f.shape[0], scale=scale))
    return lambda out: image.save(out, format="PNG")


def save_gif(videos: torch.Tensor | np.ndarray, path: str | Path, value_range=(-1.0, 1.0),
             fps: int = 10, cols: int | None = None, scale: int = 2, replace: bool = False) -> Path:
    """Videos as one GIF grid at `path` (files.write_file: complete or absent; an existing file is replaced
    only with replace=True, else FileExistsError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, gif_writer(videos, value_range, fps, cols, scale), replace=replace)


def save_strip(frames: torch.Tensor | np.ndarray, path: str | Path, value_range=(-1.0, 1.0),
               cols: int | None = None, scale: int = 2, replace: bool = False) -> Path:
    """Frames as one PNG grid at `path` (as save_gif)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, strip_writer(frames, value_range, cols, scale), replace=replace)
