"""FusedRMSprop: torch.optim.RMSprop (the configuration vidgan trains with) in one Triton launch per param group
(two when some parameters have a bf16 copy to write: those, and the rest).

    opt = FusedRMSprop(bank.parameters(), lr=2e-4, capturable=True)        # impl='auto' | 'triton' | 'ref'

Same update as torch.optim.RMSprop with momentum=0, centered=False, weight_decay=0, maximize=False (the
others raise NotImplementedError), to fp32 rounding (kernels/rmsprop.py). Interchangeable with torch's
optimizer: the same param_groups keys and defaults, the same state ('step', a 0-d float tensor, on the
parameter's device when capturable, else on the CPU; 'square_avg', like the parameter), so a state_dict saved by
either loads into the other (checkpoints stay portable) and the engine can rebuild it with type(opt)(params,
capturable=..., lr=..., alpha=..., eps=..., weight_decay=..., momentum=..., centered=...).

tiles ('auto' | 'gpu' | 'interpreter', kernels.common) or tile (elements per program, warps) choose the kernel's
tile. impl (vidgan_fast.fast.backend.resolve_impl): 'triton' runs kernels.rmsprop.rmsprop_update (one launch updates
every parameter of the group: a bank's 8 weight and bias tensors in one pass over w, g and v; with bf16 copies, one
launch for the biases and one for the weights); 'ref' runs the same
mathematics as plain in-place torch ops, per tensor; 'auto' takes 'triton' where it can run. Tensors the kernel
cannot take (not fp32, or the parameter, gradient and square_avg in different layouts) take the 'ref' mathematics
with one warning.

Parameters with a low-precision copy (fast/weight_copy.py: the banks' bf16 storage) get the copy written in the
same pass ('triton' only; after the 'ref' update the copy is stale and the bank recasts it before its next read).

step() never synchronises with the host: with capturable=True the step counters live on the device and the kernel
increments them, so step() can be captured in a CUDA graph (allocate the state first, e.g. with init_state(), as
graphs.init_optimizer_state does for RMSprop; a float lr is baked into the graph at capture, a tensor lr on the
device is read at every replay).
"""
from __future__ import annotations

import torch

from vidgan_fast.fast import weight_copy
from vidgan_fast.fast.backend import resolve_impl, warn_once

# torch.optim.RMSprop's defaults (and so the keys of its param_groups), in its order.
DEFAULTS = dict(lr=1e-2, momentum=0, alpha=0.99, eps=1e-8, centered=False, weight_decay=0, capturable=False,
                foreach=None, maximize=False, differentiable=False)
_UNSUPPORTED = dict(momentum=0, centered=False, weight_decay=0, maximize=False, differentiable=False)


