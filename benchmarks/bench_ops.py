"""Op-level cases of the report (benchmarks/report.py): projections, discriminator banks forward and
forward+backward, frozen G_F forward and forward+input-backward, each for reference / compile / fast (and vmap,
the stacked discriminators of baselines.py, on the bank rows), at the shapes the training steps use (the D step's
2B samples; phase 2's B x 30 codes). Reference: the K reference discriminators (models.DiscriminatorList, each
projecting its input itself) and models.FrameGenerator in eval mode; fast: fast/projection.py, the banks
(fast/bank.py) and the frozen Triton G_F (fast/frozen_generator.py), at the run's precision (tf32 or fp32).

The per-op pytest-benchmark suites live in bench_bank.py and bench_frozen_generator.py; this file adds only
the projections to pytest-benchmark (`pytest benchmarks/bench_ops.py --benchmark-only`).
"""
from __future__ import annotations

import os

import torch

from vidgan_fast.benchmarks.bench_steps import bench_config, resolve_size
from vidgan_fast.benchmarks import baselines
from vidgan_fast.benchmarks.timing import COLUMNS, Case, bench_case, column_settings, resolve_device

try:
    import pytest
except ImportError:        # the report (and `vidgan bench`) import op_cases without the test extra
    pytest = None
from vidgan_fast.lab import flops as F
from vidgan_fast.models import FrameGenerator, frame_discriminators, video_discriminators

BUFFERS = 3


def _closure(mode: str, forward, params):
    """fn(x) timing `forward` as mode says: 'forward' (no grad), 'weights' (backward to the weights, as a D
    step does), 'inputs' (backward to the input only, as the frozen G_F in a G step)."""
    params = [p for p in params if p.requires_grad]
    if mode == "forward":
        def fn(x):
            with torch.no_grad():
                return forward(x)
    elif mode == "weights":
        def fn(x):
            for p in params:
                p.grad = None
            forward(x).sum().backward()
    else:
        def fn(x):
            x.grad = None
            forward(x).sum().backward()
    return fn


