"""Samples from a checkpoint: a video checkpoint -> GIF grid of videos + PNG strip of their frames;
a frames checkpoint -> PNG grid of frames. Generators run in eval mode on fixed-seed noise."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from . import media
from .checkpoint import load_checkpoint, load_matching
from .errors import ConfigError
from .train import Z_DIM, build_frame_generator, build_video_generator, resolve_device, saved_config

STRIP_ROWS = 4   # videos shown frame by frame in the PNG strip


@torch.no_grad()
def generate(ckpt_path: str | Path, n: int = 16, seed: int = 0, device: str = "cpu") -> tuple[str, torch.Tensor]:
    """(phase, samples in [-1, 1]): frames [n, 1, 30, 30] or videos [n, 1, 30, 30, 30]."""
    if n <= 0:
        raise ConfigError(f"invalid --n {n}: must be a positive integer")
    ckpt = load_checkpoint(ckpt_path)
    cfg = saved_config(ckpt, ckpt_path)
    dev = resolve_device(device)
    z = torch.randn(n, Z_DIM, generator=torch.Generator().manual_seed(seed)).to(dev)
    frame_generator = build_frame_generator(cfg)
    if ckpt["phase"] == "frames":
        load_matching(frame_generator, ckpt["generator"], "the frame generator", ckpt_path)
        return "frames", frame_generator.to(dev).eval()(z).cpu()
    load_matching(frame_generator, ckpt["frame_generator"], "the frame generator", ckpt_path)
    video_generator = build_video_generator(cfg)
    load_matching(video_generator, ckpt["generator"], "the video generator", ckpt_path)
    videos = video_generator.to(dev).eval()(z, frame_generator.to(dev).eval())
    return "video", videos.cpu()


def write_samples(ckpt_path: str | Path, out: str | Path, n: int = 16, seed: int = 0,
                  device: str = "cpu") -> list[Path]:
    """Write the samples of a checkpoint into folder `out`; returns the files written."""
    phase, x = generate(ckpt_path, n, seed, device)
    out = Path(out)
    if phase == "frames":
        return [media.save_strip(x, out / "frames.png", cols=math.ceil(math.sqrt(n)))]
    rows = x[:STRIP_ROWS, 0]                                        # [r, T, 30, 30]
    strip = rows.reshape(-1, 1, *rows.shape[-2:])                   # one row of T frames per video
    return [media.save_gif(x, out / "videos.gif"), media.save_strip(strip, out / "video_frames.png", cols=rows.shape[1])]
