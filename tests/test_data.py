"""The bouncing-balls data set: physics against the classic loop code, rendering against classic matricize,
determinism from (seed, index), the uint8 file round trip, atomic writes and the DataError cases."""
import multiprocessing

import numpy as np
import pytest
import torch

from vidgan_fast import data
from vidgan_fast.data import (BOX, RADIUS, BouncingBalls, DataError, VideoSource, load_videos, render,
                              simulate, to_model_range, write_dataset)


# ---------------------------------------------------------------- classic reference code (one video at a time)

def classic_bounce(x0, v0, frames, r=1.2, size=10.0, eps=0.5):
    """Sutskever's bounce_n main loop, one video, equal masses, from given initial centres and velocities.
    Returns positions [frames, n, 2] and the number of ball-ball collisions."""
    x, v = x0.copy(), v0.copy()
    n = len(x)
    positions = np.zeros((frames, n, 2))
    collisions = 0
    for t in range(frames):
        for i in range(n):
            positions[t, i] = x[i]
        for _ in range(int(1 / eps)):
            for i in range(n):
                x[i] += eps * v[i]
            for i in range(n):
                for z in range(2):
                    if x[i][z] - r < 0:
                        v[i][z] = abs(v[i][z])
                    if x[i][z] + r > size:
                        v[i][z] = -abs(v[i][z])
            for i in range(n):
                for j in range(i):
                    if np.sqrt(((x[i] - x[j]) ** 2).sum()) < r + r:
                        collisions += 1
                        w = x[i] - x[j]
                        w = w / np.sqrt((w ** 2).sum())
                        v_i, v_j = np.dot(w, v[i]), np.dot(w, v[j])
                        m1 = m2 = 1.0
                        new_v_j = (2 * m1 * v_i + v_j * (m2 - m1)) / (m1 + m2)
                        new_v_i = new_v_j + (v_j - v_i)
                        v[i] += w * (new_v_i - v_i)
                        v[j] += w * (new_v_j - v_j)
    return positions, collisions


def classic_matricize(positions, res, r=1.2, size=10.0):
    """Classic matricize in float64: meshgrid puts component 0 (x) along columns, component 1 (y) along rows."""
    grid = (0.5 / res + np.arange(0, 1, 1.0 / res)) * size
    I, J = np.meshgrid(grid, grid)
    frames = np.zeros((len(positions), res, res))
    for t in range(len(positions)):
        for i in range(positions.shape[1]):
            frames[t] += np.exp(-(((I - positions[t, i, 0]) ** 2 + (J - positions[t, i, 1]) ** 2) / r ** 2) ** 4)
        frames[t][frames[t] > 1] = 1
    return frames


def count_blobs(mask):
    """Connected components (4-neighbour) of a 2-D bool array."""
    seen = np.zeros_like(mask)
    blobs = 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        blobs += 1
        stack = [start]
        seen[start] = True
        while stack:
            r, c = stack.pop()
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
    return blobs


@pytest.fixture(scope="module")
def ds():
    return BouncingBalls(n=1000, seed=0)


@pytest.fixture(scope="module")
def trajectories(ds):
    return ds.trajectories(np.arange(1000))


# ---------------------------------------------------------------- physics

def test_simulation_matches_classic_loop(ds):
    indices = np.arange(40)
    x0, v0 = ds.initial_state(indices)
    positions, _ = simulate(x0, v0, 30)
    total_collisions = 0
    for k in range(len(indices)):
        expected, collisions = classic_bounce(x0[k], v0[k], 30)
        total_collisions += collisions
        np.testing.assert_allclose(positions[k], expected, rtol=0, atol=1e-9)
    assert total_collisions > 5, "the compared videos should include ball-ball collisions"


def test_initial_placement_and_speed(ds):
    x0, v0 = ds.initial_state(np.arange(1000))
    assert x0.shape == v0.shape == (1000, 3, 2)
    assert (x0 >= 2).all() and (x0 < 10).all()
    assert (x0 - RADIUS >= 0).all() and (x0 + RADIUS <= BOX).all()
    for i in range(3):
        for j in range(i):
            assert (np.linalg.norm(x0[:, i] - x0[:, j], axis=1) >= 2 * RADIUS).all()
    np.testing.assert_allclose(np.sqrt((v0 ** 2).sum(axis=(1, 2))), 0.5, rtol=1e-12)
    assert abs(v0.mean()) < 0.02 and 0.1 < v0.std() < 0.3   # Gaussian directions, norm 0.5 over 6 numbers


def test_balls_stay_in_box(trajectories):
    positions, velocities = trajectories
    # each ball moves at most 0.5 * |v| <= 0.25 per sub-step before the wall check turns it back
    assert (positions - RADIUS >= -0.5).all() and (positions + RADIUS <= BOX + 0.5).all()
    assert (positions > 0).all() and (positions < BOX).all()


