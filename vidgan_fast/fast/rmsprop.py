"""FusedRMSprop: torch.optim.RMSprop (the configuration vidgan trains with) as one Triton launch per tensor, each
reading w, g and v once and writing w and v once (torch's foreach RMSprop makes about 13 weight-sized passes).

    opt = FusedRMSprop(bank.parameters(), lr=2e-4, capturable=True, copies=bank.stored_copy_of())

Same update as torch.optim.RMSprop with momentum=0, centered=False, weight_decay=0, maximize=False (the others
raise NotImplementedError), to fp32 rounding (kernels/rmsprop.py). Interchangeable with torch's optimizer: the same
param_groups keys and defaults, the same state ('step', a 0-d float tensor, on the parameter's device when
capturable, else on the CPU; 'square_avg', like the parameter), so a state_dict saved by either loads into the other
(checkpoints stay portable) and the engine can rebuild it with type(opt)(params, capturable=..., lr=..., ...).

copies: {parameter: low-precision copy} (a bank's stored bf16 weights, fast/bank.py): each step writes the copy of
every parameter it updates in the same pass (2 B per weight; the copy then matches the new weight). The bank owns
the copies; the optimizer only writes them.

update_of(p): the step of one parameter as a kernels/rmsprop.RMSpropStep, for a launch that applies it where p's
gradient is computed (a bank's conv weights, in their weight-gradient epilogue: fast/bank.py fuse_optimizer); p then
gets no gradient and step() skips it, as it skips any parameter without one.

step() never synchronises with the host: with capturable=True the step counters live on the device and the kernel
increments them, so step() can be captured in a CUDA graph (allocate the state first, with init_state(), as
graphs.init_optimizer_state does; a float lr is baked into the graph at capture, a tensor lr on the device is read at
every replay). Parameters the kernel cannot take (not fp32, or the parameter, gradient and square_avg in different
layouts) raise: the banks' never are.
"""
from __future__ import annotations

import torch


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
                 copies: dict | None = None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        for name, value in (("learning rate", lr), ("epsilon value", eps), ("alpha value", alpha)):
            if not 0.0 <= value:
                raise ValueError(f"Invalid {name}: {value}")
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach, maximize=maximize,
                        differentiable=differentiable)
        _check_supported(defaults)
        super().__init__(params, defaults)
        self.copies = dict(copies or {})          # parameter -> its low-precision copy (the bank's)

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
        return {**super().__getstate__(), "copies": self.copies}

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

    @torch.no_grad()
    def update_of(self, p: torch.Tensor):
        """The step of parameter p (one of this optimizer's) as a kernels/rmsprop.RMSpropStep, for a launch that
        applies it where p's gradient is computed instead of storing the gradient (fast/bank.py's backward); p then
        has no .grad and step() leaves it alone. p's state is made if it has none. The caller applies the step now:
        a step counter kept on the host is incremented here (one on p's device, by the launch), and the versions
        of p and its copy are bumped, as step() does."""
        from vidgan_fast.kernels.rmsprop import RMSpropStep
        group = next((g for g in self.param_groups if any(q is p for q in g["params"])), None)
        if group is None:
            raise ValueError("FusedRMSprop.update_of: the tensor is not one of this optimizer's parameters")
        _check_supported(group)
        state = self._state(p, group["capturable"])
        lr = group["lr"]
        if isinstance(lr, torch.Tensor) and lr.device != p.device:
            lr = lr.item()
        step = state["step"] if state["step"].device == p.device else None
        if step is None:
            state["step"] += 1
        copy = self.copies.get(p)
        for t in (p, copy):
            if t is not None:
                torch.autograd.graph.increment_version(t)
        return RMSpropStep(p, state["square_avg"], lr, group["alpha"], group["eps"], step=step, copy=copy)

    def _update(self, params, grads, avgs, steps, group) -> None:
        from vidgan_fast.kernels.rmsprop import rmsprop_update
        lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
        if isinstance(lr, torch.Tensor) and lr.device != params[0].device:
            lr = lr.item()                        # a CPU tensor lr for CUDA params: as torch's _to_scalar (no sync)
        on_device = all(s.device == p.device for s, p in zip(steps, params))
        rmsprop_update(params, grads, avgs, steps if on_device else None, lr, alpha, eps,
                       copies=[self.copies.get(p) for p in params])
        if not on_device:
            torch._foreach_add_(steps, 1.0)
        for t in [*params, *(self.copies[p] for p in params if p in self.copies)]:
            torch.autograd.graph.increment_version(t)    # as in-place ops would: a stale saved tensor now raises


def _check_supported(group: dict) -> None:
    bad = {k: group.get(k, v) for k, v in _UNSUPPORTED.items() if group.get(k, v) != v}
    if bad:
        raise NotImplementedError(f"FusedRMSprop: only plain RMSprop (momentum=0, centered=False, "
                                  f"weight_decay=0, maximize=False, differentiable=False); got {bad}")
