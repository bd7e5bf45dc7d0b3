"""Objective video quality on bouncing balls, from the frames alone.

Videos are float tensors [N, T, H, W] (or [N, 1, T, H, W]) in [-1, 1]. A pixel is "on" when x > 0 (intensity
above 0.5 in [0, 1] terms; the background, -1, is off). Units: pixels and frames.

- `binarised_mse`: the authors' measure, per video: mean over the T - 1 consecutive pairs and all pixels of
  (b_t - b_{t-1})^2 with b = (x > 0), i.e. the share of pixels that flip per step (0 for a still video).
- blobs: 8-connected components of the on pixels of each frame (`label_components`), each with its area and its
  centroid weighted by max(x, 0), so that pixels at the threshold weigh nothing and the centroid moves smoothly
  with the ball. A lone rendered ball (radius 1.2 box units = 3.6 px) gives a disc of radius 3.6 * ln(2)^(1/8)
  = 3.44 px; two balls in contact merge into one blob.
- tracking: each blob is matched to the nearest blob of the next frame (its displacement is the per-ball speed);
  following those matches over three frames gives the velocity change |v2 - v1| of a step. A step accelerates
  when that change exceeds `accel_threshold` (0.5 px/frame; smooth motion measures under 0.2); the acceleration
  is explained by a contact: the middle blob within r + 1 px of the border or within 2r + 1 px of another blob
  (r = 3.6 px, a frame moves a ball at most 1.5 px), or one of the three blobs a merged pair (area 1.5 to 3.5
  lone-ball areas). Only ball-like blobs (0.5 to 1.5 lone-ball areas) explain a contact, so specks and
  shapeless regions do not. Temporal coherence = the share of steps without an unexplained acceleration.
- `diversity`: mean RMS distance between the videos of one set, over all pairs of a random subset of 64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidgan_fast.errors import ConfigError

BOX = 10.0                      # side of the simulation box, box units
BALL_RADIUS = 1.2               # box units
FRAME_SIZE = 30
BALL_RADIUS_PX = BALL_RADIUS * FRAME_SIZE / BOX                          # 3.6 px
LONE_BLOB_RADIUS_PX = BALL_RADIUS_PX * math.log(2.0) ** 0.125            # 3.44 px: exp(-(d^2/r^2)^4) = 1/2
LONE_BLOB_AREA = math.pi * LONE_BLOB_RADIUS_PX ** 2                      # 37.1 px^2


def as_videos(videos: torch.Tensor) -> torch.Tensor:
    """Check and flatten videos to float32 [N, T, H, W] on their own device."""
    if not isinstance(videos, torch.Tensor):
        raise ConfigError(f"videos must be a torch.Tensor, got {type(videos).__name__}")
    if videos.dim() == 5:
        if videos.shape[1] != 1:
            raise ConfigError(f"videos [N, C, T, H, W] must have C = 1, got shape {tuple(videos.shape)}")
        videos = videos[:, 0]
    if videos.dim() != 4:
        raise ConfigError(f"videos must be [N, T, H, W] or [N, 1, T, H, W], got shape {tuple(videos.shape)}")
    if videos.shape[0] == 0 or videos.shape[1] < 2:
        raise ConfigError(f"videos need N >= 1 and T >= 2 frames, got shape {tuple(videos.shape)}")
    if not videos.is_floating_point():
        raise ConfigError(f"videos must be floating point in [-1, 1], got dtype {videos.dtype}")
    videos = videos.detach().float()
    if not math.isfinite(float(videos.sum())):                  # one pass; NaN or inf anywhere propagates
        raise ConfigError("videos contain NaN or inf values")
    return videos


def binarised_mse(videos: torch.Tensor) -> torch.Tensor:
    """Per-video MSE between consecutive frames binarised at 0 (x > 0 -> 1, else 0): [N] in [0, 1]."""
    b = as_videos(videos) > 0
    return (b[:, 1:] != b[:, :-1]).flatten(1).float().mean(1)          # (b_t - b_{t-1})^2 is 1 where they differ


def label_components(mask: torch.Tensor, connectivity: int = 8) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Connected components of the on pixels of each frame of mask [F, H, W] (bool), vectorised over frames.

    Returns (pixels, component, count): pixels [M] the flat indices into mask of its on pixels, ascending;
    component [M] the component of each, numbered 0..count-1 in order of their first pixel (so in frame order).
    Union-find by hooking: every edge between two on neighbours whose roots differ hooks the larger root under
    the smaller (scatter amin), then full path compression; a few rounds, each over the unresolved edges only.
    """
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}")
    if mask.dim() != 3 or mask.dtype != torch.bool:
        raise ConfigError(f"mask must be a bool tensor [F, H, W], got {mask.dtype} {tuple(mask.shape)}")
    n, h, w = mask.shape
    dev = mask.device
    row = w + 2                                    # a ring of off pixels keeps frames apart
    padded = F.pad(mask.to(torch.uint8), (1, 1, 1, 1)).reshape(-1).bool()
    at = padded.nonzero().squeeze(1)              # padded flat index of each on pixel, ascending
    m = at.numel()
    position = torch.full((padded.numel(),), -1, dtype=torch.int32, device=dev)
    position[at] = torch.arange(m, dtype=torch.int32, device=dev)
    forward = [1, row] + ([row - 1, row + 1] if connectivity == 8 else [])    # each edge once
    u = torch.arange(m, device=dev)
    v = torch.cat([torch.where(other >= 0, other.long(), u)
                   for other in (position.index_select(0, at + o) for o in forward)])
    u = u.repeat(len(forward))                                                # an off neighbour: a self-edge
    parent = torch.arange(m, device=dev)
    while True:
        ru, rv = parent.index_select(0, u), parent.index_select(0, v)      # index_select: 3x faster than []
        open_edges = ru != rv
        n_open = int(open_edges.sum())
        if n_open == 0:
            break
        if n_open < u.numel() // 2:                                           # drop the resolved edges
            keep = open_edges.nonzero().squeeze(1)
            u, v, ru, rv = (x.index_select(0, keep) for x in (u, v, ru, rv))
        parent.scatter_reduce_(0, torch.maximum(ru, rv), torch.minimum(ru, rv), "amin")
        while True:                                                           # path compression
            grand = parent.index_select(0, parent)
            if torch.equal(grand, parent):
                break
            parent = grand
    root = parent == torch.arange(m, device=dev)                              # the first pixel of each component
    component = (root.long().cumsum(0) - 1).index_select(0, parent)
    frame, rest = at // ((h + 2) * row), at % ((h + 2) * row)
    pixels = frame * (h * w) + (rest // row - 1) * w + (rest % row - 1)
    return pixels, component, int(root.sum())


@dataclass
class Blobs:
    """The blobs of a set of videos, at most `max_blobs` per frame (the largest), padded.

    counts [N, T]: all blobs of each frame (not capped); valid [N, T, K]; area [N, T, K] (pixels);
    centre [N, T, K, 2] (row, column in pixels, pixel i spans [i, i + 1]); invalid slots hold zeros.
    """
    counts: torch.Tensor
    valid: torch.Tensor
    area: torch.Tensor
    centre: torch.Tensor
    height: int
    width: int


def find_blobs(videos: torch.Tensor, connectivity: int = 8, max_blobs: int = 16,
               chunk_frames: int = 4096) -> Blobs:
    """Connected components of the on pixels (x > 0) of every frame, with area and weighted centroid."""
    v = as_videos(videos)
    n, t, h, w = v.shape
    frames = v.reshape(n * t, h * w)
    dev = v.device
    counts, area, cy, cx, frame_of = [], [], [], [], []
    for start in range(0, n * t, chunk_frames):
        x = frames[start:start + chunk_frames]
        f = x.shape[0]
        pixels, component, k = label_components((x > 0).view(f, h, w), connectivity)
        weight = x.reshape(-1).index_select(0, pixels)                            # > 0 on every on pixel
        frame, rest = pixels // (h * w), pixels % (h * w)

        def total(values):
            return torch.zeros(k, device=dev).index_add_(0, component, values)

        mass = total(weight)
        area.append(total(torch.ones_like(weight)))
        cy.append(total(weight * ((rest // w).float() + 0.5)) / mass)
        cx.append(total(weight * ((rest % w).float() + 0.5)) / mass)
        first = torch.zeros(k, dtype=torch.long, device=dev).scatter_reduce_(
            0, component, frame, "amin", include_self=False)
        frame_of.append(first + start)
        counts.append(torch.bincount(first, minlength=f))
    counts = torch.cat(counts)
    area, cy, cx, frame_of = torch.cat(area), torch.cat(cy), torch.cat(cx), torch.cat(frame_of)
    # Keep the largest max_blobs of each frame: sort by (frame, -area), rank within the frame.
    order = torch.argsort(frame_of * (h * w + 1) + (h * w - area.long()))
    area, cy, cx, frame_of = area[order], cy[order], cx[order], frame_of[order]
    rank = torch.arange(len(frame_of), device=dev) - (torch.cumsum(counts, 0) - counts)[frame_of]
    keep = rank < max_blobs
    k = max(1, min(max_blobs, int(counts.max())))
    valid = torch.zeros(n * t, k, dtype=torch.bool, device=dev)
    area_pad = torch.zeros(n * t, k, device=dev)
    centre = torch.zeros(n * t, k, 2, device=dev)
    fi, ri = frame_of[keep], rank[keep]
    valid[fi, ri] = True
    area_pad[fi, ri] = area[keep]
    centre[fi, ri] = torch.stack([cy[keep], cx[keep]], 1)
    return Blobs(counts.view(n, t), valid.view(n, t, k), area_pad.view(n, t, k), centre.view(n, t, k, 2), h, w)


def blob_radius(blobs: Blobs) -> torch.Tensor:
    """Radius sqrt(area / pi) in pixels of every kept blob, flattened."""
    return torch.sqrt(blobs.area[blobs.valid] / math.pi)


def _nearest_next(blobs: Blobs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each blob of frames 0..T-2: the index of the nearest blob of the next frame, the distance, and
    whether that match exists (the blob is valid and the next frame has a blob). Shapes [N, T-1, K]."""
    c, valid = blobs.centre, blobs.valid
    d = torch.cdist(c[:, :-1].flatten(0, 1), c[:, 1:].flatten(0, 1)).view(*valid[:, :-1].shape, -1)
    d = d.masked_fill(~valid[:, 1:].unsqueeze(2), math.inf)
    dist, nearest = d.min(3)
    ok = valid[:, :-1] & valid[:, 1:].any(2, keepdim=True)
    return nearest, dist, ok


def displacements(blobs: Blobs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-ball displacement (pixels per frame) to the nearest blob of the next frame: values [N, T-1, K]
    and the mask of those that exist."""
    _, dist, ok = _nearest_next(blobs)
    return dist.masked_fill(~ok, 0.0), ok


def contacts(blobs: Blobs, wall_margin: float = 1.0, ball_margin: float = 1.0, radius: float = BALL_RADIUS_PX
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(near, merged), each [N, T, K] bool.

    A blob is ball-like when its area is 0.5 to 1.5 lone-ball areas, a merged pair (or triple) when 1.5 to 3.5.
    near: a ball-like blob whose centroid is within radius + wall_margin of the border, or within
    2 radius + ball_margin of another ball-like or merged blob's. Specks and shapeless regions explain nothing.
    """
    c, valid = blobs.centre, blobs.valid
    ball_like = valid & (blobs.area >= 0.5 * LONE_BLOB_AREA) & (blobs.area <= 1.5 * LONE_BLOB_AREA)
    merged = valid & (blobs.area > 1.5 * LONE_BLOB_AREA) & (blobs.area <= 3.5 * LONE_BLOB_AREA)
    to_wall = torch.minimum(torch.minimum(c[..., 0], blobs.height - c[..., 0]),
                            torch.minimum(c[..., 1], blobs.width - c[..., 1]))
    d = torch.cdist(c.flatten(0, 1), c.flatten(0, 1)).view(*valid.shape, -1)
    other = (ball_like | merged).unsqueeze(-2) & ~torch.eye(valid.shape[-1], dtype=torch.bool, device=c.device)
    to_ball = d.masked_fill(~other, math.inf).min(-1).values
    near = ball_like & ((to_wall < radius + wall_margin) | (to_ball < 2 * radius + ball_margin))
    return near, merged


def coherence_steps(blobs: Blobs, accel_threshold: float = 0.5, **contact_options
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Velocity changes along nearest-neighbour tracks over three frames.

    Step (t, i) follows blob i of frame t to its nearest blob j of frame t+1, then to the nearest blob l of
    frame t+2; its velocity change is |(c_l - c_j) - (c_j - c_i)| in pixels per frame. A bounce happens between
    frames t and t+2, so the step is explained when blob j is near a wall or another ball, or when any of the
    three blobs is a merged pair (merging and splitting move the centroid). Returns (change, exists,
    accelerating, explained), each [N, T-2, K]; accelerating means change > accel_threshold.
    """
    nearest, _, ok = _nearest_next(blobs)
    c = blobs.centre
    near, merged = contacts(blobs, **contact_options)
    j = nearest[:, :-1]                                                        # [N, T-2, K] index in t+1
    last = torch.gather(nearest[:, 1:], 2, j)                                     # index in t+2
    exists = ok[:, :-1] & torch.gather(ok[:, 1:], 2, j)
    a = c[:, :-2]
    b = torch.gather(c[:, 1:-1], 2, j.unsqueeze(-1).expand(*j.shape, 2))
    e = torch.gather(c[:, 2:], 2, last.unsqueeze(-1).expand(*last.shape, 2))
    change = ((e - b) - (b - a)).norm(dim=-1).masked_fill(~exists, 0.0)
    explained = (torch.gather(near[:, 1:-1], 2, j) | merged[:, :-2] | torch.gather(merged[:, 1:-1], 2, j)
                 | torch.gather(merged[:, 2:], 2, last))
    accelerating = exists & (change > accel_threshold)
    return change, exists, accelerating, explained & exists


def diversity(videos: torch.Tensor, subset: int = 64, seed: int = 0) -> torch.Tensor:
    """RMS distance sqrt(mean((x_i - x_j)^2)) between all pairs i < j of a random subset (seeded) of at most
    `subset` videos: [s * (s - 1) / 2], e.g. 2016 pairs for 64 videos."""
    v = as_videos(videos).flatten(1)
    n = v.shape[0]
    if n < 2:
        raise ConfigError(f"diversity needs at least 2 videos, got {n}")
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:subset].to(v.device)
    x = v.index_select(0, pick).double()
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(x.shape[1])
    i, j = torch.triu_indices(len(pick), len(pick), 1, device=v.device)
    return d[i, j].float()


def _nan_mean(x: torch.Tensor) -> float:
    x = x.double()
    return float(x.mean()) if x.numel() else float("nan")


def video_statistics(videos: torch.Tensor, accel_threshold: float = 0.5, connectivity: int = 8,
                     diversity_subset: int = 64, seed: int = 0) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """All metrics of one set of videos: (summary {metric: value}, distributions {name: 1-D tensor})."""
    v = as_videos(videos)
    mse = binarised_mse(v)
    blobs = find_blobs(v, connectivity)
    radius = blob_radius(blobs)
    speed, speed_ok = displacements(blobs)
    change, exists, accelerating, explained = coherence_steps(blobs, accel_threshold)
    unexplained = accelerating & ~explained
    steps_per_video = exists.flatten(1).sum(1)
    per_video_coherence = 1.0 - unexplained.flatten(1).sum(1) / steps_per_video.clamp(min=1)
    per_video_coherence = per_video_coherence[steps_per_video > 0]
    n_steps, n_accel = int(exists.sum()), int(accelerating.sum())
    div = diversity(v, diversity_subset, seed) if v.shape[0] > 1 else torch.zeros(0)
    summary = {
        "binarised_mse_mean": _nan_mean(mse),
        "binarised_mse_std": float(mse.double().std(unbiased=False)),
        "blobs_per_frame": _nan_mean(blobs.counts.float()),
        "frames_with_3_blobs": _nan_mean((blobs.counts == 3).float()),
        "blob_radius_px": _nan_mean(radius),
        "speed_px_per_frame": _nan_mean(speed[speed_ok]),
        "temporal_coherence": 1.0 - int(unexplained.sum()) / n_steps if n_steps else float("nan"),
        "accelerating_steps": n_accel / n_steps if n_steps else float("nan"),
        "accelerations_explained": int((accelerating & explained).sum()) / n_accel if n_accel else float("nan"),
        "diversity_rms": _nan_mean(div),
    }
    distributions = {
        "binarised_mse": mse,
        "blobs_per_frame": blobs.counts.flatten().float(),
        "blob_radius_px": radius,
        "speed_px_per_frame": speed[speed_ok],
        "velocity_change_px": change[exists],
        "temporal_coherence": per_video_coherence,
    }
    return summary, distributions
