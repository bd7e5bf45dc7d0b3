"""Per-layer tile choice (kernels/autotune.py): the cache logic with an injected clock (no GPU here), and every
candidate tile of the banks' convolutions (kernels/tiles.py) against fp64 under the interpreter at widths that
span several tiles."""
import json
import warnings
from types import SimpleNamespace

import pytest
import torch

from vidgan_fast.kernels import autotune
from vidgan_fast.kernels.autotune import Tuner, choose, forcing
from vidgan_fast.kernels.tiles import FAMILIES, Tile, conv_tiles

CANDS = [Tile(64, 64, 32, 4), Tile(128, 64, 32, 8), Tile(32, 64, 64, 4)]
SPEED = {CANDS[0]: 3.0, CANDS[1]: 1.0, CANDS[2]: 2.0}     # ms per candidate: the second wins


class Clock:
    """A fake timer: launches the candidate once (as do_bench would), returns its scripted time."""

    def __init__(self):
        self.timed = []

    def __call__(self, fn):
        fn()
        return SPEED[self.timed[-1]]


def tuner(path, clock, device="Fake GPU A", capturing=False):
    def launch_recorder(c):
        clock.timed.append(c)
    t = Tuner(path, timer=clock, device_key=lambda _device: device, capturing=lambda: capturing)
    return t, launch_recorder


def test_the_fastest_candidate_wins_is_saved_and_reloaded(tmp_path):
    path, clock = tmp_path / "autotune.json", Clock()
    t, launch = tuner(path, clock)
    assert t.pick("forward", (8, 16), "tf32", CANDS, launch) == CANDS[1]
    assert clock.timed == CANDS                                       # each candidate timed once
    assert t.pick("forward", (8, 16), "tf32", CANDS, launch) == CANDS[1] and len(clock.timed) == 3   # in memory
    saved = json.loads(path.read_text())
    assert saved == {"Fake GPU A": {"forward tf32 (8, 16)": [128, 64, 32, 8, 3]}}     # a Tile's fields
    again, launch = tuner(path, clock)                                # a new process: read from the file
    assert again.pick("forward", (8, 16), "tf32", CANDS, launch) == CANDS[1] and len(clock.timed) == 3
    assert again.pick("forward", (8, 32), "tf32", CANDS, launch) == CANDS[1] and len(clock.timed) == 6  # new shape


def test_the_cache_is_per_device(tmp_path):
    path, clock = tmp_path / "autotune.json", Clock()
    tuner(path, clock, "Fake GPU A")[0].pick("dgrad", (1,), "fp32", CANDS, tuner(path, clock)[1])
    other, launch = tuner(path, clock, "Fake GPU B")
    assert other.pick("dgrad", (1,), "fp32", CANDS, launch) == CANDS[1] and len(clock.timed) == 6   # re-timed
    assert set(json.loads(path.read_text())) == {"Fake GPU A", "Fake GPU B"}


def test_a_corrupt_cache_warns_once_and_is_ignored(tmp_path):
    path, clock = tmp_path / "autotune.json", Clock()
    path.write_text("{ not json")
    t, launch = tuner(path, clock)
    with pytest.warns(RuntimeWarning, match="ignoring unreadable tile cache") as caught:
        assert t.pick("wgrad", (2,), "fp32", CANDS, launch) == CANDS[1]
        t.pick("wgrad", (3,), "fp32", CANDS, launch)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert json.loads(path.read_text())["Fake GPU A"]["wgrad fp32 (2,)"] == [128, 64, 32, 8, 3]    # rewritten
    path.write_text('{"Fake GPU A": [1, 2]}')                         # valid JSON, wrong layout
    with pytest.warns(RuntimeWarning, match="ignoring"):
        assert tuner(path, clock)[0].pick("wgrad", (2,), "fp32", CANDS, launch) == CANDS[1]


