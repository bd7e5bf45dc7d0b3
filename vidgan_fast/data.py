"""Bouncing-balls videos (the paper's data set), generated vectorised and deterministic from (seed, index).

The simulation is the classic one (Sutskever's bounce_n / matricize, as in the TSBN data handler): a 10x10 box,
balls of radius 1.2 and equal mass, centres uniform in [2, 10) redrawn until no ball touches a wall or another
ball, Gaussian velocities scaled so that the whole [balls, 2] velocity matrix has norm 0.5. Each frame records
the positions, then takes two sub-steps of 0.5: move, reflect at the walls, then elastic collisions along the
line of centres for each pair (i, j < i) in the classic order. Frames are rendered at pixel centres
(k + 0.5) / size * 10: position component 0 (x) runs along the last array axis (columns), component 1 (y)
along the rows, as with the classic meshgrid. Each ball adds exp(-(d^2 / r^2)^4); the sum is clipped to 1.

Randomness is counter-based (a splitmix64 hash of (seed, index, draw number)), so video i is the same whether
it is generated alone or in any batch, and no Python loop runs per video.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vidgan_fast.errors import VidganError, os_reason
from vidgan_fast.files import make_folders, remove_empty, write_file

BOX = 10.0          # side of the square box
RADIUS = 1.2        # ball radius
SPEED = 0.5         # Frobenius norm of each video's [balls, 2] velocity matrix
STEP = 0.5          # sub-step length; 1 / STEP sub-steps per frame
SUBSTEPS = 2
MAX_EXPONENT = 87.0  # exp(-87) is still a normal float32; larger exponents give slow denormals, then 0
MAX_PLACEMENT_ROUNDS = 1000   # 3 balls: about 13% of draws fit, so 1000 failures in a row never happen
KEPT_POSITIONS_BYTES = 64 * 2 ** 20   # a BouncingBalls keeps every video's positions up to this size (see positions)


class DataError(VidganError, ValueError):
    """A data file that is missing, not a .npy array, of the wrong dtype or shape, or already there."""


# ---------------------------------------------------------------- counter-based random numbers (numpy uint64)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_INDEX_STRIDE = np.uint64(0xD1B54A32D192ED03)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective hash of uint64 values (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _video_keys(seed: int, indices: np.ndarray) -> np.ndarray:
    seed_key = _mix64(np.array([seed], np.uint64) + _GOLDEN)
    return _mix64(seed_key + indices.astype(np.uint64) * _INDEX_STRIDE)


def _uniforms(keys: np.ndarray, first: int, count: int) -> np.ndarray:
    """float64 [len(keys), count] in [0, 1): draws first .. first+count-1 of each video's stream."""
    draws = np.arange(first + 1, first + count + 1, dtype=np.uint64)
    bits = _mix64(keys[:, None] + draws[None, :] * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _normals(keys: np.ndarray, first: int, count: int) -> np.ndarray:
    """float64 [len(keys), count] standard normals (Box-Muller, both outputs), from 2 * ceil(count / 2) draws."""
    pairs = (count + 1) // 2
    u = _uniforms(keys, first, 2 * pairs)
    radius = np.sqrt(-2.0 * np.log(1.0 - u[:, :pairs]))
    angle = 2.0 * np.pi * u[:, pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :count]


# ---------------------------------------------------------------- simulation (numpy float64, vectorised over videos)

def _valid_placement(x: np.ndarray) -> np.ndarray:
    """[N, balls, 2] centres -> bool [N]: no ball touches a wall or another ball (the classic test)."""
    ok = ~((x - RADIUS < 0) | (x + RADIUS > BOX)).any(axis=(1, 2))
    for i in range(x.shape[1]):
        for j in range(i):
            if not ok.any():
                return ok
            w = x[:, i] - x[:, j]
            ok &= ~(np.sqrt(w[:, 0] * w[:, 0] + w[:, 1] * w[:, 1]) < 2 * RADIUS)
    return ok


def initial_state(seed: int, indices: np.ndarray, balls: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres and velocities at frame 0, each float64 [len(indices), balls, 2]."""
    keys = _video_keys(seed, indices)
    count = 2 * balls
    v = _normals(keys, 0, count).reshape(-1, balls, 2)
    norm = np.sqrt(sum(v[:, b, z] * v[:, b, z] for b in range(balls) for z in range(2)))
    v = v / norm[:, None, None] * SPEED
    x = np.empty_like(v)
    todo = np.arange(len(keys))
    for attempt in range(MAX_PLACEMENT_ROUNDS):   # redraw only the videos whose placement failed
        if todo.size == 0:
            return x, v
        trial = 2.0 + _uniforms(keys[todo], count * (attempt + 1), count).reshape(-1, balls, 2) * 8.0
        ok = _valid_placement(trial)
        x[todo[ok]] = trial[ok]
        todo = todo[~ok]
    raise ValueError(f"could not place {balls} balls of radius {RADIUS} apart in a {BOX:g}x{BOX:g} box "
                     f"after {MAX_PLACEMENT_ROUNDS} tries; use fewer balls")


def simulate(x0: np.ndarray, v0: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Classic bounce_n from given centres and velocities [N, balls, 2] (float64).

    Returns positions and velocities [N, frames, balls, 2], both recorded at the start of each frame.
    """
    x, v = x0.astype(np.float64, copy=True), v0.astype(np.float64, copy=True)
    n, balls, _ = x.shape
    positions = np.empty((n, frames, balls, 2))
    velocities = np.empty((n, frames, balls, 2))
    for t in range(frames):
        positions[:, t], velocities[:, t] = x, v
        for _ in range(SUBSTEPS):
            x += STEP * v
            v = np.where(x - RADIUS < 0, np.abs(v), v)
            v = np.where(x + RADIUS > BOX, -np.abs(v), v)
            for i in range(balls):
                for j in range(i):
                    w = x[:, i] - x[:, j]
                    dist = np.sqrt(w[:, 0] * w[:, 0] + w[:, 1] * w[:, 1])
                    hit = np.flatnonzero(dist < 2 * RADIUS)
                    if hit.size == 0:
                        continue
                    w = w[hit] / dist[hit, None]
                    vi, vj = v[hit, i], v[hit, j]
                    vi_n = w[:, 0] * vi[:, 0] + w[:, 1] * vi[:, 1]
                    vj_n = w[:, 0] * vj[:, 0] + w[:, 1] * vj[:, 1]
                    new_vj_n = vi_n                       # classic new_speeds with m1 == m2
                    new_vi_n = new_vj_n + (vj_n - vi_n)
                    v[hit, i] = vi + w * (new_vi_n - vi_n)[:, None]
                    v[hit, j] = vj + w * (new_vj_n - vj_n)[:, None]
    return positions, velocities


# ---------------------------------------------------------------- rendering (torch float32, multi-threaded)

RENDER_CHUNK = 32   # videos per rendering task: a [32, 30, 3, 30, 30] float32 work tensor (10 MB) per thread


_BUFFERS = threading.local()   # each rendering thread reuses its own work tensors (no page faults per chunk)


def _buffer(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    numel = int(np.prod(shape))
    flat = getattr(_BUFFERS, name, None)
    if flat is None or flat.numel() < numel:
        flat = torch.empty(numel)
        setattr(_BUFFERS, name, flat)
    return flat[:numel].view(shape)


def _render_chunk(positions: np.ndarray, size: int) -> torch.Tensor:
    """[N, T, balls, 2] float64 -> float32 [N, T, size, size] in [0, 1], in this thread's reused buffer."""
    n, t, balls, _ = positions.shape
    pos = torch.from_numpy(positions)
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size * BOX
    ax = ((centres - pos[..., 0:1]) ** 2 / RADIUS ** 2).float()    # [N, T, balls, size]: x along columns
    ay = ((centres - pos[..., 1:2]) ** 2 / RADIUS ** 2).float()    # y along rows
    q = torch.add(ay.unsqueeze(-1), ax.unsqueeze(-2), out=_buffer("q", (n, t, balls, size, size)))
    q.square_().square_().clamp_(max=MAX_EXPONENT).neg_().exp_()   # (d^2 / r^2)^4 -> exp(-...)
    frames = _buffer("frames", (n, t, size, size)).copy_(q[:, :, 0])
    for b in range(1, balls):
        frames += q[:, :, b]
    # exponents clamped at 87 leave ~1e-38 where the exact value underflows to 0: zero them, then clip at 1
    torch.nn.functional.threshold_(frames, balls * float(np.exp(-MAX_EXPONENT)) * 1.01, 0.0)
    return frames.clamp_(max=1.0)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _render_pool() -> ThreadPoolExecutor:
    """One worker thread per intra-op thread, each running torch single-threaded on its own chunks.

    Coarse-grained threads keep rendering fast when the cores are shared (per-op OpenMP barriers collapse then).
    The workers are started and set to one thread here, then the caller's own thread count is restored.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            threads = torch.get_num_threads()
            workers = max(1, min(threads, 32))
            pool = ThreadPoolExecutor(workers, thread_name_prefix="vidgan-render")
            barrier = threading.Barrier(workers)

            def single_threaded(_):
                torch.set_num_threads(1)
                barrier.wait()   # makes the pool start all its workers now

            list(pool.map(single_threaded, range(workers)))
            torch.set_num_threads(threads)
            _POOL = pool
        return _POOL


def _forget_pool() -> None:   # a forked child has none of its parent's threads: it starts its own pool
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def render(positions: np.ndarray, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Ball centres [N, T, balls, 2] -> frames [N, T, size, size]: float32 in [0, 1], or round(x * 255) if
    `out` is a uint8 tensor (written in place)."""
    n, t = positions.shape[:2]
    if out is None:
        out = torch.empty(n, t, size, size)

    def render_into(start: int) -> None:
        frames = _render_chunk(positions[start:start + RENDER_CHUNK], size)
        out[start:start + RENDER_CHUNK] = frames.mul_(255).round_() if out.dtype == torch.uint8 else frames

    for _ in _render_pool().map(render_into, range(0, n, RENDER_CHUNK)):
        pass
    return out


# ---------------------------------------------------------------- the data set

def _index_array(indices, n: int) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise TypeError(f"indices must be a 1-D sequence of integers, got shape {idx.shape} dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)][0]
        raise IndexError(f"video index {bad} is out of range for a data set of {n} videos")
    return idx


class BouncingBalls(torch.utils.data.Dataset):
    """n bouncing-balls videos, each float32 [frames, size, size] in [0, 1], a pure function of (seed, index)."""

    def __init__(self, n: int = 100_000, frames: int = 30, size: int = 30, balls: int = 3, seed: int = 0):
        for name, value, low in (("n", n, 1), ("frames", frames, 1), ("size", size, 1), ("balls", balls, 1),
                                 ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"BouncingBalls {name} must be an integer >= {low}, got {value!r}")
        if seed >= 2 ** 64:
            raise ValueError(f"BouncingBalls seed must be below 2**64, got {seed}")
        self.n, self.frames, self.size, self.balls, self.seed = int(n), int(frames), int(size), int(balls), int(seed)
        self._kept_positions = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"BouncingBalls index must be an integer, got {type(i).__name__}")
        if not -self.n <= i < self.n:
            raise IndexError(f"video index {i} is out of range for a data set of {self.n} videos")
        return self.videos([i % self.n])[0]

    def initial_state(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Centres and velocities at frame 0, float64 [len, balls, 2]."""
        return initial_state(self.seed, _index_array(indices, self.n), self.balls)

    def trajectories(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Centres and velocities at the start of every frame, float64 [len, frames, balls, 2]."""
        return simulate(*self.initial_state(indices), self.frames)

    def positions(self, indices) -> np.ndarray:
        """Centres at the start of every frame, float64 [len, frames, balls, 2]: trajectories' first half.

        Where all n videos' positions fit in KEPT_POSITIONS_BYTES (1.4 KB a video at 30 frames and 3 balls: up to
        ~46,000 videos), they are simulated once, on the first call, and kept: a video's trajectory depends only on
        (seed, index), so the rows are the same as simulated batch by batch (tested), and a phase-1 batch of the
        small preset then only renders (its 3,200 batches simulated 2.7 ms each; all 1,024 videos take 14 ms)."""
        idx = _index_array(indices, self.n)
        if self._kept_positions is None and self.n * self.frames * self.balls * 2 * 8 <= KEPT_POSITIONS_BYTES:
            self._kept_positions = self.trajectories(np.arange(self.n))[0]
        return self._kept_positions[idx] if self._kept_positions is not None else self.trajectories(idx)[0]

    def videos(self, indices) -> torch.Tensor:
        """float32 [len, frames, size, size] in [0, 1]."""
        return render(self.positions(indices), self.size)

    def frames_at(self, indices, times) -> torch.Tensor:
        """One frame of each video, frame times[k] of video indices[k]: float32 [len, size, size]."""
        positions = self.positions(indices)
        times = _index_array(times, self.frames)
        if len(times) != len(positions):
            raise ValueError(f"got {len(positions)} video indices but {len(times)} frame times")
        return render(positions[np.arange(len(times)), times][:, None], self.size)[:, 0]


# ---------------------------------------------------------------- files

def write_dataset(path: str | Path, n: int, seed: int = 0, frames: int = 30, size: int = 30, balls: int = 3,
                  chunk: int = 2000, progress: bool = True, overwrite: bool = False) -> Path:
    """Write n videos as a uint8 .npy array [n, frames, size, size] (round(x * 255)); load_videos maps it.

    Complete or absent (files.write_file: a temporary file in the same folder, then a link, or with overwrite a
    rename); never written over an existing file or through a symlink unless overwrite.
    """
    path = Path(path)
    if path.suffix != ".npy":
        raise DataError(f"data file {path} must end in .npy")
    if path.exists() and not overwrite:
        raise DataError(f"data file {path} already exists; pass overwrite=True to replace it")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    dataset = BouncingBalls(n=n, frames=frames, size=size, balls=balls, seed=seed)
    created = make_folders(path.parent)

    def writer(f):
        with tqdm(total=n, unit="video", desc=f"writing {path.name}", disable=not progress) as bar:
            header = {"descr": "|u1", "fortran_order": False, "shape": (n, frames, size, size)}
            np.lib.format.write_array_header_1_0(f, header)
            block = torch.empty(min(chunk, n), frames, size, size, dtype=torch.uint8)
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                positions = dataset.trajectories(np.arange(start, stop))[0]
                f.write(render(positions, size, out=block[:stop - start]).numpy().data)
                bar.update(stop - start)
    try:
        return write_file(path, writer, replace=overwrite, kept="nothing was written", error=DataError)
    except FileExistsError:
        raise DataError(f"data file {path} already exists; pass overwrite=True to replace it") from None
    finally:
        remove_empty(created if not path.exists() else [])      # a failed write leaves no folder it made


def load_videos(path: str | Path, frames: int = 30, size: int = 30) -> np.memmap:
    """Open a file written by write_dataset: read-only uint8 memmap [N, frames, size, size]."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist" if not path.exists() else
                        f"data file {path} is not a file; pass the .npy file written by `vidgan data`")
    target = path.with_suffix(".npy")
    write_one = (f"write one with `vidgan data --n N --out {target}`" if not target.exists() else   # never a hint
                 f"write one with `vidgan data --n N --out NEW.npy` (or `--out {target} --overwrite`, which "   # that fails
                 f"replaces this file)")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DataError(f"cannot read data file {path} ({os_reason(e)})") from None
    if magic != b"\x93NUMPY":
        raise DataError(f"data file {path} is not a readable .npy array (it has no NumPy header: a text or other "
                        f"file?); {write_one}") from None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:  # numpy raises ValueError, OSError, EOFError... (its advice, e.g. allow_pickle, is not ours)
        raise DataError(f"data file {path} is not a readable .npy array (truncated, damaged, or an array of "
                        f"Python objects); {write_one}") from None
    expected = f"[N, {frames}, {size}, {size}] uint8"
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 4 \
            or array.shape[1:] != (frames, size, size):
        raise DataError(f"data file {path} has shape {tuple(array.shape)} and dtype {array.dtype} "
                        f"but {expected} was expected; {write_one}")
    if array.shape[0] == 0:
        raise DataError(f"data file {path} holds no videos")
    return array


# ---------------------------------------------------------------- what training reads

def to_model_range(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] intensities -> [-1, 1] model values."""
    return x01 * 2 - 1


class VideoSource:
    """Videos for training, from a uint8 array [N, T, H, W] (load_videos) or generated by a BouncingBalls.

    Both give float32 [0, 1] tensors; a file and the generator with the same seed differ only by uint8 rounding.
    """

    def __init__(self, data: np.ndarray | BouncingBalls, limit: int | None = None):
        if not isinstance(data, (np.ndarray, BouncingBalls)):
            raise TypeError(f"VideoSource needs a uint8 array or a BouncingBalls, got {type(data).__name__}")
        if isinstance(data, np.ndarray) and (data.dtype != np.uint8 or data.ndim != 4):
            raise DataError(f"VideoSource array has shape {data.shape} and dtype {data.dtype} "
                            "but [N, T, H, W] uint8 was expected")
        self.data = data
        available = len(data)
        if limit is not None and not 1 <= limit <= available:
            raise DataError(f"asked for {limit} videos but the source holds {available}")
        self.n = available if limit is None else int(limit)
        shape = data.shape[1:] if isinstance(data, np.ndarray) else (data.frames, data.size, data.size)
        self.frames, self.size = shape[0], shape[1]

    @classmethod
    def open(cls, path: str | Path | None, n: int, seed: int = 0, frames: int = 30, size: int = 30,
             balls: int = 3) -> "VideoSource":
        """The first n videos of the file at `path`, or n generated on the fly when path is None."""
        if path is None:
            return cls(BouncingBalls(n=n, frames=frames, size=size, balls=balls, seed=seed))
        array = load_videos(path, frames, size)
        if not 1 <= n <= len(array):
            raise DataError(f"data file {path} holds {len(array)} videos but {n} were asked for")
        return cls(array, limit=n)

    def __len__(self) -> int:
        return self.n

    def videos(self, indices) -> torch.Tensor:
        """float32 [len, frames, size, size] in [0, 1]."""
        idx = _index_array(indices, self.n)
        if isinstance(self.data, BouncingBalls):
            return self.data.videos(idx)
        return torch.from_numpy(self.data[idx]).float().div_(255)

    def frames_at(self, indices, times) -> torch.Tensor:
        """Frame times[k] of video indices[k]: float32 [len, size, size] in [0, 1]."""
        idx = _index_array(indices, self.n)
        if isinstance(self.data, BouncingBalls):
            return self.data.frames_at(idx, times)
        times = _index_array(times, self.frames)
        if len(times) != len(idx):
            raise ValueError(f"got {len(idx)} video indices but {len(times)} frame times")
        return torch.from_numpy(self.data[idx, times]).float().div_(255)
