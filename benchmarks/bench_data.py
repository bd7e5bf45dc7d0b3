"""Bouncing-balls generation speed (CPU): simulation, rendering and the uint8 file writer on a chunk of videos,
with the time extrapolated to the paper's 100,000 videos in each result's extra_info.

    python -m pytest benchmarks/bench_data.py --benchmark-only

`render_intraop` renders the same chunks on the calling thread with torch's own intra-op threads, the
alternative to the worker-thread pool that `render` uses.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vidgan_fast.data import RENDER_CHUNK, BouncingBalls, _render_chunk, render, write_dataset

VIDEOS = 2000
FULL = 100_000


@pytest.fixture(scope="module")
def dataset():
    return BouncingBalls(n=FULL, seed=0)


@pytest.fixture(scope="module")
def positions(dataset):
    return dataset.trajectories(np.arange(VIDEOS))[0]


def _record(benchmark, videos: int = VIDEOS):
    benchmark.extra_info["videos"] = videos
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    if benchmark.stats is not None:
        benchmark.extra_info["seconds_for_100k"] = benchmark.stats.stats.median * FULL / videos


def test_simulate(benchmark, dataset):
    benchmark.pedantic(dataset.trajectories, args=(np.arange(VIDEOS),), rounds=5, warmup_rounds=1)
    _record(benchmark)


def test_render_pool(benchmark, positions):
    benchmark.pedantic(render, args=(positions, 30), rounds=5, warmup_rounds=1)
    _record(benchmark)


def test_render_intraop(benchmark, positions):
    def render_intraop():
        out = torch.empty(len(positions), 30, 30, 30)
        for s in range(0, len(positions), RENDER_CHUNK):
            out[s:s + RENDER_CHUNK] = _render_chunk(positions[s:s + RENDER_CHUNK], 30)
        return out
    benchmark.pedantic(render_intraop, rounds=5, warmup_rounds=1)
    _record(benchmark)


def test_videos_end_to_end(benchmark, dataset):
    benchmark.pedantic(dataset.videos, args=(np.arange(VIDEOS),), rounds=5, warmup_rounds=1)
    _record(benchmark)


def test_write_dataset(benchmark, tmp_path):
    path = tmp_path / "balls.npy"
    benchmark.pedantic(write_dataset, args=(path, VIDEOS), kwargs=dict(progress=False, overwrite=True),
                       rounds=3, warmup_rounds=1)
    _record(benchmark)
