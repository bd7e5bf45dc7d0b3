"""Projected GPU memory of `--fast` training at a preset, without a GPU: the real steps run on meta tensors.

    rows = project(preset("paper"), "tf32")      # one dict per phase: persistent and peak bytes, per step
    vidgan bench --static                         # prints them under the roofline (vidgan_fast/roofline_report.py)

How: the `--fast` training state of each phase is built on the meta device (as the compile gate does, so the
banks, the frozen G_F, the optimizers and their state are the real ones), then one D step and one G step of
step.py run twice with no kernel launched (fast.backend.launching_nothing, compiled or interpreted Triton: the
kernels' outputs are allocated by their wrappers as on a GPU, nothing is computed). A TorchDispatchMode sees
every tensor PyTorch allocates and counts each storage's bytes from the op that made it until the storage dies
(a weak reference per storage), so `peak` is the most bytes live at once: the same quantity as
torch.cuda.max_memory_allocated, before the caching allocator's rounding (blocks of 512 B; small), fragmentation
and the CUDA context (several hundred MB, not counted). The second round is the steady state: gradients,
optimizer state and the bf16 weight copies exist by then. Persistent = what is live between steps (weights,
buffers, gradients, optimizer state, weight copies). Data held on the GPU (fast/device_data.py, when it fits) is
added from its size. With CUDA graphs the D and G graphs share one pool (fast/graphs.py), which holds the larger
step's transient bytes, so a graphed run's reserved memory is about the larger step peak (+ the data).
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

FRAMES, SIZE = 30, 30                         # a video of the data set (data.py), uint8 on the device


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages allocated under the mode (plus those `adopt`ed), and their peak."""

    def __init__(self):
        super().__init__()
        self.seen: set[int] = set()
        self.now = self.peak = 0

    def adopt(self, tensors) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._count(t.untyped_storage())

    def _count(self, storage) -> None:
        key = storage._cdata
        if key in self.seen:
            return
        size = storage.nbytes()
        self.seen.add(key)
        self.now += size
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.seen.discard(key)
        self.now -= size

    def reset_peak(self) -> None:
        self.peak = self.now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.adopt(tree_leaves(out))
        return out


def _state_tensors(state) -> list:
    from vidgan_fast.fast.graphs import trained_parts
    modules, optimizers = trained_parts(state)
    tensors = [t for _, m in modules for t in (*m.parameters(), *m.buffers())]
    tensors += [t for _, opt in optimizers for s in opt.state.values() for t in s.values()]
    for module in (state.renderer, state.frame_generator):     # phase 2: the frozen renderer, and the reference
        if module is not None:                                 # G_F that to_fast keeps beside it (checkpoints)
            tensors += [t for t in vars(module).values() if isinstance(t, torch.Tensor)]
            tensors += [*module.parameters(), *module.buffers()]
    return tensors


def project_phase(cfg, phase: str, n_videos: int | None = None) -> dict:
    """{phase, persistent, d_peak, g_peak, data, total} in bytes for one phase of `cfg` (a TrainConfig with
    fast=True); data: n_videos (default cfg.n_videos) videos on the GPU; total: the larger step peak + data."""
    from vidgan_fast import step
    from vidgan_fast.fast.backend import launching_nothing
    from vidgan_fast.fast.kernel_gate import meta_fast_state
    live, peaks = LiveBytes(), {}
    with launching_nothing():
        state = meta_fast_state(cfg, phase)
        real = torch.empty(state.phase.sample_shape, device="meta")
        z = torch.empty(state.phase.batch, step.Z_DIM, device="meta")
        live.adopt([*_state_tensors(state), real, z])
        with live:
            for _ in range(2):                    # the second round: steady state (gradients, state, copies made)
                live.reset_peak()
                step.d_step(state, real, z)
                peaks["d"] = live.peak
                live.reset_peak()
                step.g_step(state, z)
                peaks["g"] = live.peak
        persistent = live.now
    data = (cfg.n_videos if n_videos is None else n_videos) * FRAMES * SIZE * SIZE
    return {"phase": phase, "persistent": persistent, "d_peak": peaks["d"], "g_peak": peaks["g"], "data": data,
            "total": max(peaks.values()) + data}


def project(cfg, precision: str | None = None) -> list[dict]:
    """Both phases of `cfg` under `precision` (default: cfg's), as --fast trains them."""
    from dataclasses import replace
    precision = precision or cfg.precision
    cfg = replace(cfg, fast=True, tf32=precision == "tf32", bf16=precision == "bf16")
    return [project_phase(cfg, phase) for phase in ("frames", "video")]
