"""Samples from a checkpoint: a video checkpoint -> GIF grid of videos + PNG strip of their frames;
a frames checkpoint -> PNG grid of frames; or (write_array, `vidgan sample --npy`) the samples as a uint8 array in
the data set's layout, for outside tools. Generators run in eval mode on fixed-seed noise.

Files already in the output folder are never replaced unless overwrite=True: the new set gets the next free
name (videos.gif, videos-2.gif, ...; a GIF and its PNG strip share the number).
"""
from __future__ import annotations

import itertools
import math
import os
import secrets
from pathlib import Path

import numpy as np
import torch

from . import media
from .checkpoint import load_checkpoint, load_matching, sampling_frame_generator, saved_config
from .errors import ConfigError, VidganError, os_reason
from .step import Z_DIM, build_frame_generator, build_video_generator, resolve_device

STRIP_ROWS = 4   # videos shown frame by frame in the PNG strip
ARRAY_BATCH = 64  # samples per generator call when writing an array


def load_generator(ckpt_path: str | Path, device: str = "cpu"):
    """(phase, device, fn): fn(z [n, 100]) -> frames [n, 1, 30, 30] or videos [n, 1, 30, 30, 30] in [-1, 1]."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = saved_config(ckpt, ckpt_path)
    dev = resolve_device(device)
    frame_generator = build_frame_generator(cfg)
    load_matching(frame_generator, sampling_frame_generator(ckpt), "the frame generator", ckpt_path)
    if ckpt["phase"] == "frames":
        return "frames", dev, frame_generator.to(dev).eval()
    video_generator = build_video_generator(cfg)
    load_matching(video_generator, ckpt["generator"], "the video generator", ckpt_path)
    video_generator, frame_generator = video_generator.to(dev).eval(), frame_generator.to(dev).eval()
    return "video", dev, lambda z: video_generator(z, frame_generator)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model values -> uint8 as data.write_dataset stores [0, 1] intensities: round(clip((x + 1) / 2) * 255).
    The inverse of reading a data file (/ 255, then data.to_model_range): a stored video comes back unchanged."""
    return ((x.detach().float() + 1) / 2).clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def noise(n: int, seed: int) -> torch.Tensor:
    if n <= 0:
        raise ConfigError(f"invalid --n {n}: must be a positive integer")
    return torch.randn(n, Z_DIM, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate(ckpt_path: str | Path, n: int = 16, seed: int = 0, device: str = "cpu") -> tuple[str, torch.Tensor]:
    """(phase, samples in [-1, 1]): frames [n, 1, 30, 30] or videos [n, 1, 30, 30, 30]."""
    z = noise(n, seed)
    phase, dev, fn = load_generator(ckpt_path, device)
    return phase, fn(z.to(dev)).cpu()


def free_paths(folder: Path, names: list[str], overwrite: bool) -> list[Path]:
    """folder/name for each name, or with overwrite=False the first numbered set (name-2.ext, ...) of which no
    file exists yet."""
    for k in itertools.count(1):
        paths = [folder / (name if k == 1 else f"{Path(name).stem}-{k}{Path(name).suffix}") for name in names]
        if overwrite or not any(p.exists() for p in paths):
            return paths


def write_samples(ckpt_path: str | Path, out: str | Path, n: int = 16, seed: int = 0,
                  device: str = "cpu", overwrite: bool = False) -> list[Path]:
    """Write the samples of a checkpoint into folder `out` (next to, never over, files there unless
    overwrite); returns the files written."""
    phase, x = generate(ckpt_path, n, seed, device)
    out = Path(out)
    if phase == "frames":
        [png] = free_paths(out, ["frames.png"], overwrite)
        return [media.save_strip(x, png, cols=math.ceil(math.sqrt(n)))]
    gif, png = free_paths(out, ["videos.gif", "video_frames.png"], overwrite)
    rows = x[:STRIP_ROWS, 0]                                        # [r, T, 30, 30]
    strip = rows.reshape(-1, 1, *rows.shape[-2:])                   # one row of T frames per video
    return [media.save_gif(x, gif), media.save_strip(strip, png, cols=rows.shape[1])]


@torch.no_grad()
def write_array(ckpt_path: str | Path, path: str | Path, n: int = 16, seed: int = 0,
                device: str = "cpu") -> tuple[Path, tuple[int, ...]]:
    """Write n samples as a uint8 .npy array: videos [n, 30, 30, 30] or frames [n, 30, 30], quantised as
    `vidgan data` writes its videos (to_uint8). Atomic (a temporary file, then a rename); the samples are
    those of write_samples for the same seed (the same noise), generated ARRAY_BATCH at a time."""
    path = Path(path)
    z = noise(n, seed)
    phase, dev, fn = load_generator(ckpt_path, device)
    shape = (n, 30, 30) if phase == "frames" else (n, 30, 30, 30)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            for start in range(0, n, ARRAY_BATCH):
                x = fn(z[start:start + ARRAY_BATCH].to(dev)).cpu()[:, 0]    # drop the channel axis
                f.write(to_uint8(x).numpy().tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VidganError(f"cannot write {path} ({os_reason(e)}); choose another --npy") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path, shape
