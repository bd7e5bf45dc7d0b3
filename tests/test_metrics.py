"""Video quality metrics: known answers on hand-rendered balls, separation of real videos from broken ones,
the report files and `vidgan eval` end to end on a tiny trained run."""
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vidgan_fast import metrics as M
from vidgan_fast.data import BouncingBalls
from vidgan_fast.cli import main
from vidgan_fast.errors import ConfigError
from vidgan_fast.evaluate import (evaluate, format_table, generate_videos, random_code_baseline,
                                  run_eval, write_report)
from vidgan_fast.models import FrameGenerator, VideoGenerator

SIZE = 30


def render(centres_px) -> torch.Tensor:
    """Balls at centres [T, n, 2] (row, col in pixels; pixel i spans [i, i+1]) -> video [T, 30, 30] in [-1, 1],
    with the data set's formula: each ball adds exp(-(d^2 / r^2)^4), r = 1.2 box units = 3.6 px, sum clipped to 1."""
    c = torch.as_tensor(centres_px, dtype=torch.float64).reshape(len(centres_px), -1, 2)
    grid = torch.arange(SIZE, dtype=torch.float64) + 0.5
    d2 = (grid.view(1, 1, -1, 1) - c[..., 0, None, None]) ** 2 + (grid.view(1, 1, 1, -1) - c[..., 1, None, None]) ** 2
    x = torch.exp(-((d2 / M.BALL_RADIUS_PX ** 2) ** 4)).sum(1).clamp(max=1.0)
    return (x * 2 - 1).float()


def track(*paths) -> torch.Tensor:
    """Videos [1, T, 30, 30] from ball paths, each a list of (row, col) per frame."""
    return render(np.stack(paths, axis=1))[None]


def real_videos(n, seed=7):
    return BouncingBalls(n=n, seed=seed).videos(np.arange(n)) * 2 - 1


# ---------------------------------------------------------------- known answers

def test_hand_rendered_balls_match_the_data_renderer():
    """The test renderer draws what vidgan_fast.data draws (data: component 0 = x along the columns, box units)."""
    from vidgan_fast.data import render as data_render
    xy = np.array([[[[4.1, 6.3], [7.7, 2.2]]]])                                    # [1 video, 1 frame, 2 balls, 2]
    ours = track([(6.3 * 3, 4.1 * 3)], [(2.2 * 3, 7.7 * 3)])
    assert torch.allclose(ours, data_render(xy, SIZE) * 2 - 1, atol=1e-5)


def test_static_ball():
    video = track([(15.0, 15.0)] * 10)
    blobs = M.find_blobs(video)
    assert blobs.counts.tolist() == [[1] * 10]
    assert torch.allclose(blobs.centre[blobs.valid], torch.tensor([15.0, 15.0]), atol=1e-4)
    assert M.binarised_mse(video).item() == 0.0
    speed, ok = M.displacements(blobs)
    assert ok.sum() == 9 and speed[ok].abs().max() < 1e-4
    s, _ = M.video_statistics(torch.cat([video, video]))
    assert s["temporal_coherence"] == 1.0 and s["accelerating_steps"] == 0.0
    assert s["frames_with_3_blobs"] == 0.0 and s["blobs_per_frame"] == 1.0


def test_lone_ball_radius():
    """A lone ball's x > 0 disc has radius 3.6 * ln(2)^(1/8) = 3.44 px. Counting pixels is off by up to
    ~0.25 px for one sub-pixel position (a centre on a pixel corner gives 32 pixels, radius 3.19) but is
    unbiased over random positions."""
    assert abs(M.LONE_BLOB_RADIUS_PX - 3.438) < 1e-3
    centres = 10.0 + 10.0 * torch.rand(200, 2, generator=torch.Generator().manual_seed(1))
    radius = M.blob_radius(M.find_blobs(track(centres.tolist())))
    assert radius.numel() == 200
    assert (radius - M.LONE_BLOB_RADIUS_PX).abs().max() < 0.3
    assert abs(radius.mean().item() - M.LONE_BLOB_RADIUS_PX) < 0.03
    corner = M.blob_radius(M.find_blobs(track([(15.0, 15.0)] * 2)))
    assert torch.allclose(corner, torch.tensor(math.sqrt(32 / math.pi)))


def test_constant_velocity_displacement():
    """1.3 px/frame diagonal: each step moves sqrt(2) * 1.3 px. The weighted centroid of a sampled ball is off
    by under 0.06 px, so single steps agree to 0.12 px and their mean (which telescopes) to 0.02 px."""
    path = [(8.0 + 1.3 * t, 8.0 + 1.3 * t) for t in range(11)]
    blobs = M.find_blobs(track(path))
    speed, ok = M.displacements(blobs)
    assert ok.sum() == 10
    assert torch.allclose(speed[ok], torch.tensor(1.3 * math.sqrt(2)), atol=0.12)
    assert abs(speed[ok].mean().item() - 1.3 * math.sqrt(2)) < 0.02
    change, exists, accelerating, _ = M.coherence_steps(blobs)
    assert exists.sum() == 9 and not accelerating.any() and change[exists].max() < 0.25


