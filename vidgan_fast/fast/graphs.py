"""CUDA graphs for the training steps: the discriminator step and the generator step (forward, backward,
optimizer) are each captured once and replayed.

Static buffers: the real batch (copied in before each replay) and the noise, drawn inside the graph
(`normal_` on a static tensor, so every replay draws fresh noise from the graph-safe Philox generator).
Optimizers must be built with capturable=True (engine.to_fast does). Warm-up runs on a side stream before
capture (Triton compiles, cuBLAS/cuDNN pick algorithms, optimizer state is allocated); the warm-up steps change
weights, so every model, optimizer and RNG state is restored before capture and the run continues exactly
from where it was.
"""
from __future__ import annotations

import copy

import torch

from vidgan_fast.profiling import nvtx_range

WARMUP_STEPS = 3


def _snapshot(state) -> dict:
    parts = {"generator": state.generator, "discriminators": state.discriminators, "g_opt": state.g_opt,
             "d_opt": state.d_opt, "frame_generator": state.frame_generator, "f_opt": state.f_opt}
    return {name: copy.deepcopy(obj.state_dict()) for name, obj in parts.items() if obj is not None}


def _restore(state, snap: dict) -> None:
    for name, sd in snap.items():
        getattr(state, name).load_state_dict(sd)


class GraphedSteps:
    """`step(real) -> (d_loss, g_loss)` replaying the captured D step then the captured G step."""

    def __init__(self, state, real_shape: tuple[int, ...], batch: int, warmup: int = WARMUP_STEPS):
        from vidgan_fast.train import d_step, g_step
        if state.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.state, dev = state, state.device
        self.real = torch.zeros(real_shape, device=dev)
        self.z_d = torch.zeros(batch, state.generator.z_dim, device=dev)
        self.z_g = torch.zeros(batch, state.generator.z_dim, device=dev)

        def d_body():
            self.z_d.normal_()
            return d_step(state, self.real, self.z_d)

        def g_body():
            self.z_g.normal_()
            return g_step(state, self.z_g)

        snap, rng = _snapshot(state), torch.cuda.get_rng_state(dev)

        def rewind():
            torch.cuda.synchronize(dev)
            _restore(state, snap)
            torch.cuda.set_rng_state(rng, dev)

        try:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side), nvtx_range("graph warm-up"):
                for _ in range(warmup):
                    d_body(), g_body()
            torch.cuda.current_stream(dev).wait_stream(side)
            rewind()
            self.d_graph, self.g_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with nvtx_range("graph capture"):
                with torch.cuda.graph(self.d_graph):
                    self.d_loss = d_body()
                with torch.cuda.graph(self.g_graph, pool=self.d_graph.pool()):
                    self.g_loss = g_body()
        except Exception:
            rewind()             # a failed warm-up or capture leaves the run exactly where it was
            raise

    def d(self, real: torch.Tensor) -> torch.Tensor:
        """Replay the discriminator step on `real`; returns its loss (a copy, valid after later replays)."""
        with nvtx_range("data", "data"):
            self.real.copy_(real, non_blocking=True)
        with nvtx_range("discriminator step (graph)", "discriminator"):
            self.d_graph.replay()
        return self.d_loss.clone()

    def g(self) -> torch.Tensor:
        """Replay the generator step; returns its loss (a copy)."""
        with nvtx_range("generator step (graph)", "generator"):
            self.g_graph.replay()
        return self.g_loss.clone()

    def step(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.d(real), self.g()


def check_graphed_steps(phase: str, device, seed: int = 0):
    """One captured D step + G step against the same steps run eagerly on a copy, at tiny size.

    Returns (max_abs_err, rel_err, tol, passed, note) over every parameter after the step (vidgan check).
    """
    from vidgan_fast.config import preset
    from vidgan_fast.fast.engine import to_fast
    from vidgan_fast.models import FrameGenerator
    from vidgan_fast.train import build_state, d_step, g_step, phase_settings

    phase = {1: "frames", 2: "video"}.get(phase, phase)        # vidgan check numbers the phases
    cfg = preset("tiny", device=str(device), seed=seed)
    g_f = None if phase == "frames" else FrameGenerator(widths=cfg.gf_widths).state_dict()
    state = to_fast(build_state(cfg, phase, g_f), warn=False)
    eager = copy.deepcopy(state)
    _, batch, _, _ = phase_settings(cfg, phase)
    shape = (batch, 1, 30, 30) if phase == "frames" else (batch, 1, 30, 30, 30)
    real = torch.rand(shape, device=state.device) * 2 - 1
    # Deterministic cuDNN for this comparison: gradients whose true value is 0 (biases before a train-mode batch
    # norm) are rounding noise, and RMSprop's first step turns any noise into +-10 lr; with the same
    # deterministic kernels in the graph and eagerly, both see the same noise.
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        graphed = GraphedSteps(state, shape, batch)
        graphed.step(real)
        torch.cuda.synchronize(state.device)
        d_step(eager, real, graphed.z_d.clone())
        g_step(eager, graphed.z_g.clone())
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
    worst, scale = 0.0, 0.0
    for mod in ("generator", "discriminators"):
        for (name, a), (_, b) in zip(getattr(state, mod).named_parameters(), getattr(eager, mod).named_parameters()):
            worst = max(worst, (a - b).abs().max().item())
            scale = max(scale, b.abs().max().item())
    tol = 1e-5
    rel = worst / max(scale, 1e-30)
    return worst, rel, tol, rel <= tol, f"phase {phase}: parameters after one replayed D+G step vs eager"