def test_kinetic_energy_conserved(trajectories):
    _, velocities = trajectories
    np.testing.assert_allclose((velocities ** 2).sum(axis=(2, 3)), 0.25, rtol=1e-12)


def test_speeds_change_only_in_collisions(trajectories):
    positions, velocities = trajectories
    half_step = positions[:, :-1] + 0.5 * velocities[:, :-1]      # centres after the first sub-step
    touching = np.zeros(positions[:, :-1].shape[:2], bool)
    for centres in (half_step, positions[:, 1:]):
        for i in range(3):
            for j in range(i):
                touching |= np.linalg.norm(centres[..., i, :] - centres[..., j, :], axis=-1) < 2 * RADIUS
    speed = np.linalg.norm(velocities, axis=-1)
    change = np.abs(speed[:, 1:] - speed[:, :-1]).max(axis=-1)
    assert touching.sum() > 100 and (~touching).sum() > 10_000
    assert (change[~touching] < 1e-12).all()
    assert (change[touching] > 1e-3).mean() > 0.5     # collisions do exchange momentum


# ---------------------------------------------------------------- rendering

def test_render_matches_classic_matricize(trajectories):
    positions = trajectories[0][:6]
    frames = render(positions, 30)
    assert frames.dtype == torch.float32 and frames.shape == (6, 30, 30, 30)
    for k in range(6):
        np.testing.assert_allclose(frames[k].numpy(), classic_matricize(positions[k], 30), rtol=0, atol=2e-6)


def test_render_axes_and_other_sizes():
    positions = np.array([[[[2.1, 7.3]]]])     # one ball at x=2.1, y=7.3
    for size in (30, 17, 64):
        frame = render(positions, size)[0, 0].numpy()
        row, col = np.unravel_index(frame.argmax(), frame.shape)
        assert abs((col + 0.5) / size * BOX - 2.1) <= 0.5 * BOX / size
        assert abs((row + 0.5) / size * BOX - 7.3) <= 0.5 * BOX / size
        np.testing.assert_allclose(frame, classic_matricize(positions[0], size)[0], rtol=0, atol=2e-6)
    assert (render(positions, 30) == 0).sum() > 600    # far from the ball the frame is exactly 0


def test_three_blobs_when_balls_apart(trajectories):
    positions = trajectories[0][:50]
    frames = render(positions, 30).numpy()
    checked = 0
    for k in range(50):
        for t in range(30):
            apart = all(np.linalg.norm(positions[k, t, i] - positions[k, t, j]) > 2 * RADIUS + 2 * BOX / 30
                        for i in range(3) for j in range(i))
            if apart:
                assert count_blobs(frames[k, t] > 0.5) == 3, (k, t)
                checked += 1
    assert checked > 500


def test_values_shape_and_range(ds):
    videos = ds.videos(np.arange(20))
    assert videos.dtype == torch.float32 and videos.shape == (20, 30, 30, 30)
    assert videos.min() >= 0 and videos.max() <= 1 and videos.max() > 0.9
    assert (videos.flatten(2).max(-1).values > 0.9).all()        # every frame shows a ball


# ---------------------------------------------------------------- determinism

def test_same_seed_and_index_same_video(ds):
    batch = ds.videos([7, 3, 500, 999])
    assert torch.equal(ds[3], batch[1])
    assert torch.equal(ds.videos([999])[0], batch[3])
    assert torch.equal(BouncingBalls(n=100_000, seed=0).videos([500, 7]), batch[[2, 0]])
    assert torch.equal(ds[-1], batch[3])
    many = ds.videos(np.arange(100))                             # several render chunks, in the thread pool
    assert torch.equal(many[[7, 3]], batch[:2])
    assert torch.equal(many, ds.videos(np.arange(100)))


def _videos_in_child(queue):
    queue.put(BouncingBalls(n=1000, seed=0).videos(np.arange(70)).numpy())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_forked_child_generates_the_same_videos(ds):
    expected = ds.videos(np.arange(70))              # the parent's render threads exist before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_videos_in_child, args=(queue,), daemon=True)
    child.start()
    try:
        got = queue.get(timeout=60)       # a child waiting on its parent's (absent) render threads never answers
        child.join(timeout=60)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert torch.equal(torch.from_numpy(got), expected)


def test_different_seeds_and_indices_differ(ds):
    other = BouncingBalls(n=1000, seed=1)
    assert not torch.equal(ds[0], other[0])
    assert not torch.equal(ds[0], ds[1])


def test_shorter_videos_are_prefixes(ds):
    short = BouncingBalls(n=1000, frames=10, seed=0)
    assert torch.equal(short.videos([4, 8]), ds.videos([4, 8])[:, :10])