def test_two_balls_crossing():
    """Head-on along row 15, 1.5 px/frame each: one blob while the centres are closer than 7.5 px (the sum of
    two tails crosses 1/2 at the midpoint at d = 2 * 3.6 * ln(4)^(1/8)), two blobs otherwise."""
    t = np.arange(13)
    a = [(15.0, 6.0 + 1.5 * k) for k in t]
    b = [(15.0, 24.0 - 1.5 * k) for k in t]
    blobs = M.find_blobs(track(a, b))
    gap = np.abs(np.array(a)[:, 1] - np.array(b)[:, 1])
    merge_gap = 2 * M.BALL_RADIUS_PX * math.log(4) ** 0.125
    for k, g in enumerate(gap):
        if abs(g - merge_gap) > 0.5:
            assert blobs.counts[0, k] == (1 if g < merge_gap else 2), (k, g)
    assert blobs.counts[0, 6] == 1 and blobs.counts[0, 0] == 2
    # far apart: each ball moves 1.5 px per frame; the merged blob stays put at the crossing
    speed, ok = M.displacements(blobs)
    assert torch.allclose(speed[0, 0][ok[0, 0]], torch.tensor(1.5), atol=0.05)
    assert speed[0, 5, 0] < 0.05 and speed[0, 6, 0] < 0.05          # merged at 5, 6, 7: the centroid is still
    # the merge is a contact: every acceleration is explained
    _, exists, accelerating, explained = M.coherence_steps(blobs)
    assert accelerating.any() and (explained | ~accelerating).all()


def test_empty_and_full_frames():
    empty = -torch.ones(1, 4, SIZE, SIZE)
    full = torch.ones(1, 4, SIZE, SIZE)
    assert M.find_blobs(empty).counts.sum() == 0
    assert M.find_blobs(full).counts.tolist() == [[1] * 4]
    assert M.binarised_mse(empty).item() == 0.0
    flicker = torch.stack([empty[0, 0], full[0, 0]])[None]               # empty -> full: every pixel flips
    assert M.binarised_mse(flicker).item() == 1.0
    assert M.binarised_mse(torch.cat([empty[:, :3], full[:, :1]], 1)).item() == pytest.approx(1 / 3)
    zero_and_off = torch.stack([torch.zeros(SIZE, SIZE), -torch.ones(SIZE, SIZE)] * 2)[None]
    assert M.binarised_mse(zero_and_off).item() == 0.0                   # exactly 0 is "off", like -1
    s, _ = M.video_statistics(torch.cat([empty, empty]))
    assert s["blobs_per_frame"] == 0.0 and math.isnan(s["temporal_coherence"]) and s["diversity_rms"] == 0.0


def test_unexplained_turn_breaks_coherence_and_a_wall_bounce_does_not():
    """A ball reversing in mid-box is an unexplained acceleration; the same reversal at a wall is explained."""
    middle = [(15.0, 11.0 + 1.5 * k) for k in range(5)] + [(15.0, 17.0 - 1.5 * k) for k in range(1, 5)]
    wall = [(15.0, 20.0 + 1.5 * k) for k in range(5)] + [(15.0, 26.0 - 1.5 * k) for k in range(1, 5)]
    s_mid, _ = M.video_statistics(torch.cat([track(middle), track(middle)]))
    s_wall, _ = M.video_statistics(torch.cat([track(wall), track(wall)]))
    assert s_mid["accelerating_steps"] == pytest.approx(1 / 7)          # 7 steps, one turn of 3 px/frame
    assert s_mid["temporal_coherence"] == pytest.approx(6 / 7)
    assert s_wall["accelerating_steps"] == pytest.approx(1 / 7)
    assert s_wall["temporal_coherence"] == 1.0


def test_turn_beside_another_ball_is_explained_only_when_close():
    """Ball B turns at column 17 beside a still ball A: at 8.0 px apart (< 2r + 1 = 8.2, not merged) the turn
    is a ball contact; with A 10 px away it is not. 14 steps (7 per ball), one of them accelerating."""
    turn = [(15.0, 23.0 - 1.5 * k) for k in range(5)] + [(15.0, 17.0 + 1.5 * k) for k in range(1, 5)]
    for a_col, coherence in [(9.0, 1.0), (7.0, 13 / 14)]:
        video = track([(15.0, a_col)] * 9, turn)
        assert M.find_blobs(video).counts.tolist() == [[2] * 9]
        s, _ = M.video_statistics(torch.cat([video, video]))
        assert s["accelerating_steps"] == pytest.approx(1 / 14)
        assert s["temporal_coherence"] == pytest.approx(coherence)


