"""Samples from a checkpoint: a video checkpoint -> GIF grid of videos + PNG strip of their frames;
a frames checkpoint -> PNG grid of frames; or (write_array, `vidgan sample --npy`) the samples as a uint8 array in
the data set's layout, for outside tools. Generators run in eval mode on fixed-seed noise.

Files already in the output folder are never replaced unless overwrite=True: the new set gets the next free
name (videos.gif, videos-2.gif, ...; a GIF and its PNG strip share the number), taken atomically, so commands
that write into one folder at the same time get distinct files; nothing is written through a symlink.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch

from . import media
from .checkpoint import load_checkpoint, load_matching, sampling_frame_generator, saved_config
from .errors import ConfigError, VidganError, os_reason
from .files import human, make_folders, remove_empty, write_file, write_numbered
from .signals import saved
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


PICTURE_LIMIT = 1024          # --n of the GIF / PNG grids (one picture)
ARRAY_LIMIT = 100_000         # --n of --npy (the paper's data set: 2.7 GB of videos)


def write_samples(ckpt_path: str | Path, out: str | Path, n: int = 16, seed: int = 0,
                  device: str = "cpu", overwrite: bool = False) -> list[Path]:
    """Write the samples of a checkpoint into folder `out`; returns the files written. The set (a GIF and its PNG
    strip share a number) takes the first free numbered names (videos.gif, videos-2.gif, ...) atomically, so
    concurrent commands get distinct files and none is replaced (files.write_numbered); overwrite=True replaces
    the unnumbered names. A folder this call made is removed again if nothing could be written."""
    if not 1 <= n <= PICTURE_LIMIT:
        raise ConfigError(f"invalid --n {n}: the picture files hold at most {PICTURE_LIMIT:,} samples (one grid); "
                          f"use --npy for up to {ARRAY_LIMIT:,}")
    phase, x = generate(ckpt_path, n, seed, device)
    out = Path(out)
    if phase == "frames":
        files = [("frames.png", media.strip_writer(x, cols=math.ceil(math.sqrt(n))))]
    else:
        rows = x[:STRIP_ROWS, 0]                                        # [r, T, 30, 30]
        strip = rows.reshape(-1, 1, *rows.shape[-2:])                   # one row of T frames per video
        files = [("videos.gif", media.gif_writer(x)),
                 ("video_frames.png", media.strip_writer(strip, cols=rows.shape[1]))]
    paths = write_numbered(out, files, overwrite=overwrite)       # creates out; a failed write leaves none of it
    saved(f"{', '.join(map(str, paths))} {'is' if len(paths) == 1 else 'are'} written")
    return paths


def made(folder: Path) -> list[Path]:
    try:
        return make_folders(folder)
    except OSError as e:
        raise VidganError(f"cannot create the output folder {folder} ({os_reason(e)}); choose another --out") from None


@torch.no_grad()
def write_array(ckpt_path: str | Path, path: str | Path, n: int = 16, seed: int = 0,
                device: str = "cpu", overwrite: bool = False) -> tuple[Path, tuple[int, ...]]:
    """Write n samples as a uint8 .npy array: videos [n, 30, 30, 30] or frames [n, 30, 30], quantised as
    `vidgan data` writes its videos (to_uint8). Complete or absent (files.write_file); an existing file (or
    symlink) at `path` is replaced only with overwrite=True. The samples are those of write_samples for the same
    seed (the same noise), generated ARRAY_BATCH at a time."""
    path = Path(path)
    if not 1 <= n <= ARRAY_LIMIT:
        raise ConfigError(f"invalid --n {n}: --npy holds at most {ARRAY_LIMIT:,} samples")
    z = noise(n, seed)
    phase, dev, fn = load_generator(ckpt_path, device)
    shape = (n, 30, 30) if phase == "frames" else (n, 30, 30, 30)
    check_space(path, math.prod(shape))

    def writer(f):
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        for start in range(0, n, ARRAY_BATCH):
            x = fn(z[start:start + ARRAY_BATCH].to(dev)).cpu()[:, 0]    # drop the channel axis
            f.write(to_uint8(x).numpy().tobytes())

    created = made(path.parent)
    try:
        write_file(path, writer, replace=overwrite, kept="nothing was written")
    except FileExistsError:
        raise VidganError(f"--npy {path} already exists; pass --overwrite to replace it, or name another "
                          f"file") from None
    except BaseException:
        remove_empty(created)
        raise
    saved(f"{path} is written")
    return path, shape


def check_space(path: Path, size: int) -> None:
    """VidganError if the file system of `path` has clearly less free space than `size` bytes."""
    folder = next((p for p in [path.parent, *path.parent.parents] if p.is_dir()), None)
    try:
        free = shutil.disk_usage(folder).free if folder is not None else None
    except OSError:
        free = None
    if free is not None and size > free:
        raise VidganError(f"no space left on the device for {path}: it needs {human(size)}, {folder} has "
                          f"{human(free)} free")