def test_frames_at_matches_videos(ds):
    frames = ds.frames_at([5, 9, 5], [0, 29, 13])
    videos = ds.videos([5, 9])
    assert torch.equal(frames, torch.stack([videos[0, 0], videos[1, 29], videos[0, 13]]))


def test_kept_positions_are_the_per_batch_simulation(monkeypatch):
    kept = BouncingBalls(n=300, seed=3)                                   # 300 videos: kept after the first call
    idx = np.random.default_rng(0).permutation(300)[:17]
    frames, videos = kept.frames_at(idx, np.arange(17)), kept.videos(idx[:5])
    assert kept._kept_positions is not None and kept._kept_positions.shape == (300, 30, 3, 2)
    monkeypatch.setattr(data, "KEPT_POSITIONS_BYTES", 300 * 30 * 3 * 2 * 8 - 1)   # one byte short: none
    simulated = BouncingBalls(n=300, seed=3)
    assert torch.equal(simulated.frames_at(idx, np.arange(17)), frames)
    assert torch.equal(simulated.videos(idx[:5]), videos) and simulated._kept_positions is None


def test_bad_arguments(ds):
    with pytest.raises(IndexError, match="out of range"):
        ds[1000]
    with pytest.raises(IndexError, match="out of range"):
        ds.videos([0, -1])
    with pytest.raises(TypeError):
        ds.videos([0.5])
    with pytest.raises(ValueError, match="n must be"):
        BouncingBalls(n=0)
    with pytest.raises(ValueError, match="seed must be"):
        BouncingBalls(seed=-1)
    with pytest.raises(ValueError, match="could not place"):
        BouncingBalls(balls=20).videos([0])


# ---------------------------------------------------------------- files and sources

def test_write_and_load_round_trip(tmp_path, ds):
    path = write_dataset(tmp_path / "balls.npy", n=40, seed=0, chunk=16, progress=False)
    array = load_videos(path)
    assert isinstance(array, np.memmap) and array.dtype == np.uint8 and array.shape == (40, 30, 30, 30)
    assert not array.flags.writeable
    expected = torch.round(ds.videos(np.arange(40)) * 255).to(torch.uint8)
    assert torch.equal(torch.from_numpy(np.array(array)), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["balls.npy"]

    from_file = VideoSource.open(path, n=30)
    generated = VideoSource.open(None, n=30, seed=0)
    assert len(from_file) == len(generated) == 30
    idx = [29, 0, 11]
    assert (from_file.videos(idx) - generated.videos(idx)).abs().max() <= 0.5 / 255 + 1e-6
    assert (from_file.frames_at(idx, [1, 2, 3]) - generated.frames_at(idx, [1, 2, 3])).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(IndexError):
        from_file.videos([30])
    with pytest.raises(DataError, match="holds 40"):
        VideoSource.open(path, n=41)


def test_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "balls.npy"
    write_dataset(path, n=2, progress=False)
    with pytest.raises(DataError, match="already exists"):
        write_dataset(path, n=3, progress=False)
    write_dataset(path, n=3, progress=False, overwrite=True)
    assert load_videos(path).shape[0] == 3
    with pytest.raises(DataError, match="must end in .npy"):
        write_dataset(tmp_path / "balls.bin", n=2, progress=False)


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return render(*args, **kwargs)

    monkeypatch.setattr(data, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "balls.npy", n=30, chunk=10, progress=False)
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_videos(tmp_path / "missing.npy")
    assert "missing.npy" in _one_line(e)

    text = tmp_path / "text.npy"
    text.write_text("not an array\n")
    with pytest.raises(DataError, match="not a readable .npy array") as e:
        load_videos(text)
    assert "text.npy" in _one_line(e)

    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.zeros((4, 30, 30, 30), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated.npy") as e:
        load_videos(truncated)
    _one_line(e)

    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled.npy") as e:
        load_videos(pickled)
    _one_line(e)

    cases = {"float.npy": np.zeros((2, 30, 30, 30), np.float32), "three_d.npy": np.zeros((10, 30, 30), np.uint8),
             "small.npy": np.zeros((2, 30, 16, 16), np.uint8)}
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(DataError, match=r"but \[N, 30, 30, 30\] uint8 was expected") as e:
            load_videos(tmp_path / name)
        assert name in _one_line(e) and str(array.shape) in _one_line(e)

    np.save(tmp_path / "empty.npy", np.zeros((0, 30, 30, 30), np.uint8))
    with pytest.raises(DataError, match="holds no videos"):
        load_videos(tmp_path / "empty.npy")
    assert load_videos(tmp_path / "small.npy", size=16).shape == (2, 30, 16, 16)


def test_to_model_range():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(to_model_range(x), torch.tensor([-1.0, -0.5, 1.0]))
