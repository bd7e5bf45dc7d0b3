"""Which G_F samples and goes to phase 2 (selection.py): the weight average (--frames-ema), best-snapshot
selection (--frames-select-every), their checkpoint state and exact --resume, and older checkpoints."""
import math

import pytest
import torch
import torch.nn as nn

from vidgan_fast import train
from vidgan_fast.checkpoint import load_checkpoint, sampling_frame_generator, save_checkpoint
from vidgan_fast.config import preset
from vidgan_fast.errors import ConfigError
from vidgan_fast.models import FrameGenerator
from vidgan_fast.sample import generate
from vidgan_fast.selection import SnapshotSelection, WeightAverage, three_blob_fraction

from test_checkpoint import assert_identical, comparable, scramble_process_state  # tests/test_checkpoint.py

pytestmark = pytest.mark.usefixtures("one_thread")    # tests/conftest.py

SMALL = dict(n_videos=8, frames_batch=4, video_batch=2, frames_epochs=3, video_epochs=1, log_every=1,
             checkpoint_every=100)                      # 2 steps per epoch: 6 phase-1 steps
CHOOSING = dict(frames_ema=0.9, frames_select_every=2, frames_select_n=16)


def small_cfg(**kw):
    return preset("tiny", **{**SMALL, **kw})


def run(phase, out, cfg, frames=None, resume=False, overrides=None):
    return train.train_phase(train.open_phase(phase, out, cfg, resume, overrides, frames=frames), out,
                             progress=False)


def discs(centres, size=30, radius=3.5):
    """A frame in [-1, 1] with a disc of `radius` px at each (row, col) centre."""
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    on = torch.zeros(size, size, dtype=torch.bool)
    for r, c in centres:
        on |= (y - r) ** 2 + (x - c) ** 2 < radius ** 2
    return on.float() * 2 - 1


THREE, ONE = discs([(6, 6), (6, 22), (22, 14)]), discs([(15, 15)])


class Threshold(nn.Module):
    """A stand-in G_F: code z draws three balls where z[0] < threshold, else one ball."""
    z_dim = 100

    def __init__(self, threshold):
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    def forward(self, z):
        pick = (z[:, :1] < self.threshold).float()[:, :, None, None]
        return pick * THREE + (1 - pick) * ONE


def test_weight_average_is_the_exponential_moving_average():
    torch.manual_seed(0)
    g = FrameGenerator(widths=(8, 8, 4, 8))
    average = WeightAverage(g, decay=0.75)
    assert not average.model.training and not any(p.requires_grad for p in average.model.parameters())
    expected = {k: v.clone() for k, v in g.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in g.parameters():
                p.add_(torch.randn_like(p))
        g.train()(torch.randn(16, 100))                     # moves the batch-norm statistics and counters
        average.update(g)
        for k, w in g.state_dict().items():
            expected[k] = 0.75 * expected[k] + 0.25 * w if w.is_floating_point() else w.clone()
    got = average.model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-7, msg=k)
    assert int(got["fc_bn.num_batches_tracked"]) == 3       # integer counters are copied, not averaged
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(g, decay=1.0)


def test_three_blob_fraction_counts_frames_with_exactly_three_blobs():
    frames = torch.stack([THREE, ONE, THREE, discs([(6, 6), (6, 22), (22, 6), (22, 22)])]).unsqueeze(1)
    assert three_blob_fraction(frames) == 0.5


def test_selection_keeps_the_best_snapshot():
    model = Threshold(-1.0)
    selection = SnapshotSelection(every=100, n=512)
    normal_cdf = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))            # noqa: E731
    for step, threshold in ((100, -1.0), (200, 1.0), (300, 0.0)):
        score = selection.consider(_set(model, threshold), step)
        assert abs(score - normal_cdf(threshold)) < 0.06, (threshold, score)
    assert selection.best_step == 200 and float(selection.best_state["threshold"]) == 1.0    # a copy, kept
    assert [h[0] for h in selection.history] == [100, 200, 300] and model.training           # mode restored
    selection.consider(_set(model, 1.0), 400)
    assert selection.best_step == 400                                          # a tie goes to the later one
    again = SnapshotSelection(every=100, n=512)
    again.load_state_dict(selection.state_dict())
    assert again.state_dict() == selection.state_dict()
    assert selection.due(200, 1000) and not selection.due(250, 1000) and selection.due(250, 250)


def _set(model, threshold):
    with torch.no_grad():
        model.threshold.fill_(threshold)
    return model


def test_options_are_validated_and_off_at_the_paper_preset():
    paper = preset("paper")
    assert paper.frames_ema == 0 and paper.frames_select_every == 0
    for name, bad in (("frames_ema", 1.0), ("frames_ema", -0.1), ("frames_ema", float("nan")),
                      ("frames_select_every", -1), ("frames_select_every", 2.5), ("frames_select_n", 1)):
        with pytest.raises(ConfigError, match=name.replace("_", "-")):
            preset("small", **{name: bad})


def test_resume_continues_the_average_and_the_selection_exactly(tmp_path):
    """The split run stops at step 3 (between two scored snapshots) and resumes to 6: the same checkpoint,
    average and selection included, as the straight run."""
    cfg = small_cfg(**CHOOSING)
    run("frames", tmp_path / "straight", cfg)
    run("frames", tmp_path / "split", cfg.replace(max_steps=3))
    scramble_process_state()
    run("frames", tmp_path / "split", cfg, resume=True, overrides={"max_steps": 6})
    straight = load_checkpoint(tmp_path / "straight" / "frames.ckpt", "frames")
    split = load_checkpoint(tmp_path / "split" / "frames.ckpt", "frames")
    assert [h[0] for h in straight["selection"]["history"]] == [2, 4, 6]
    assert straight["frame_average"] is not None and straight["selection"]["best_state"] is not None
    assert_identical(comparable(straight), comparable(split))


def test_phase2_and_samples_use_the_chosen_frame_generator_and_old_checkpoints_load(tmp_path):
    cfg = small_cfg(**CHOOSING)
    run("frames", tmp_path, cfg)
    ckpt = load_checkpoint(tmp_path / "frames.ckpt")
    best = ckpt["selection"]["best_state"]
    assert sampling_frame_generator(ckpt) is best
    assert not all(torch.equal(best[k], ckpt["generator"][k]) for k in best)      # not the last weights
    state = run("video", tmp_path, cfg, frames=tmp_path / "frames.ckpt")
    assert all(torch.equal(best[k], v) for k, v in state.frame_generator.state_dict().items())
    # average only: the average samples; neither (a checkpoint written before these options): the last weights
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    for drop, key in ((("selection",), "frame_average"), (("selection", "frame_average"), "generator")):
        old = {k: v for k, v in ckpt.items() if k not in drop}
        save_checkpoint(tmp_path / "old" / "frames.ckpt", {k: v for k, v in old.items()
                                                           if k not in ("format", "version")})
        reference = FrameGenerator(widths=cfg.gf_widths)
        reference.load_state_dict(ckpt[key])
        with torch.no_grad():
            expected = reference.eval()(z)
        _, frames = generate(tmp_path / "old" / "frames.ckpt", n=4, seed=0)
        torch.testing.assert_close(frames, expected)
    # an old checkpoint resumed with the options on: the average starts at its weights, selection starts empty
    state = run("frames", tmp_path / "old", cfg, resume=True, overrides={"max_steps": 6})
    assert state.step == 6 and state.selection.history == []
    average = state.frame_average.model.state_dict()
    assert all(torch.equal(average[k], v) for k, v in state.generator.state_dict().items())
