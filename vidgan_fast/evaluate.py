"""`vidgan eval`: the metrics of vidgan_fast.metrics for real, generated and random-code baseline videos.

- real: BouncingBalls(n, seed=EVAL_DATA_SEED), a seed no training run uses by default (training uses 0).
- generated: G_V (eval mode) on z_v ~ N(0, I) from `seed` through G_F (eval mode); baseline codes from seed + 1.
- baseline: the paper's "30 independent codes through G_F": each frame of a video from its own code
  z ~ N(0, I), the distribution G_F was trained on in phase 1 (G_V's own codes are tanh outputs in (-1, 1)).

`run_eval` writes eval.json (the table), eval.png (the distributions side by side, drawn with Pillow) and
samples.gif (real, generated and baseline videos, one row each); a second eval into the same folder writes
eval-2.json, eval-2.png and samples-2.gif (nothing is replaced without overwrite=True).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import media
from .errors import ConfigError
from .files import write_file, write_numbered
from .metrics import as_videos, video_statistics
from .signals import saved

EVAL_DATA_SEED = 2_000_003
SETS = ("real", "generated", "baseline")
COLOURS = {"real": (40, 110, 220), "generated": (235, 120, 20), "baseline": (140, 140, 140)}
GENERATION_BATCH = 32            # videos per generator call (32 x 30 frames through G_F)
EVAL_LIMIT = 10_000              # videos per set: 3 sets of float32 [n, 30, 30, 30] are 3.2 GB at the limit

# (distribution, title, low, high, bins); values outside [low, high] go to the end bins
HISTOGRAMS = [
    ("blobs_per_frame", "blobs per frame", -0.5, 8.5, 9),
    ("speed_px_per_frame", "ball displacement (px / frame)", 0.0, 8.0, 32),
    ("binarised_mse", "binarised MSE per video", 0.0, 0.3, 30),
    ("temporal_coherence", "temporal coherence per video", 0.0, 1.0, 20),
    ("blob_radius_px", "blob radius (px)", 0.0, 8.0, 32),
    ("velocity_change_px", "velocity change (px / frame)", 0.0, 6.0, 30),
]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ConfigError(f"invalid n {n!r}: evaluation needs at least 2 videos")


@contextmanager
def _eval_mode(*modules: torch.nn.Module):
    """Eval mode inside the block (batch norm on running statistics); each module's own mode restored after."""
    was_training = [m.training for m in modules]
    try:
        yield [m.eval() for m in modules]
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)


