"""CUDA graphs for the training steps: the discriminator step and the generator step (forward, backward,
optimizer) are each captured once and replayed.

Static buffers: the real batch (copied in before each replay) and the noise, drawn inside the graph
(`normal_` on a static tensor, so every replay draws fresh noise from the graph-safe Philox generator).
Optimizers must be built with capturable=True (engine.to_fast does).

A graph replays kernels on the memory it recorded, so every tensor the step reads or updates must exist before
capture and stay the same tensor afterwards:
- Optimizer state is allocated before warm-up (init_optimizer_state: zero, as RMSprop's lazy init would make
  it). Left to the lazy init, it would be allocated inside the capture, and every replay would re-run the
  recorded zero-fill of `square_avg` and `step`: each step RMSprop's first step.
- Warm-up (Triton compiles, cuBLAS/cuDNN pick algorithms, kernels/autotune.py times its candidate tiles per layer:
  never inside capture, where it only reads its cache) changes weights, batch-norm buffers and optimizer
  state; afterwards their saved values are copied back INTO THE SAME TENSORS (restore), never through
  load_state_dict, which swaps in new ones, and the RNG is rewound: the run continues exactly where it was.
  The saved values are host copies (state just initialised to zero is zeroed again instead of saved), so the
  snapshot costs no GPU memory.
- _same_state checks both rules after warm-up and after capture: a tensor made or replaced there is an error.
- The restore writes the weights behind the bank's back, so the bank's bf16 weight copies (fast/bank.py) are
  recast right after it, eagerly (the captured optimizer keeps them current from then on; a checkpoint load between
  replays recasts them itself, load_reference_state_dict).
- Before capture the warm-up's gradients are freed and the allocator's cache emptied (runtime.release_cache): the
  captured steps allocate their transients and gradients from the graphs' private pool, so without this the regular
  pool would keep a second copy of them cached beside it (lab/memory.py projects both).

`runtime` is what executes warm-up and capture: CudaRuntime here; the tests pass a CPU stand-in whose replay
re-runs the step on the tensors the capture saw (tests/test_graphs.py). graph_check.py compares replays with
eager steps (`vidgan check`'s step rows).
"""
from __future__ import annotations

import torch

from vidgan_fast.fast.rmsprop import FusedRMSprop
from vidgan_fast.profiling import nvtx_range
from vidgan_fast.step import d_step, g_step

WARMUP_STEPS = 3


def trained_parts(state) -> tuple[list, list]:
    """([(name, module)], [(name, optimizer)]) of what the two steps change (a frozen G_F changes nothing)."""
    modules = [("generator", state.generator), ("discriminators", state.discriminators)]
    optimizers = [("g_opt", state.g_opt), ("d_opt", state.d_opt)]
    if state.f_opt is not None:
        modules.append(("frame_generator", state.frame_generator))
        optimizers.append(("f_opt", state.f_opt))
    return modules, optimizers


def init_optimizer_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Allocate the state of every parameter that has none, exactly as RMSprop's lazy init (_init_group) would:
    `step` a 0-d zero (on the parameter's device when capturable), `square_avg` (and `momentum_buffer`,
    `grad_avg` when used) zeros like the parameter. Returns the tensors it made."""
    if isinstance(opt, FusedRMSprop):
        return opt.init_state()
    if type(opt) is not torch.optim.RMSprop:
        raise RuntimeError(f"CUDA graphs: no state initialiser for {type(opt).__name__} (only RMSprop)")
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    made = []
    for group in opt.param_groups:
        for p in group["params"]:
            if opt.state.get(p):
                continue
            s = {"step": torch.zeros((), dtype=scalar, device=p.device if group["capturable"] else "cpu"),
                 "square_avg": torch.zeros_like(p, memory_format=torch.preserve_format)}
            if group["momentum"] > 0:
                s["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["centered"]:
                s["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            opt.state[p] = s
            made += s.values()
    return made


def _held(optimizers) -> dict:
    """{(optimizer, parameter, key): value} of every optimizer state entry (the objects themselves)."""
    return {(id(opt), id(p), key): v for _, opt in optimizers for p, s in opt.state.items() for key, v in s.items()}


def _same_state(held: dict, optimizers, when: str) -> None:
    now = _held(optimizers)
    changed = [k for k in held.keys() | now.keys() if k not in held or k not in now or now[k] is not held[k]]
    if changed:
        raise RuntimeError(f"CUDA graphs: {len(changed)} optimizer state tensors were created or replaced during "
                           f"{when}; a captured step must update the tensors that exist before capture")


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True)


def snapshot(modules, optimizers, zero=(), save=_host_copy) -> list:
    """[(live tensor, save(tensor) or None)] of every parameter, buffer and optimizer state tensor (a host copy by
    default); None (restore zeroes it) for the tensors in `zero`, state that was just initialised to zero."""
    zero, out, seen = {id(t) for t in zero}, [], set()
    live = [t for _, m in modules for t in (*m.parameters(), *m.buffers())]
    live += [v for _, opt in optimizers for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    for t in live:
        if id(t) not in seen:
            seen.add(id(t))
            out.append((t, None if id(t) in zero else save(t)))
    return out


@torch.no_grad()
def restore(saved: list) -> None:
    """Copy the snapshot's values back into the same tensors."""
    for live, value in saved:
        if value is None:
            live.zero_()
        else:
            live.copy_(value)


class CudaRuntime:
    """Warm-up on a side stream, capture into torch.cuda.CUDAGraph, the device's (graph-safe) RNG, the caching
    allocator's cache emptied before capture."""

    def __init__(self, state):
        if state.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.device = state.device

    def get_rng(self):
        return torch.cuda.get_rng_state(self.device)

    def set_rng(self, rng) -> None:
        torch.cuda.set_rng_state(rng, self.device)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def release_cache(self) -> None:
        torch.cuda.empty_cache()

    save = staticmethod(_host_copy)

    def warm_up(self, fn, n: int) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(n):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def capture(self, fn, share_pool_with=None):
        """(graph, output of fn as captured: overwritten by every replay)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=None if share_pool_with is None else share_pool_with.pool()):
            out = fn()
        return graph, out


class GraphedSteps:
    """`step(real) -> (d_loss, g_loss)` replaying the captured D step then the captured G step."""

    def __init__(self, state, real_shape: tuple[int, ...], batch: int, warmup: int = WARMUP_STEPS,
                 runtime=CudaRuntime):
        rt = runtime(state)
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

        modules, optimizers = trained_parts(state)
        made = [t for _, opt in optimizers for t in init_optimizer_state(opt)]
        saved, rng, held = snapshot(modules, optimizers, zero=made, save=rt.save), rt.get_rng(), _held(optimizers)

        def rewind():
            rt.synchronize()
            restore(saved)
            rt.set_rng(rng)
            refresh = getattr(state.discriminators, "refresh_stored_weights", None)
            if refresh is not None:                 # the bank's bf16 copies of the weights just restored
                refresh()

        try:
            with nvtx_range("graph warm-up"):
                rt.warm_up(lambda: (d_body(), g_body()), warmup)
            rewind()
            for _, module in modules:               # the captured steps make their own, in the graphs' pool
                for p in module.parameters():
                    p.grad = None
            rt.release_cache()
            _same_state(held, optimizers, "warm-up")
            with nvtx_range("graph capture"):
                self.d_graph, self.d_loss = rt.capture(d_body)
                self.g_graph, self.g_loss = rt.capture(g_body, share_pool_with=self.d_graph)
            _same_state(held, optimizers, "capture")
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