def op_cases(size: str = "auto", device: str | torch.device = "auto", fast_tf32: bool = True,
             compile_enabled: bool = True, compile_mode: str | None = None,
             compile_backend: str | None = None) -> list[Case]:
    """The op rows (see the module docstring); the fast column is 'unavailable: <why>' where Triton cannot run."""
    from vidgan_fast.fast.bank import FrameDiscriminatorBank, VideoDiscriminatorBank
    from vidgan_fast.fast.frozen_generator import FrozenFrameGenerator
    from vidgan_fast.fast.projection import project_frames, project_videos
    device = resolve_device(device)
    size = resolve_size(size, device)
    cfg = bench_config(size, device, fast_tf32)
    settings = column_settings(device, kind="op", compile_enabled=compile_enabled, compile_mode=compile_mode,
                               compile_backend=compile_backend)
    precision = "tf32" if fast_tf32 else "fp32"
    gen = torch.Generator().manual_seed(0)
    n_f, n_v, n_codes = 2 * cfg.frames_batch, 2 * cfg.video_batch, cfg.video_batch * 30
    frames = [(torch.rand(n_f, 1, 30, 30, generator=gen) * 2 - 1).to(device) for _ in range(BUFFERS)]
    videos = [(torch.rand(n_v, 1, 30, 30, 30, generator=gen) * 2 - 1).to(device) for _ in range(BUFFERS)]
    codes = [torch.rand(n_codes, 100, generator=gen).mul(2).sub(1).to(device).requires_grad_()
             for _ in range(BUFFERS)]
    built: dict = {}

    def models(what):
        """Reference models, built once per run and shared by the columns (the fast ones copy them)."""
        if what not in built:
            torch.manual_seed(0)
            if what == "D_F":
                built[what] = frame_discriminators(cfg.frames_k, cfg.df_widths).to(device).train()
            elif what == "D_V":
                built[what] = video_discriminators(cfg.video_k, cfg.dv_widths, seed=1000).to(device).train()
            else:
                built[what] = FrameGenerator(100, cfg.gf_widths).to(device).eval().requires_grad_(False)
        return built[what]

    def bank(what):
        cls = FrameDiscriminatorBank if what == "D_F" else VideoDiscriminatorBank
        return cls.from_reference(list(models(what)), precision=precision).to(device).train()

    def projection_ref(what):
        """Each reference discriminator's own projection (d.project: [B, 1, ...]), stacked as the fast op's
        [K, B, ...] (the squeeze is a view)."""
        ds = models(what)
        return lambda x: torch.stack([d.project(x) for d in ds]).squeeze(2)

    def projection_fast(what):
        ds, project = models(what), (project_frames if what == "D_F" else project_videos)
        filters = torch.stack([d.projection.reshape(8, 8) for d in ds])
        return lambda x: project(x, filters, precision=precision)

    def stacked(what):
        return baselines.StackedDiscriminators(models(what)).to(device).train()

    def frozen_fast(_):
        return FrozenFrameGenerator.from_reference(models("G_F"), precision=precision).to(device)

    # (name, model, mode, inputs, flops, reference forward, fast forward)
    meta = {}
    with torch.device("meta"):
        meta["D_F"] = frame_discriminators(1, cfg.df_widths)[0]
        meta["D_V"] = video_discriminators(1, cfg.dv_widths)[0]
        meta["G_F"] = FrameGenerator(100, cfg.gf_widths)
    df_layers = F.frame_discriminator_layers(meta["D_F"], n_f)
    dv_layers = F.video_discriminator_layers(meta["D_V"], n_v, 30)
    gf_layers = F.frame_generator_layers(meta["G_F"], n_codes)
    kf, kv = cfg.frames_k, cfg.video_k
    specs = [
        (f"projection frames (K={kf}, N={n_f})", "D_F", "forward", frames,
         F.projection_frames_flops(kf, n_f), projection_ref, projection_fast),
        (f"projection videos (K={kv}, N={n_v})", "D_V", "forward", videos,
         F.projection_videos_flops(kv, n_v, 30), projection_ref, projection_fast),
        (f"D_F bank forward (K={kf}, N={n_f})", "D_F", "forward", frames,
         kf * F.total(df_layers), models, bank),
        (f"D_F bank fwd+bwd (K={kf}, N={n_f})", "D_F", "weights", frames,
         kf * (F.total(df_layers) + F.backward_flops(df_layers, True, False)), models, bank),
        (f"D_V bank forward (K={kv}, N={n_v})", "D_V", "forward", videos,
         kv * F.total(dv_layers), models, bank),
        (f"D_V bank fwd+bwd (K={kv}, N={n_v})", "D_V", "weights", videos,
         kv * (F.total(dv_layers) + F.backward_flops(dv_layers, True, False)), models, bank),
        (f"G_F frozen forward (M={n_codes})", "G_F", "forward", codes,
         F.total(gf_layers), models, frozen_fast),
        (f"G_F frozen fwd+input-bwd (M={n_codes})", "G_F", "inputs", codes,
         F.total(gf_layers) + F.backward_flops(gf_layers, False, True), models, frozen_fast),
    ]
    cases = []
    for name, what, mode, inputs, flops, ref_builder, fast_builder in specs:
        def factory(column, what=what, mode=mode, ref_builder=ref_builder, fast_builder=fast_builder):
            builder = {"fast": fast_builder, "vmap": stacked}.get(column, ref_builder)
            forward = builder(what)
            params = list(forward.parameters()) if isinstance(forward, torch.nn.Module) else []
            if column == "compile":
                forward = torch.compile(forward, **settings.compile_kwargs)
            elif column == "vmap" and settings.compile_enabled:
                forward = baselines.compiled_module(forward, settings.compile_kwargs)
            return _closure(mode, forward, params)
        bank_row = fast_builder is bank
        cases.append(Case(name, "op", int(flops), inputs, settings.columns(factory, vmap=bank_row),
                          settings.labels, size, compiled=compile_enabled))
    return cases


# ------------------------------------------------------------------------------------ pytest-benchmark

_CASES: dict = {}

if pytest is not None:
    @pytest.mark.parametrize("column", COLUMNS)
    @pytest.mark.parametrize("op", [0, 1], ids=["projection-frames", "projection-videos"])
    def test_projection(benchmark, op, column):
        if "ops" not in _CASES:
            _CASES["ops"] = op_cases(os.environ.get("VIDGAN_BENCH_SIZE", "auto"))
        bench_case(benchmark, _CASES["ops"][op], column, rounds=20)