@torch.inference_mode()
def generate_videos(frame_generator: torch.nn.Module, video_generator: torch.nn.Module, n: int, seed: int = 0,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """n videos of G_V through G_F, both in eval mode, z_v ~ N(0, I) from `seed`: [n, 1, T, 30, 30] on the CPU."""
    _check_n(n)
    z = torch.randn(n, video_generator.z_dim, generator=torch.Generator().manual_seed(int(seed)))
    with _eval_mode(frame_generator.to(device), video_generator.to(device)):
        return torch.cat([video_generator(z[i:i + GENERATION_BATCH].to(device), frame_generator).float().cpu()
                          for i in range(0, n, GENERATION_BATCH)])


@torch.inference_mode()
def random_code_baseline(frame_generator: torch.nn.Module, n: int, frames: int = 30, seed: int = 1,
                         device: str | torch.device = "cpu") -> torch.Tensor:
    """n videos whose `frames` frames come from independent codes z ~ N(0, I) through G_F (eval mode):
    [n, 1, frames, 30, 30] on the CPU. No temporal structure: the floor any video model should beat."""
    _check_n(n)
    codes = torch.randn(n * frames, frame_generator.z_dim, generator=torch.Generator().manual_seed(int(seed)))
    step = GENERATION_BATCH * frames
    with _eval_mode(frame_generator.to(device)):
        out = torch.cat([frame_generator(codes[i:i + step].to(device)).float().cpu()
                         for i in range(0, n * frames, step)])                   # [n * frames, 1, H, W]
    return out.view(n, frames, 1, *out.shape[-2:]).transpose(1, 2)


def load_real_videos(n: int, real_source=None) -> torch.Tensor:
    """n real videos in [-1, 1], [n, T, 30, 30]: from real_source (anything with .videos(indices) giving [0, 1]
    intensities: BouncingBalls, VideoSource), or generated with BouncingBalls(seed=EVAL_DATA_SEED)."""
    _check_n(n)
    if real_source is None:
        from .data import BouncingBalls
        real_source = BouncingBalls(n=n, seed=EVAL_DATA_SEED)
    if not hasattr(real_source, "videos"):
        raise ConfigError(f"real_source must have a .videos(indices) method, got {type(real_source).__name__}")
    return real_source.videos(np.arange(n)) * 2 - 1


def _evaluate_sets(videos: dict[str, torch.Tensor | None], seed: int = 0):
    stats = {name: video_statistics(v, seed=seed) for name, v in videos.items() if v is not None}
    metrics = next(iter(stats.values()))[0].keys()
    results = {m: {name: stats[name][0][m] if name in stats else None for name in SETS} for m in metrics}
    return results, {name: s[1] for name, s in stats.items()}


def evaluate(real_videos: torch.Tensor, generated_videos: torch.Tensor | None,
             baseline_videos: torch.Tensor | None = None, seed: int = 0) -> dict[str, dict[str, float | None]]:
    """{metric: {"real": value, "generated": value, "baseline": value}} (None for a set not given)."""
    return _evaluate_sets({"real": real_videos, "generated": generated_videos, "baseline": baseline_videos},
                          seed)[0]


def evaluate_models(frame_generator: torch.nn.Module, video_generator: torch.nn.Module, n: int = 1000,
                    seed: int = 0, device: str | torch.device = "cpu", real_source=None, with_videos: bool = False):
    """Real, generated and random-code baseline videos (n each) and their metrics.

    Returns results ({metric: {set: value}}), or with with_videos=True (results, distributions, videos) where
    videos maps set name -> [n, T, 30, 30] tensor in [-1, 1] and distributions set name -> per-item values.
    """
    videos = {
        "real": load_real_videos(n, real_source),
        "generated": as_videos(generate_videos(frame_generator, video_generator, n, seed, device)),
        "baseline": as_videos(random_code_baseline(frame_generator, n, seed=seed + 1, device=device)),
    }
    results, distributions = _evaluate_sets(videos, seed)
    return (results, distributions, videos) if with_videos else results


def _format_value(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isnan(x):
        return "nan"
    return f"{x:.4g}"


def format_table(results: dict[str, dict[str, float | None]]) -> str:
    """One plain-text table: metric, real, generated, baseline."""
    rows = [("metric", *SETS)] + [(m, *(_format_value(v.get(s)) for s in SETS)) for m, v in results.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [rows[0][0].ljust(widths[0]) + "".join("  " + c.rjust(w) for c, w in zip(rows[0][1:], widths[1:]))]
    lines.append("-" * len(lines[0]))
    lines += [r[0].ljust(widths[0]) + "".join("  " + c.rjust(w) for c, w in zip(r[1:], widths[1:])) for r in rows[1:]]
    return "\n".join(lines)


def _json_value(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def draw_histograms(distributions: dict[str, dict[str, torch.Tensor]], path: str | Path, replace: bool = False) -> Path:
    """One PNG at `path` (files.write_file: complete or absent; an existing file only with replace=True)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = histogram_image(distributions)
    return write_file(path, lambda f: image.save(f, format="PNG"), replace=replace)


def histogram_image(distributions: dict[str, dict[str, torch.Tensor]]) -> Image.Image:
    """A panel per distribution, the sets' normalised histograms as grouped bars."""
    pw, ph, margin = 330, 210, 28
    cols = 3
    rows = math.ceil(len(HISTOGRAMS) / cols)
    image = Image.new("RGB", (cols * pw, rows * ph + margin), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    x = 8
    for name in SETS:                                                               # legend
        if name in distributions:
            draw.rectangle([x, 9, x + 12, 19], fill=COLOURS[name])
            draw.text((x + 16, 8), name, fill="black", font=font)
            x += 110
    for p, (key, title, low, high, bins) in enumerate(HISTOGRAMS):
        ox, oy = (p % cols) * pw, margin + (p // cols) * ph
        left, right, top, bottom = ox + 30, ox + pw - 12, oy + 22, oy + ph - 24
        draw.text((ox + 30, oy + 4), title, fill="black", font=font)
        draw.line([left, bottom, right, bottom], fill="black")
        draw.line([left, top, left, bottom], fill="black")
        slot = (right - left) / bins
        if key == "blobs_per_frame":                                                 # integer bins 0 .. 8+
            for b in range(bins):
                draw.text((left + (b + 0.4) * slot, bottom + 4), f"{b}" + ("+" if b == bins - 1 else ""),
                          fill="black", font=font)
        else:                                                                        # the last bin holds overflow
            for frac, label in ((0.0, f"{low:g}"), (0.5, f"{(low + high) / 2:g}"), (1.0, f"{high:g}+")):
                draw.text((left + frac * (right - left) - 6 * frac * len(label), bottom + 4), label,
                          fill="black", font=font)
        present = [s for s in SETS if s in distributions and key in distributions[s]]
        hists = {}
        for s in present:
            values = distributions[s][key].double().clamp(low, high)
            h = torch.histc(values, bins, low, high) if values.numel() else torch.zeros(bins, dtype=torch.float64)
            hists[s] = h / max(1.0, float(h.sum()))
        peak = max([float(h.max()) for h in hists.values()] + [1e-9])
        draw.text((ox + 2, top - 2), f"{peak:.2f}", fill="gray", font=font)
        bar = slot / max(1, len(present))
        for k, s in enumerate(present):
            for b, value in enumerate(hists[s].tolist()):
                if value > 0:
                    x0 = left + b * slot + k * bar
                    draw.rectangle([x0, bottom - (bottom - top) * value / peak, x0 + max(1.0, bar - 1), bottom],
                                   fill=COLOURS[s])
    return image


def write_report(results: dict, out_dir: str | Path, generated_videos: torch.Tensor, real_videos: torch.Tensor,
                 baseline_videos: torch.Tensor | None = None, distributions: dict | None = None,
                 info: dict | None = None, samples: int = 8, overwrite: bool = False) -> list[Path]:
    """Write eval.json (results plus `info`), eval.png (distributions; computed from the videos when not
    given) and samples.gif (up to `samples` videos per set, one row per set). Returns the paths. Like `vidgan
    sample`, the three share the first free number (eval-2.json, eval-2.png, samples-2.gif, ...), taken
    atomically; overwrite=True replaces the unnumbered names (files.write_numbered)."""
    out = Path(out_dir)
    videos = {"real": real_videos, "generated": generated_videos, "baseline": baseline_videos}
    videos = {k: as_videos(v) for k, v in videos.items() if v is not None}
    if distributions is None:
        distributions = _evaluate_sets(videos)[1]
    payload = {"metrics": {m: {s: _json_value(v) for s, v in sets.items()} for m, sets in results.items()},
               **(info or {})}
    text = (json.dumps(payload, indent=2) + "\n").encode()
    image = histogram_image(distributions)
    k = min(samples, *(v.shape[0] for v in videos.values()))
    grid = torch.cat([videos[s][:k] for s in SETS if s in videos])                  # one row per set
    files = [("eval.json", lambda f: f.write(text)), ("eval.png", lambda f: image.save(f, format="PNG")),
             ("samples.gif", media.gif_writer(grid, cols=k))]
    paths = write_numbered(out, files, overwrite=overwrite)       # creates out; a failed write leaves none of it
    saved(f"{', '.join(map(str, paths))} are written")
    return paths


def run_eval(frame_generator: torch.nn.Module, video_generator: torch.nn.Module, out_dir: str | Path,
             n: int = 1000, seed: int = 0, device: str | torch.device = "cpu", real_source=None,
             overwrite: bool = False) -> tuple[dict, list[Path]]:
    """Evaluate already-loaded models and write the report; returns (results, files written)."""
    start = time.perf_counter()
    results, distributions, videos = evaluate_models(frame_generator, video_generator, n, seed, device,
                                                     real_source, with_videos=True)
    info = {"n": n, "seed": seed, "real_data_seed": EVAL_DATA_SEED if real_source is None else None,
            "baseline": "30 independent codes z ~ N(0, I) through G_F",
            "seconds": round(time.perf_counter() - start, 2)}
    files = write_report(results, out_dir, videos["generated"], videos["real"], videos["baseline"], distributions, info,
                         overwrite=overwrite)
    return results, files


def load_models(checkpoint: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, torch.nn.Module]:
    """(frame_generator, video_generator) of a video (phase 2) checkpoint, in eval mode on `device`."""
    from .checkpoint import load_checkpoint, load_matching, saved_config
    from .step import build_frame_generator, build_video_generator, resolve_device
    ckpt = load_checkpoint(checkpoint, expected_phase="video")
    cfg = saved_config(ckpt, checkpoint)
    dev = resolve_device(device)
    frame_generator, video_generator = build_frame_generator(cfg), build_video_generator(cfg)
    load_matching(frame_generator, ckpt["frame_generator"], "the frame generator", checkpoint)
    load_matching(video_generator, ckpt["generator"], "the video generator", checkpoint)
    return frame_generator.to(dev).eval(), video_generator.to(dev).eval()


def evaluate_checkpoint(checkpoint: str | Path, folder: str | Path, n: int = 1000, seed: int = 0,
                        device: str = "cpu", overwrite: bool = False) -> tuple[dict, list[Path]]:
    """`vidgan eval`: a video checkpoint's metrics (real, generated, random-code baseline) and report files."""
    if not 2 <= n <= EVAL_LIMIT:
        raise ConfigError(f"invalid --n {n}: evaluation takes 2 to {EVAL_LIMIT:,} videos per set")
    frame_generator, video_generator = load_models(checkpoint, device)
    return run_eval(frame_generator, video_generator, Path(folder), n=n, seed=seed, device=device, overwrite=overwrite)
