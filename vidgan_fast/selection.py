"""Which G_F a phase-1 run samples with and hands to phase 2: the trained weights, their exponential moving
average (`--frames-ema`), or the best snapshot by a frame-quality score (`--frames-select-every`).

Both are off at the `paper` preset (the paper's method: phase 2 renders with the last G_F of phase 1). The `small`
preset averages (decay 0.99) and does not select: at its 1,600 steps the small G_F's 3-blob fraction is still
rising, and selection on a few hundred frames mostly picked an earlier, noisier snapshot (config.py and
benchmarks/RESULTS.md, issue 27, say what was measured).

    average = WeightAverage(g_f, decay=0.99)      # phase 1, after every step: average.update(g_f)
    chosen = SnapshotSelection(every=100, n=1024)  # every 100 steps: chosen.consider(average.model, step)
    checkpoint.sampling_frame_generator(ckpt)     # what sampling and phase 2 use: best > average > last weights

Both states are plain dicts of tensors and numbers (checkpoint-safe under `weights_only=True`), so `--resume`
continues them exactly; checkpoints written without them still load (the run then samples with the last weights).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .metrics import find_blobs

# The codes a snapshot is scored on: fixed, and drawn from their own generator (no draw from the run's RNGs, so
# scoring does not change training), from a seed no sampler uses (`vidgan sample` / `eval` use the run's seed,
# benchmarks/frame_quality seed 0).
SELECTION_SEED = 1_000_003


class WeightAverage:
    """An exponential moving average of a module's weights: after each update, every parameter and floating-point
    buffer (batch-norm running statistics) is a <- decay * a + (1 - decay) * w; integer buffers (batch-norm's
    num_batches_tracked) are copied. `model` is the averaged copy, in eval mode, with no gradients."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        weight = 1.0 - self.decay
        for a, w in zip(self.model.parameters(), module.parameters()):
            a.lerp_(w.detach(), weight)
        for a, w in zip(self.model.buffers(), module.buffers()):
            if a.is_floating_point():
                a.lerp_(w, weight)
            else:
                a.copy_(w)

    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def three_blob_fraction(frames: torch.Tensor) -> float:
    """The share of frames [N, 1, H, W] (or [N, H, W]) in [-1, 1] with exactly 3 blobs (vidgan_fast.metrics:
    8-connected components of the pixels > 0), the per-frame measure of `vidgan eval`."""
    frames = frames.reshape(1, frames.shape[0], *frames.shape[-2:])             # one "video" of N frames
    return float((find_blobs(frames).counts == 3).float().mean())


class SnapshotSelection:
    """Keeps the best snapshot of G_F by its 3-blob fraction on `n` fixed codes (model selection on held-out
    samples, as FID-based selection does). consider() is called every `every` steps; a snapshot that scores
    at least as well as the best so far replaces it (ties go to the later, more trained one)."""

    def __init__(self, every: int, n: int, seed: int = SELECTION_SEED):
        self.every, self.n, self.seed = int(every), int(n), int(seed)
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_state: dict | None = None
        self.history: list[list] = []              # [[step, score], ...] of every snapshot scored

    def due(self, step: int, last: int) -> bool:
        """Whether the snapshot after `step` is scored: every `every` steps and at the phase's last step (`last`:
        the full schedule's, not a --steps cut, so that a run resumed past a cut scores the same steps)."""
        return step % self.every == 0 or step == last

    def codes(self, z_dim: int, device) -> torch.Tensor:
        return torch.randn(self.n, z_dim, generator=torch.Generator().manual_seed(self.seed)).to(device)

    @torch.no_grad()
    def score(self, model: nn.Module) -> float:
        """The 3-blob fraction of `model` (eval mode: batch norm on its running statistics, as when sampling)
        on the fixed codes; the module's mode is restored after."""
        was_training = model.training
        try:
            frames = model.eval()(self.codes(model.z_dim, next(model.parameters()).device))
        finally:
            model.train(was_training)
        return three_blob_fraction(frames.float().cpu())

    def consider(self, model: nn.Module, step: int) -> float:
        """Score `model` after `step`; keep a copy of its weights (on the CPU) if it is the best so far."""
        score = self.score(model)
        self.history.append([int(step), score])
        if self.best_score is None or score >= self.best_score:
            self.best_score, self.best_step = score, int(step)
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return score

    def state_dict(self) -> dict:
        return {"every": self.every, "n": self.n, "seed": self.seed, "best_score": self.best_score,
                "best_step": self.best_step, "best_state": self.best_state,
                "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.best_state = state["best_state"]
        self.history = [list(h) for h in state["history"]]
