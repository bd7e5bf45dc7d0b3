"""The projected GPU memory of `--fast` training (vidgan_fast/lab/memory.py): the caching-allocator model by hand,
the live-bytes counter, and the projection, which runs fast/graphs.GraphedSteps itself on meta tensors (a CPU
stand-in of the capture, MetaRuntime), so it follows what the product allocates, frees and releases.

Mutation check, done by hand once: not merging freed neighbours, not rounding to 512 B, a capture that does not
switch to the graph pool, and GraphedSteps without its release before capture each failed these tests."""
from __future__ import annotations

import pytest
import torch

from vidgan_fast.config import preset
from vidgan_fast.lab import memory
from vidgan_fast.lab.report import memory_table
from vidgan_fast.lab.memory import GiB, MiB, CachingAllocator

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_allocator_rounds_splits_merges_and_caches():
    a = CachingAllocator()
    a.malloc("x", 100)                        # small: 512 B of a 2 MiB segment
    assert a.allocated == 512 and a.reserved == 2 * MiB
    a.malloc("y", 3000)                       # the same segment, split
    assert a.reserved == 2 * MiB and a.allocated == 512 + 3072
    a.malloc("big", 5 * MiB)                  # large, under 10 MiB: a 20 MiB segment
    assert a.reserved == 22 * MiB
    a.malloc("mid", 11 * MiB)                 # fits the 15 MiB left of that segment (best fit): no new one
    assert a.reserved == 22 * MiB
    a.malloc("huge", 16 * MiB + 1)            # nothing free fits: its own segment, rounded up to 2 MiB
    assert a.reserved == 22 * MiB + 18 * MiB
    a.free("big")
    a.free("mid")
    a.malloc("again", 6 * MiB)                # the freed 20 MiB segment again (merged back whole), no new one
    assert a.reserved == 40 * MiB
    a.free("x")
    a.free("y")                               # neighbours merge back into one free 2 MiB block
    a.empty_cache()                           # ... which empty_cache gives back; the 20 MiB one is in use
    assert a.reserved == 38 * MiB and a.peak_reserved == 40 * MiB
    a.free("again")
    a.free("huge")
    a.empty_cache()
    assert a.reserved == 0 == a.allocated


def test_live_bytes_by_hand():
    live = memory.Allocations(CachingAllocator())
    with live:
        a = torch.empty(1000, device="meta")                  # 4,000 B
        b = torch.empty(500, dtype=torch.bfloat16, device="meta")   # 1,000 B
        view, tail = a.view(10, 100), a[1:]                   # views: no new storage
        a.add_(1.0)                                           # in place: no new storage
        assert live.now == live.peak == 5000
        del a, view, tail
        assert live.now == 1000 and live.peak == 5000
        live.reset_peak()
        c = b.float()                                         # 2,000 B
        assert live.now == live.peak == 3000
    del b, c
    assert live.now == 0


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_the_paper_preset_fits_in_reserved_bytes(precision):
    """Reserved bytes under CUDA graphs, the CUDA context and workspaces included, at most 10.5 GiB at the paper
    preset (the target that leaves an 11 GiB card half a GiB); the data set is placed on the GPU only where it fits
    under 11 GiB with everything else, else batches come from the host. The state and the graphs' pool are what
    GraphedSteps leaves: after its release before capture the regular pool keeps about the state only."""
    rows = memory.project(preset("paper"), precision)
    table = memory_table(rows, precision)                   # what `vidgan bench --static` prints of them
    assert len(table) == 2 + len(rows) and all(f"| {precision} | {r['phase']} |" in t for r, t in zip(rows, table[2:]))
    for r in rows:
        assert r["total"] <= 10.5 * GiB, r
        from vidgan_fast.fast.device_data import MARGIN
        assert r["data_on_gpu"] == (r["fixed"] + r["reserved"] + r["data"] + MARGIN <= memory.BUDGET)
        # the captured steps' transients: activations, input gradients, G's gradients (conv1-3's weight gradients
        # are never stored: their RMSprop step runs in the weight-gradient launch, fast/bank.py)
        assert r["graph_reserved"] > 0.1 * GiB
        assert r["reserved"] >= r["regular_reserved_peak"] and r["steady_live"] > r["persistent"]


def test_the_release_before_capture_is_what_keeps_the_pools_apart(monkeypatch):
    """Without GraphedSteps' release (gradients kept, cache not emptied) the regular pool keeps the warm-up's
    blocks beside the graphs' pool and the total grows: the projection sees the product's policy, not its own."""
    cfg = preset("tiny")
    released = memory.project_phase(cfg.replace(fast=True), "frames")
    monkeypatch.setattr(memory.MetaRuntime, "release_cache", lambda self: None)
    kept = memory.project_phase(cfg.replace(fast=True), "frames")
    assert kept["reserved"] > released["reserved"]
