"""Per-layer tiles: each tunable kernel has a fixed list of candidate tiles; on a real GPU each candidate is timed
once per problem (kernel, shapes, precision) and the fastest is cached, per device, in memory and in a JSON file.

    tile = choose("forward", problem, "tf32", candidates, launch, x.device)     # a kernels/tiles.Tile
    launch(tile)                       # launch(candidate) runs the kernel with that candidate's tile

The first candidate of every list is the launcher's fixed GPU tile: what runs where nothing is timed (under the
interpreter, on the CPU or meta device, with VIDGAN_AUTOTUNE=0, inside CUDA-graph capture without a cached
winner) and what the per-launch cost model (lab/cost.py) and the compile gate's paper rows assume.
- Timing happens outside capture only: the fast path's eager warm-up (fast/graphs.py) and first-step check run
  every launch before any capture, so capture finds every winner cached. Called while the current stream is
  capturing, choose() returns the cached winner or the fixed tile and never times.
- Cache file: $VIDGAN_CACHE/autotune.json, else ~/.cache/vidgan_fast/autotune.json; keyed by the device name
  and the Triton version (a new driver stack is re-tuned). A file that cannot be read gives a one-line warning and
  is ignored (rewritten on the next winner).
- Timing overwrites the launch's outputs with identical values (every candidate writes all of them), so a tuned
  launch leaves the same result as an untuned one, up to the summation order of the winning tile.
No autograd and no model here: launch wrappers call choose() (kernels/conv.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import warnings
from pathlib import Path

from vidgan_fast.kernels.mode import interpreting

SWITCH = "VIDGAN_AUTOTUNE"          # "0": never time, always the fixed tiles
CACHE_DIR = "VIDGAN_CACHE"
_forced: dict = {}                  # kernel -> candidate, see forcing()


def enabled() -> bool:
    return os.environ.get(SWITCH, "1").strip() != "0"


def cache_path() -> Path:
    root = os.environ.get(CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "vidgan_fast")
    return Path(root) / "autotune.json"


def cuda_device_key(device) -> str:
    import torch
    import triton
    return f"{torch.cuda.get_device_name(device)} | triton {triton.__version__}"


def cuda_capturing() -> bool:
    import torch
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def bench_ms(fn) -> float:
    """Median milliseconds of fn() on the current CUDA stream (triton.testing.do_bench, short runs)."""
    from triton.testing import do_bench
    return do_bench(fn, warmup=5, rep=20, return_mode="median")


class Tuner:
    """Timed choice among candidates, cached per device key. The clock, the device key and the capture test are
    injectable, so the cache logic is testable without a GPU (tests/test_autotune.py)."""

    def __init__(self, path=None, timer=bench_ms, device_key=cuda_device_key, capturing=cuda_capturing):
        self.path = Path(path) if path is not None else cache_path()
        self.timer, self.device_key, self.capturing = timer, device_key, capturing
        self.table: dict | None = None           # {device key: {problem key: candidate}}, loaded lazily

    def _load(self) -> dict:
        if self.table is None:
            self.table = {}
            if self.path.exists():
                try:
                    table = json.loads(self.path.read_text())
                    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                        raise ValueError("not a {device: {problem: tile}} table")
                    self.table = table
                except (OSError, ValueError) as e:
                    warnings.warn(f"autotune: ignoring unreadable tile cache {self.path} ({e})", RuntimeWarning,
                                  stacklevel=3)
        return self.table

    def _save(self) -> None:
        from vidgan_fast.errors import VidganError
        from vidgan_fast.files import write_file
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.table, indent=1, sort_keys=True).encode()
            write_file(self.path, lambda f: f.write(text), replace=True)   # a reader sees the old or the new file
        except (OSError, VidganError) as e:
            warnings.warn(f"autotune: could not write the tile cache {self.path} ({e})", RuntimeWarning,
                          stacklevel=3)

    def pick(self, kernel: str, problem, precision: str, candidates, launch, device=None):
        """The cached winner for (kernel, problem, precision) on this device, else the fastest candidate (each
        launched and timed once, outside capture), else candidates[0] while capturing."""
        candidates = list(candidates)
        device_key, key = self.device_key(device), f"{kernel} {precision} {problem}"
        cached = self._load().get(device_key, {}).get(key)
        match = [c for c in candidates if cached is not None and list(_fields(c)) == list(cached)]
        if match:
            return match[0]
        if self.capturing():
            return candidates[0]
        times = []
        for c in candidates:
            try:
                times.append(self.timer(lambda c=c: launch(c)))
            except Exception as e:                     # noqa: BLE001 - a candidate that fails is not chosen
                warnings.warn(f"autotune: {kernel} candidate {c} failed ({type(e).__name__}: {e})", RuntimeWarning)
                times.append(math.inf)
        best = candidates[min(range(len(candidates)), key=times.__getitem__)]
        self.table.setdefault(device_key, {})[key] = list(_fields(best))
        self._save()
        return best


_tuner: Tuner | None = None


def default_tuner() -> Tuner:
    global _tuner
    if _tuner is None:
        _tuner = Tuner()
    return _tuner


def _fields(candidate) -> tuple:
    """A candidate as plain values (a kernels/tiles.Tile's fields, or the candidate itself), for the JSON cache."""
    return dataclasses.astuple(candidate) if dataclasses.is_dataclass(candidate) else tuple(candidate)


def choose(kernel: str, problem, precision: str, candidates, launch, device):
    """The tile of one launch: a forced candidate (forcing()), else the fixed tile (candidates[0]) unless the
    launch runs on a CUDA device with autotuning on, else the tuner's choice."""
    if kernel in _forced:
        return _forced[kernel]
    if getattr(device, "type", None) != "cuda" or interpreting() or not enabled() or len(candidates) == 1:
        return candidates[0]
    return default_tuner().pick(kernel, problem, precision, candidates, launch, device)


@contextlib.contextmanager
def forcing(kernel: str, candidate):
    """Inside: every launch of `kernel` runs `candidate` (tests of each candidate; the compile gate)."""
    saved = _forced.get(kernel)
    _forced[kernel] = candidate
    try:
        yield
    finally:
        if saved is None:
            _forced.pop(kernel)
        else:
            _forced[kernel] = saved
