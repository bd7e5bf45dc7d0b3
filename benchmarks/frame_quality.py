"""G_F alone: the frame metrics of `vidgan eval` on frames from z ~ N(0, I) (eval mode), next to real frames. The
G_F is the one the checkpoint samples with and phase 2 renders with (checkpoint.sampling_frame_generator: with
--frames-ema the weight average, with --frames-select-every the best snapshot).

    python -m vidgan_fast.benchmarks.frame_quality RUN/frames.ckpt [RUN2/frames.ckpt ...] [--n 2000]

Frames are paired into 2-frame "videos" only so that vidgan_fast.metrics can count them; only the per-frame
numbers (frames with 3 blobs, blobs per frame, blob radius) and the frame diversity are reported.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from vidgan_fast.checkpoint import load_checkpoint, load_matching, sampling_frame_generator, saved_config
from vidgan_fast.data import BouncingBalls
from vidgan_fast.evaluate import EVAL_DATA_SEED
from vidgan_fast.metrics import blob_radius, diversity, find_blobs
from vidgan_fast.step import Z_DIM, build_frame_generator


def frame_stats(frames: torch.Tensor) -> dict[str, float]:
    """frames [N, 30, 30] in [-1, 1] (N even)."""
    n = frames.shape[0] // 2 * 2
    blobs = find_blobs(frames[:n].reshape(n // 2, 2, *frames.shape[-2:]))
    return {"frames_with_3_blobs": float((blobs.counts == 3).float().mean()),
            "blobs_per_frame": float(blobs.counts.float().mean()),
            "blob_radius_px": float(blob_radius(blobs).mean()),
            "diversity_rms": float(diversity(frames[:n].unsqueeze(1).expand(-1, 2, -1, -1)).mean())}


def real_frames(n: int) -> torch.Tensor:
    v = BouncingBalls(n=n, seed=EVAL_DATA_SEED).videos(np.arange(n))          # [n, 30, 30, 30] in [0, 1]
    t = torch.from_numpy(np.random.default_rng(0).integers(0, 30, n))
    return v[torch.arange(n), t] * 2 - 1


@torch.no_grad()
def generated_frames(ckpt_path: str, n: int, seed: int = 0) -> torch.Tensor:
    ckpt = load_checkpoint(ckpt_path)
    g = build_frame_generator(saved_config(ckpt, ckpt_path))
    load_matching(g, sampling_frame_generator(ckpt), "the frame generator", ckpt_path)   # what phase 2 renders with
    z = torch.randn(n, Z_DIM, generator=torch.Generator().manual_seed(seed))
    return g.eval()(z)[:, 0]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoints", nargs="*")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--real", action="store_true", help="also measure real frames")
    a = p.parse_args()
    rows = ([("real", frame_stats(real_frames(a.n)))] if a.real or not a.checkpoints else [])
    rows += [(c, frame_stats(generated_frames(c, a.n))) for c in a.checkpoints]
    keys = list(rows[0][1])
    print("set".ljust(40) + "".join(k.rjust(22) for k in keys))
    for name, s in rows:
        print(name[-40:].ljust(40) + "".join(f"{s[k]:22.4f}" for k in keys))


if __name__ == "__main__":
    main()