def test_diversity_detects_mode_collapse():
    real = real_videos(64)
    collapsed = real[:1].expand(64, -1, -1, -1) + 0.01 * torch.randn(64, *real.shape[1:],
                                                                      generator=torch.Generator().manual_seed(0))
    assert M.diversity(real).mean() > 0.6 > 0.05 > M.diversity(collapsed).mean()


def flood_fill_count(mask: np.ndarray, connectivity: int) -> tuple[int, np.ndarray]:
    """Plain BFS labelling of one frame: (count, labels with -1 off)."""
    h, w = mask.shape
    labels = -np.ones((h, w), int)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if connectivity == 8 else [])
    count = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x] and labels[y, x] < 0:
                stack, labels[y, x] = [(y, x)], count
                while stack:
                    cy, cx = stack.pop()
                    for dy, dx in steps:
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and labels[ny, nx] < 0:
                            labels[ny, nx] = count
                            stack.append((ny, nx))
                count += 1
    return count, labels


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("shape,density", [((6, 30, 30), 0.5), ((5, 7, 11), 0.6), ((3, 1, 9), 0.5), ((4, 13, 5), 0.1)])
def test_labelling_matches_flood_fill(connectivity, shape, density):
    g = torch.Generator().manual_seed(sum(shape) + connectivity)
    mask = torch.rand(shape, generator=g) < density
    pixels, component, count = M.label_components(mask, connectivity)
    assert torch.equal(pixels, mask.reshape(-1).nonzero().squeeze(1))
    ours = -np.ones(mask.numel(), int)
    ours[pixels.numpy()] = component.numpy()
    ours = ours.reshape(shape)
    total = 0
    for f in range(shape[0]):
        n, ref = flood_fill_count(mask[f].numpy(), connectivity)
        total += n
        on = ref >= 0
        pairs = set(zip(ref[on].tolist(), ours[f][on].tolist()))        # a bijection between the labellings
        assert len(pairs) == n == len({p[1] for p in pairs})
    assert count == total


def test_diversity_known_values():
    a, b = -torch.ones(1, 3, SIZE, SIZE), torch.ones(1, 3, SIZE, SIZE)
    assert torch.allclose(M.diversity(torch.cat([a, b])), torch.tensor([2.0]))
    assert M.diversity(torch.cat([a, a, a])).tolist() == [0.0, 0.0, 0.0]
    mixed = M.diversity(torch.cat([a, a, b, b]))                        # 6 pairs, 4 of them a-b
    assert mixed.shape == (6,) and mixed.mean().item() == pytest.approx(4 / 3)
    half = torch.cat([a[:, :2], b[:, :1]], 1)                            # differs from a on 1 frame of 3
    assert M.diversity(torch.cat([a, half])).item() == pytest.approx(math.sqrt(4 / 3))
    assert M.diversity(real_videos(100), subset=10).shape == (45,)


def test_five_dim_input_and_bad_input():
    video = track([(15.0, 10.0 + k) for k in range(6)])
    assert torch.equal(M.binarised_mse(video), M.binarised_mse(video[:, None]))
    with pytest.raises(ConfigError, match="C = 1"):
        M.binarised_mse(torch.zeros(1, 2, 4, SIZE, SIZE))
    with pytest.raises(ConfigError, match=r"\[N, T, H, W\]"):
        M.binarised_mse(torch.zeros(4, SIZE, SIZE))
    with pytest.raises(ConfigError, match="T >= 2"):
        M.binarised_mse(torch.zeros(2, 1, SIZE, SIZE))
    with pytest.raises(ConfigError, match="NaN"):
        M.binarised_mse(torch.full((1, 3, SIZE, SIZE), float("nan")))
    with pytest.raises(ConfigError, match="floating point"):
        M.binarised_mse(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.long))
    with pytest.raises(ConfigError, match="connectivity"):
        M.label_components(torch.zeros(1, 3, 3, dtype=torch.bool), 6)
    with pytest.raises(ConfigError, match="at least 2 videos"):
        M.diversity(video)


# ---------------------------------------------------------------- separation

@pytest.fixture(scope="module")
def real_stats():
    videos = real_videos(200)
    shuffled = videos[:, torch.randperm(videos.shape[1], generator=torch.Generator().manual_seed(0))]
    return M.video_statistics(videos)[0], M.video_statistics(shuffled)[0]