def test_no_timing_during_capture(tmp_path):
    """While the stream is capturing: the cached winner if there is one, else the fixed tile; never a timing."""
    path, clock = tmp_path / "autotune.json", Clock()
    t, launch = tuner(path, clock, capturing=True)
    assert t.pick("forward", (4,), "tf32", CANDS, launch) == CANDS[0]
    assert clock.timed == [] and not path.exists()
    tuner(path, clock)[0].pick("forward", (4,), "tf32", CANDS, launch)      # tuned outside capture
    t, launch = tuner(path, clock, capturing=True)
    assert t.pick("forward", (4,), "tf32", CANDS, launch) == CANDS[1] and len(clock.timed) == 3


def test_choose_times_only_on_cuda_with_autotune_on(tmp_path, monkeypatch):
    clock = Clock()
    t, launch = tuner(tmp_path / "autotune.json", clock)
    monkeypatch.setattr(autotune, "_tuner", t)
    cpu, cuda = torch.device("cpu"), SimpleNamespace(type="cuda")
    assert choose("forward", (1,), "fp32", CANDS, launch, cpu) == CANDS[0]          # CPU / interpreter
    assert choose("forward", (1,), "fp32", CANDS, launch, torch.device("meta")) == CANDS[0]
    monkeypatch.setattr(autotune, "interpreting", lambda: False)                   # as if compiled
    assert choose("forward", (1,), "fp32", CANDS[:1], launch, cuda) == CANDS[0]     # one candidate: nothing to time
    monkeypatch.setenv(autotune.SWITCH, "0")
    assert choose("forward", (1,), "fp32", CANDS, launch, cuda) == CANDS[0]
    assert clock.timed == []
    monkeypatch.setenv(autotune.SWITCH, "1")
    assert choose("forward", (1,), "fp32", CANDS, launch, cuda) == CANDS[1] and clock.timed == CANDS
    with forcing("forward", CANDS[2]):
        assert choose("forward", (1,), "fp32", CANDS, launch, cpu) == CANDS[2]
    assert choose("forward", (1,), "fp32", CANDS, launch, cpu) == CANDS[0]


def test_a_failing_candidate_is_not_chosen(tmp_path):
    def timer(fn):
        fn()
        return 1.0

    def launch(c):
        if c == CANDS[0]:
            raise RuntimeError("out of resources")
    t = Tuner(tmp_path / "a.json", timer=timer, device_key=lambda _d: "X", capturing=lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert t.pick("forward", (1,), "fp32", CANDS, launch) == CANDS[1]
    assert any("out of resources" in str(w.message) for w in caught)


# ---- every candidate of the banks' convolutions, forced, at multi-tile widths ----

@pytest.mark.parametrize("name,candidate", sorted({(n, c) for fam in ("hopper", "ampere")
                                                   for n in ("forward", "dgrad", "wgrad")
                                                   for c in conv_tiles(n, fam, "tf32")[1:]}, key=str))
def test_every_conv_candidate_matches_fp64(name, candidate):
    """Widths 80 -> 130 (stride 2): several channel blocks each way, partial ones, the candidate forced for its
    pass only (the fixed first candidates and the bf16 block depths: tests/test_conv.py), under the interpreter."""
    from test_conv import test_conv_passes_match_fp64
    assert all(conv_tiles(name, fam, "tf32")[0].warps in (4, 8) for fam in FAMILIES[:2])
    with forcing(name, candidate):
        test_conv_passes_match_fp64("D_F conv3 wide", "interpreter")


@pytest.mark.parametrize("candidate", sorted({c for fam in ("hopper", "ampere")
                                              for c in conv_tiles("wgrad", fam, "tf32")[1:]}, key=str))
def test_every_weight_step_candidate_matches_fp64(candidate, monkeypatch):
    """The weight gradient that applies RMSprop in its epilogue at each candidate tile of the weight gradient: the
    step against fp64 and bitwise equal to the separate step (tests/test_conv.py)."""
    from test_conv import test_weight_gradient_applied_as_an_rmsprop_step
    with forcing("wgrad", candidate):
        test_weight_gradient_applied_as_an_rmsprop_step("D_F conv3 wide", False, "hopper", "tf32", 1, monkeypatch)