def _scalar_dtype() -> torch.dtype:
    """The dtype of `step`, as torch.optim's _get_scalar_dtype."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class FusedRMSprop(torch.optim.Optimizer):
    """torch.optim.RMSprop without momentum, centering, weight decay or maximize, one Triton launch per group (two
    with bf16 weight copies)."""

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False, *,
                 impl: str = "auto", tiles: str = "auto", tile: tuple[int, int] | None = None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        for name, value in (("learning rate", lr), ("epsilon value", eps), ("alpha value", alpha)):
            if not 0.0 <= value:
                raise ValueError(f"Invalid {name}: {value}")
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach, maximize=maximize,
                        differentiable=differentiable)
        _check_supported(defaults)
        if impl not in ("auto", "triton", "ref"):
            raise ValueError(f"FusedRMSprop: impl must be one of ('auto', 'triton', 'ref'), got {impl!r}")
        self.impl, self.tiles, self.tile = impl, tiles, tile
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:          # as torch.optim.RMSprop.__setstate__: old state dicts load too
            for key, value in DEFAULTS.items():
                if key != "lr":
                    group.setdefault(key, value)
            for p in group["params"]:
                s = self.state.get(p, {})
                if s and not torch.is_tensor(s["step"]):
                    s["step"] = torch.tensor(float(s["step"]), dtype=_scalar_dtype(),
                                             device=p.device if group["capturable"] else None)

    def __getstate__(self):
        return {**super().__getstate__(), "impl": self.impl, "tiles": self.tiles, "tile": self.tile}

    def _state(self, p: torch.Tensor, capturable: bool) -> dict:
        """The state of p, made as torch.optim.RMSprop's _init_group makes it when it has none."""
        s = self.state[p]
        if not s:
            s["step"] = torch.zeros((), dtype=_scalar_dtype(), device=p.device if capturable else "cpu")
            s["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return s

    @torch.no_grad()
    def init_state(self) -> list[torch.Tensor]:
        """Allocate the state of every parameter that has none (before a CUDA-graph capture); returns it."""
        made = []
        for group in self.param_groups:
            for p in group["params"]:
                if not self.state.get(p):
                    made += self._state(p, group["capturable"]).values()
        return made

    @torch.no_grad()
    def step(self, closure=None):
        """One RMSprop step of every parameter with a gradient. No host synchronisation."""
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            _check_supported(group)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("RMSprop does not support sparse gradients")
            if any(torch.is_complex(p) for p in params):
                raise NotImplementedError("FusedRMSprop: complex parameters are not supported")
            states = [self._state(p, group["capturable"]) for p in params]
            grads = [p.grad for p in params]
            avgs = [s["square_avg"] for s in states]
            steps = [s["step"] for s in states]
            if group["capturable"] and not torch.compiler.is_compiling() and any(
                    s.device != p.device for s, p in zip(steps, params)):
                raise AssertionError("If capturable=True, params and state_steps must be on the same device")
            self._update(params, grads, avgs, steps, group)
        return loss

    def _update(self, params, grads, avgs, steps, group) -> None:
        from vidgan_fast.kernels.rmsprop import compatible
        lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
        if isinstance(lr, torch.Tensor) and lr.device != params[0].device:
            lr = lr.item()                        # a CPU tensor lr for CUDA params: as torch's _to_scalar (no sync)
        impl = resolve_impl(self.impl, params[0].device, "FusedRMSprop")
        fused = [i for i, (p, g, v) in enumerate(zip(params, grads, avgs))
                 if impl == "triton" and compatible(p, g, v) and p.device == params[0].device]
        if impl == "triton" and len(fused) < len(params):
            warn_once("FusedRMSprop: parameters that are not fp32 or whose gradient or state has another layout "
                      "take the PyTorch reference update")
        if fused:
            self._fused_update([params[i] for i in fused], [grads[i] for i in fused], [avgs[i] for i in fused],
                               [steps[i] for i in fused], lr, alpha, eps)
        rest = sorted(set(range(len(params))) - set(fused))
        if rest:
            reference_update([params[i] for i in rest], [grads[i] for i in rest], [avgs[i] for i in rest],
                             [steps[i] for i in rest], lr, alpha, eps)

    def _fused_update(self, params, grads, avgs, steps, lr, alpha, eps) -> None:
        """One launch for the parameters without a low-precision copy and one for those with one
        (fast/weight_copy.py: the kernel writes the copy too); then their version counters move, as in-place ops
        would move them, and the copies are marked current."""
        from vidgan_fast.kernels.rmsprop import copy_compatible, rmsprop_update
        on_device = all(s.device == p.device for s, p in zip(steps, params))
        copies = [weight_copy.copy_of(p) for p in params]
        with_copy = [i for i, c in enumerate(copies) if c is not None and copy_compatible(params[i], c)]
        for part, part_copies in (([i for i in range(len(params)) if i not in with_copy], None),
                                  (with_copy, [copies[i] for i in with_copy])):
            if part:
                rmsprop_update([params[i] for i in part], [grads[i] for i in part], [avgs[i] for i in part],
                               [steps[i] for i in part] if on_device else None, lr, alpha, eps,
                               tiles=self.tiles, tile=self.tile, copies=part_copies)
        if not on_device:
            torch._foreach_add_(steps, 1.0)
        for t in [*params, *(copies[i] for i in with_copy)]:
            torch.autograd.graph.increment_version(t)    # a backward that saved them before the step now raises
        for i in with_copy:
            weight_copy.mark_current(params[i])


def reference_update(params, grads, square_avgs, steps, lr, alpha: float, eps: float) -> None:
    """The 'ref' implementation: torch's _single_tensor_rmsprop (no momentum, centering, weight decay, maximize)
    as plain in-place torch ops, per tensor."""
    if steps:
        torch._foreach_add_(list(steps), 1.0)
    for p, g, v in zip(params, grads, square_avgs):
        v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        avg = v.sqrt().add_(eps)
        if isinstance(lr, torch.Tensor):
            p.sub_(g.div(avg).mul_(lr))                     # w - lr * (g / avg), lr read on the device
        else:
            p.addcdiv_(g, avg, value=-lr)


def _check_supported(group: dict) -> None:
    bad = {k: group.get(k, v) for k, v in _UNSUPPORTED.items() if group.get(k, v) != v}
    if bad:
        raise NotImplementedError(f"FusedRMSprop: only plain RMSprop (momentum=0, centered=False, "
                                  f"weight_decay=0, maximize=False, differentiable=False); got {bad}")
