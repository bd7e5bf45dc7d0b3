"""The fair PyTorch baselines of the report's `compile` and `vmap` columns (issue 16, item 5).

`compile`: what a PyTorch user would do to compile the training step, done fairly: NVTX off
(profiling.nvtx_disabled, else Dynamo splits the step at every range), the forward+loss (step.d_losses /
step.g_loss) with fullgraph=True, the backward through AOTAutograd's compiled backward, and the optimizer step
compiled too (torch.compile of opt.step, as PyTorch's optimizer tutorial does; not fullgraph: torch.optim's
`_use_grad` wrapper breaks the graph on purpose before and after the update, so the update itself is one graph,
pytorch/pytorch#104053). The step stays the training code's own (step.d_step / g_step with the compiled forward).
Checked on CPU (TORCH_LOGS=graph_breaks; phase 1 D step and phase 2 G step, LSTM backward included, both
columns): those two are the only graph breaks. Compiling takes minutes per step on a CPU (phase 2 G: ~15). Phase 2 needs Dynamo's `allow_rnn` for G_V's nn.LSTM
(without it Dynamo refuses to trace the LSTM and fullgraph fails); it is switched on only while compiling.

`vmap`: what a PyTorch user would write for K small models: the K reference discriminators stacked with
torch.func.stack_module_state and run with torch.func.vmap over a functional_call of one of them
(StackedDiscriminators), trained by torch.optim.RMSprop(foreach=True) on the stacked parameters, and compiled
as above when the compile column is on.

`grouped` (bench_bank.py's column of its own, no longer in the product): the K discriminators' weights stacked and
run as one PyTorch grouped convolution per layer (input [B, K x Cin, ...], groups=K: cuDNN on a GPU), the fixed
projections as one convolution with K output channels (models.project_frames / project_videos). It is the
single-launch-per-layer formulation the banks replace with their Triton kernels (GroupedDiscriminators).
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from vidgan_fast import step as steps
from vidgan_fast.profiling import nvtx_disabled


class StackedDiscriminators(nn.Module):
    """K discriminators of one architecture as stacked parameters and buffers [K, ...]: x -> logits [K, B].

    Parameters are registered under their reference names with '.' written '__' (conv1__weight: [K, ...]), so
    .parameters() is what an optimizer trains and .requires_grad_() works as for the DiscriminatorList.
    """

    def __init__(self, discriminators):
        super().__init__()
        discriminators = list(discriminators)
        params, buffers = stack_module_state(discriminators)
        self.k = len(discriminators)
        self.param_names, self.buffer_names = list(params), list(buffers)
        self.stacked = nn.ParameterDict({_key(n): nn.Parameter(p.detach().clone()) for n, p in params.items()})
        for n, b in buffers.items():
            self.register_buffer(_key(n), b.detach().clone())
        # the stateless template: on the meta device, not a submodule (its parameters are not this module's)
        object.__setattr__(self, "template", copy.deepcopy(discriminators[0]).to("meta"))

    def _one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {n: self.stacked[_key(n)] for n in self.param_names}
        buffers = {n: getattr(self, _key(n)) for n in self.buffer_names}
        return vmap(self._one, in_dims=(0, 0, None))(params, buffers, x)          # [K, B]

    def reference_state_dict(self) -> dict:
        """The DiscriminatorList layout ('0.conv1.weight', ...): discriminator k's slices."""
        out = {}
        for k in range(self.k):
            for n in self.param_names:
                out[f"{k}.{n}"] = self.stacked[_key(n)][k].detach()
            for n in self.buffer_names:
                out[f"{k}.{n}"] = getattr(self, _key(n))[k]
        return out


def _key(name: str) -> str:
    return name.replace(".", "__")