def test_real_videos_look_like_bouncing_balls(real_stats):
    real, _ = real_stats
    assert real["temporal_coherence"] > 0.995
    assert 0.75 < real["frames_with_3_blobs"] < 0.95          # balls in contact merge into one blob
    assert abs(real["blob_radius_px"] - M.LONE_BLOB_RADIUS_PX) < 0.2
    assert 0.7 < real["speed_px_per_frame"] < 1.4             # |v| = 0.5 / sqrt(3) box units = 0.87 px rms
    assert real["binarised_mse_mean"] < 0.06


def test_metrics_separate_real_from_frame_shuffled(real_stats):
    real, shuffled = real_stats
    assert shuffled["binarised_mse_mean"] > 3 * real["binarised_mse_mean"]
    assert shuffled["speed_px_per_frame"] > 3 * real["speed_px_per_frame"]
    assert shuffled["temporal_coherence"] < real["temporal_coherence"] - 0.3
    assert shuffled["accelerations_explained"] < 0.7 < real["accelerations_explained"]
    # per-frame statistics cannot see the order of frames
    assert shuffled["frames_with_3_blobs"] == real["frames_with_3_blobs"]


def test_metrics_separate_real_from_random_code_baseline(real_stats):
    real, _ = real_stats
    torch.manual_seed(0)
    baseline = random_code_baseline(FrameGenerator(widths=(16, 16, 8, 8)), 40, seed=3)
    assert baseline.shape == (40, 1, 30, 30, 30)
    base, _ = M.video_statistics(baseline)
    assert base["binarised_mse_mean"] > 3 * real["binarised_mse_mean"]
    assert base["frames_with_3_blobs"] < real["frames_with_3_blobs"] - 0.4
    assert base["temporal_coherence"] < real["temporal_coherence"] - 0.3
    assert base["speed_px_per_frame"] > 2 * real["speed_px_per_frame"]


# ---------------------------------------------------------------- report and CLI

def tiny_models(seed=0):
    torch.manual_seed(seed)
    return FrameGenerator(widths=(16, 16, 8, 8)), VideoGenerator(hidden=(16, 16, 16), lstm_hidden=8)


def test_evaluate_table_and_report(tmp_path):
    frame_generator, video_generator = tiny_models()
    real = real_videos(12)
    frame_generator.train()
    generated = generate_videos(frame_generator, video_generator, 12, seed=0)
    assert frame_generator.training and video_generator.training                # own modes restored
    baseline = random_code_baseline(frame_generator, 12, seed=1)
    assert generated.shape == baseline.shape == (12, 1, 30, 30, 30)
    assert torch.equal(generated, generate_videos(frame_generator, video_generator, 12, seed=0))   # seeded
    results = evaluate(real, generated, baseline)
    assert set(results["temporal_coherence"]) == {"real", "generated", "baseline"}
    assert results["binarised_mse_mean"]["real"] == pytest.approx(M.binarised_mse(real).mean().item(), rel=1e-6)
    table = format_table(results)
    assert table.splitlines()[0].split() == ["metric", "real", "generated", "baseline"]
    assert len(table.splitlines()) == 2 + len(results)
    files = write_report(results, tmp_path, generated, real, baseline)
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["metrics"]["frames_with_3_blobs"]["real"] == pytest.approx(results["frames_with_3_blobs"]["real"])
    assert Image.open(tmp_path / "eval.png").size[0] > 600
    gif = Image.open(tmp_path / "samples.gif")
    assert gif.n_frames == 30 and [p.name for p in files] == ["eval.json", "eval.png", "samples.gif"]
    # without a baseline the table shows '-'
    assert " - " in format_table(evaluate(real, generated)) + " "
    with pytest.raises(ConfigError, match="at least 2 videos"):
        random_code_baseline(frame_generator, 1)


def test_run_eval_with_models(tmp_path):
    frame_generator, video_generator = tiny_models()
    results, files = run_eval(frame_generator, video_generator, tmp_path, n=8, seed=0,
                              real_source=BouncingBalls(n=8, seed=5))
    assert all(p.exists() for p in files)
    assert results["frames_with_3_blobs"]["real"] > 0.5
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 8


def test_eval_command_on_a_tiny_trained_run(tmp_path):
    from vidgan_fast.config import preset
    from vidgan_fast.train import train_all
    cfg = preset("tiny", n_videos=8, frames_batch=4, video_batch=2, frames_epochs=1, video_epochs=1,
                 log_every=1, checkpoint_every=100)
    train_all(cfg, tmp_path / "run", progress=False)
    video_ckpt = tmp_path / "run" / "video.ckpt"
    result = CliRunner().invoke(main, ["eval", str(video_ckpt), "--n", "6", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "temporal_coherence" in result.output and (tmp_path / "eval" / "samples.gif").exists()
    bad = CliRunner().invoke(main, ["eval", str(tmp_path / "missing.pt")])
    assert bad.exit_code != 0