class GroupedDiscriminators(nn.Module):
    """K discriminators of one architecture as one grouped convolution per layer: x -> logits [K, B].

    Parameters `{layer}_weight` [K, Cout, Cin, *kernel] and `{layer}_bias` [K, Cout] (copies of the references');
    the projections are the buffer `projections` [K, 8, 8]. Activations stay in the grouped layout [B, K x C, ...]
    from the projection to the logits; every layer is torch.nn.functional.conv2d / conv3d with groups=K.
    """

    LAYERS = ("conv1", "conv2", "conv3", "conv4")

    def __init__(self, discriminators):
        super().__init__()
        from vidgan_fast import models
        refs = list(discriminators)
        if not refs or any(type(d) is not type(refs[0]) or d.widths != refs[0].widths for d in refs):
            raise ValueError("GroupedDiscriminators: need K >= 1 discriminators of one class and one width")
        self.k, self.video = len(refs), isinstance(refs[0], models.VideoDiscriminator)
        self.slope = models.LEAKY_SLOPE
        self.project = models.project_videos if self.video else models.project_frames
        self.register_buffer("projections", torch.stack([d.projection.detach().reshape(8, 8) for d in refs]))
        self.geometry = {}
        for name in self.LAYERS:
            convs = [getattr(d, name) for d in refs]
            self.geometry[name] = (convs[0].stride, convs[0].padding)
            self.register_parameter(f"{name}_weight",
                                    nn.Parameter(torch.stack([c.weight.detach() for c in convs]).clone()))
            self.register_parameter(f"{name}_bias", nn.Parameter(torch.stack([c.bias.detach() for c in convs]).clone()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F
        conv = F.conv3d if self.video else F.conv2d
        h = self.project(x, self.projections)                      # [B, K, (T,) OH, OW]: one input channel each
        for name in self.LAYERS:
            w, b = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
            stride, padding = self.geometry[name]
            h = conv(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), stride, padding, groups=self.k)
            if name != self.LAYERS[-1]:
                h = F.leaky_relu(h, self.slope)
        return h.reshape(x.shape[0], self.k).t()                   # [K, B]


def to_vmap(state) -> object:
    """`state` (step.build_state) with its discriminators stacked and trained by RMSprop(foreach=True), in place."""
    lr = state.d_opt.param_groups[0]["lr"]
    state.discriminators = StackedDiscriminators(state.discriminators).to(state.device).train()
    state.d_opt = torch.optim.RMSprop(state.discriminators.parameters(), lr=lr, foreach=True)
    return state


# ------------------------------------------------------------------------------------ torch.compile, fairly

@contextlib.contextmanager
def compiling(video: bool):
    """NVTX off, and for phase 2 Dynamo's experimental LSTM support on (restored after)."""
    import torch._dynamo
    saved = torch._dynamo.config.allow_rnn
    try:
        torch._dynamo.config.allow_rnn = saved or video
        with nvtx_disabled():
            yield
    finally:
        torch._dynamo.config.allow_rnn = saved


def compile_optimizer(opt: torch.optim.Optimizer, **compile_kwargs) -> torch.optim.Optimizer:
    """opt.step compiled (in place, on this instance): every later opt.step() runs the compiled update."""
    eager_step = opt.step

    def step():
        eager_step()
    opt.step = torch.compile(step, **compile_kwargs)
    return opt


def compiled_step(state, which: str, compile_kwargs: dict):
    """fn(inp) running step.d_step(state, real, z) (inp = (real, z)) or step.g_step(state, z) (inp = z) with
    the forward+loss compiled with fullgraph=True and the optimizer step(s) compiled; NVTX off throughout."""
    for opt in (state.d_opt,) if which == "D" else (state.g_opt, state.f_opt):
        if opt is not None:
            compile_optimizer(opt, **compile_kwargs)
    forward = torch.compile(steps.d_losses if which == "D" else steps.g_loss, fullgraph=True, **compile_kwargs)
    video = state.phase.video

    def run(inp):
        with compiling(video):
            if which == "D":
                return steps.d_step(state, inp[0], inp[1], forward=forward)
            return steps.g_step(state, inp, forward=forward)
    return run


def eager_step(state, which: str):
    """fn(inp) running the training code's step eagerly (the reference column, and vmap without compile)."""
    if which == "D":
        return lambda inp: steps.d_step(state, inp[0], inp[1])
    return lambda inp: steps.g_step(state, inp)


def compiled_module(module: nn.Module, compile_kwargs: dict):
    """module(x) compiled for the op rows (fullgraph=True: one op is one graph), called with NVTX off."""
    compiled = torch.compile(module, fullgraph=True, **compile_kwargs)

    def forward(x):
        with nvtx_disabled():
            return compiled(x)
    return forward
