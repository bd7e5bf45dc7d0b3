"""FLOP model of the ops and training steps, counted from layer shapes (behind the benchmarks' TFLOP/s figures).

Conventions (what a figure means):
- 2 FLOPs per multiply-add.
- Counted: Linear, Conv2d, Conv3d, ConvTranspose2d, LSTM (input and recurrent gate matmuls, every layer and
  direction) and the fixed random projections.
- Ignored: biases, batch norm, activations, the LSTM's elementwise gate arithmetic, losses, the optimizer update.
  All are O(activations or parameters) and memory-bound; at paper widths they are well under 1% of the count.
- A transposed convolution counts every input pixel times the whole kernel, 2*B*Cin*Cout*k*k*Hin*Win (as
  torch.utils.flop_counter does), so G_F's last layer (padding 2) includes the taps that land in the cropped border.
- Backward of a layer = input gradient (1x its forward) + weight gradient (1x its forward), and a step counts only
  the gradients it needs (this is a floor, not what a given implementation happens to compute):
  no input gradient into a layer whose input needs none (fed by data, noise or a fixed projection), no weight gradient
  for weights the step does not train (the discriminators in a G step, the frozen G_F in phase 2, the projections).
- Steps: a D step generates B fakes (forward only) and runs K discriminators on B real + B fake samples; a G step
  generates B fakes and runs K discriminators on them, backward to the generator's weights.

Counts come from running the modules' forward on the `meta` device (no memory, no arithmetic, no side effects on
the real module) with hooks that read every layer's shapes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.func import functional_call

from vidgan_fast.models import FRAME_PROJ, FRAME_SIZE, PROJ_KERNEL, VIDEO_PROJ

COUNTED = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.LSTM)


# ---------------------------------------------------------------- one layer (hand formulas)

def linear_flops(rows: int, n_in: int, n_out: int) -> int:
    return 2 * rows * n_in * n_out


def conv_flops(batch: int, c_in: int, c_out: int, kernel, out_size) -> int:
    """Convolution (any dimension, groups=1): 2 * B * Cin * Cout * prod(kernel) * prod(output size)."""
    return 2 * batch * c_in * c_out * math.prod(kernel) * math.prod(out_size)


def conv_transpose_flops(batch: int, c_in: int, c_out: int, kernel, in_size) -> int:
    """Transposed convolution: 2 * B * Cin * Cout * prod(kernel) * prod(input size)."""
    return 2 * batch * c_in * c_out * math.prod(kernel) * math.prod(in_size)


def lstm_flops(steps: int, batch: int, n_in: int, hidden: int, layers: int = 1, bidirectional: bool = False) -> int:
    """Gate matmuls of a (stacked, optionally bidirectional) LSTM: per step, direction and layer 2*4H*(in + H)*B."""
    dirs = 2 if bidirectional else 1
    total, width = 0, n_in
    for _ in range(layers):
        total += dirs * steps * batch * 2 * 4 * hidden * (width + hidden)
        width = dirs * hidden
    return total


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# ---------------------------------------------------------------- layer walk

@dataclass
class Layer:
    name: str
    kind: str
    flops: int          # forward FLOPs of this call, whole batch


def _layer_flops(m: nn.Module, inp: torch.Tensor, out) -> int:
    if getattr(m, "groups", 1) != 1:
        raise ValueError(f"FLOP count: grouped convolutions are not modelled ({m})")
    if isinstance(m, nn.Linear):
        return linear_flops(inp.numel() // m.in_features, m.in_features, m.out_features)
    if isinstance(m, nn.ConvTranspose2d):
        return conv_transpose_flops(inp.shape[0], m.in_channels, m.out_channels, m.kernel_size, inp.shape[2:])
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        return conv_flops(out.shape[0], m.in_channels, m.out_channels, m.kernel_size, out.shape[2:])
    if isinstance(m, nn.LSTM):
        steps, batch = (inp.shape[1], inp.shape[0]) if m.batch_first else (inp.shape[0], inp.shape[1])
        return lstm_flops(steps, batch, m.input_size, m.hidden_size, m.num_layers, m.bidirectional)
    raise TypeError(f"no FLOP formula for {type(m).__name__}")


class _Call(nn.Module):
    def __init__(self, fn, modules):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.__dict__["fn"] = fn     # not a submodule: each module's parameters must be registered once

    def forward(self, *inputs):
        return self.fn(*inputs)


def forward_layers(modules, fn, *shapes) -> list[Layer]:
    """The counted layers of `modules` that `fn(*inputs)` runs, in call order, with their forward FLOPs.

    `shapes` are the input shapes; the call runs on the meta device with the modules' parameters and buffers
    swapped for meta tensors, so it costs nothing and leaves the modules untouched.
    """
    modules = list(modules) if isinstance(modules, (list, tuple)) else [modules]
    wrapper = _Call(fn, modules)
    meta = {n: torch.empty_like(t, device="meta")
            for n, t in [*wrapper.named_parameters(), *wrapper.named_buffers()]}
    prefix = "parts.0." if len(modules) == 1 else "parts."
    names = {m: n.removeprefix(prefix) for n, m in wrapper.named_modules()}
    layers: list[Layer] = []

    def hook(m, args, out):
        layers.append(Layer(names[m], type(m).__name__, _layer_flops(m, args[0], out)))

    for s in shapes:
        if not all(isinstance(n, int) and n > 0 for n in s):
            raise ValueError(f"FLOP count: input sizes must be positive integers, got {tuple(s)}")
    handles = [m.register_forward_hook(hook) for m in wrapper.modules() if isinstance(m, COUNTED)]
    modes = [(m, m.training) for m in wrapper.modules()]
    wrapper.eval()   # batch norm in eval mode accepts a batch of 1; the counted layers do not care
    try:
        with torch.no_grad():
            functional_call(wrapper, meta, tuple(torch.empty(s, device="meta") for s in shapes))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return layers


# ---------------------------------------------------------------- ops (forward FLOPs)

def _first(discriminators):
    d = discriminators[0] if isinstance(discriminators, (list, tuple, nn.ModuleList)) else discriminators
    return d


def projection_frames_flops(k: int, frames: int, size: int = FRAME_SIZE) -> int:
    """K fixed 8x8 projections of `frames` frames: 30x30 -> 15x15 each."""
    out = conv_out(size, PROJ_KERNEL, FRAME_PROJ["stride"], FRAME_PROJ["padding"])
    return conv_flops(k * frames, 1, 1, (PROJ_KERNEL, PROJ_KERNEL), (out, out))


def projection_videos_flops(k: int, videos: int, steps: int, size: int = FRAME_SIZE) -> int:
    """K fixed 8x8 projections of every frame of `videos` videos: 30x30 -> 9x9 per frame."""
    out = conv_out(size, PROJ_KERNEL, VIDEO_PROJ["stride"], VIDEO_PROJ["padding"])
    return conv_flops(k * videos * steps, 1, 1, (PROJ_KERNEL, PROJ_KERNEL), (out, out))


def frame_generator_layers(g: nn.Module, frames: int) -> list[Layer]:
    return forward_layers(g, g, (frames, g.z_dim))


def frame_discriminator_layers(d: nn.Module, frames: int, size: int = FRAME_SIZE) -> list[Layer]:
    """One D_F on `frames` frames; its projection first (as the layer 'projection')."""
    proj = Layer("projection", "projection", projection_frames_flops(1, frames, size))
    return [proj, *forward_layers(d, d, (frames, 1, size, size))]


def video_discriminator_layers(d: nn.Module, videos: int, steps: int, size: int = FRAME_SIZE) -> list[Layer]:
    """One D_V on `videos` videos of `steps` frames; its per-frame projection first."""
    proj = Layer("projection", "projection", projection_videos_flops(1, videos, steps, size))
    return [proj, *forward_layers(d, d, (videos, 1, steps, size, size))]


def video_generator_layers(v: nn.Module, videos: int) -> list[Layer]:
    """G_V's own layers (dense stack, LSTM, to_code) for `videos` videos, without G_F."""
    return forward_layers(v, v.codes, (videos, v.z_dim))


def total(layers: list[Layer]) -> int:
    return sum(layer.flops for layer in layers)


def frame_generator_flops(g: nn.Module, frames: int = 1) -> int:
    return total(frame_generator_layers(g, frames))


def frame_discriminator_flops(d, frames: int = 1, k: int = 1) -> int:
    """Forward FLOPs of K frame discriminators (a list, a bank's reference, or one module) on `frames` frames."""
    return k * total(frame_discriminator_layers(_first(d), frames))


def video_discriminator_flops(d, videos: int = 1, steps: int = 30, k: int = 1) -> int:
    return k * total(video_discriminator_layers(_first(d), videos, steps))


def video_generator_flops(v: nn.Module, g: nn.Module, videos: int = 1) -> int:
    """G_V forward including the frozen G_F on videos * steps frames."""
    return total(video_generator_layers(v, videos)) + frame_generator_flops(g, videos * v.steps)


# ---------------------------------------------------------------- backward and steps

def backward_flops(layers: list[Layer], train_weights: bool, input_grad_into_first: bool) -> int:
    """Backward FLOPs of a chain of layers: weight grads (1x) if trained, input grads (1x) where needed.

    A layer's input needs a gradient if the chain's input does (`input_grad_into_first`) or an earlier layer
    has trained weights. Projections never train, so a D step needs no gradient into a discriminator's conv1.
    """
    flops, needs_grad = 0, input_grad_into_first
    for layer in layers:
        trained = train_weights and layer.kind != "projection"
        flops += layer.flops * (int(trained) + int(needs_grad))
        needs_grad = needs_grad or trained
    return flops


@dataclass
class StepFlops:
    name: str
    forward: int
    backward: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.forward + self.backward


def phase1_d_step_flops(g, d, k: int, batch: int) -> StepFlops:
    """G_F makes `batch` fakes (no grad); K D_F run on batch real + batch fake and train."""
    g_fwd = frame_generator_flops(g, batch)
    d_layers = frame_discriminator_layers(_first(d), 2 * batch)
    d_fwd, d_bwd = k * total(d_layers), k * backward_flops(d_layers, True, False)
    return StepFlops("phase1 D step", g_fwd + d_fwd, d_bwd,
                     {"G_F forward": g_fwd, "D_F forward": d_fwd, "D_F backward": d_bwd})


def phase1_g_step_flops(g, d, k: int, batch: int) -> StepFlops:
    """G_F makes `batch` fakes; K D_F judge them; gradients flow through D_F (inputs only) into G_F's weights."""
    g_layers = frame_generator_layers(g, batch)
    d_layers = frame_discriminator_layers(_first(d), batch)
    g_fwd, d_fwd = total(g_layers), k * total(d_layers)
    d_bwd, g_bwd = k * backward_flops(d_layers, False, True), backward_flops(g_layers, True, False)
    return StepFlops("phase1 G step", g_fwd + d_fwd, d_bwd + g_bwd,
                     {"G_F forward": g_fwd, "D_F forward": d_fwd, "D_F backward": d_bwd, "G_F backward": g_bwd})


def phase2_d_step_flops(v, g, d, k: int, batch: int) -> StepFlops:
    """G_V (with frozen G_F) makes `batch` fake videos (no grad); K D_V run on batch real + batch fake and train."""
    gen = video_generator_flops(v, g, batch)
    d_layers = video_discriminator_layers(_first(d), 2 * batch, v.steps)
    d_fwd, d_bwd = k * total(d_layers), k * backward_flops(d_layers, True, False)
    return StepFlops("phase2 D step", gen + d_fwd, d_bwd,
                     {"G_V+G_F forward": gen, "D_V forward": d_fwd, "D_V backward": d_bwd})


def phase2_g_step_flops(v, g, d, k: int, batch: int) -> StepFlops:
    """G_V makes `batch` videos; gradients flow through D_V and the frozen G_F (inputs only) into G_V's weights."""
    v_layers = video_generator_layers(v, batch)
    g_layers = frame_generator_layers(g, batch * v.steps)
    d_layers = video_discriminator_layers(_first(d), batch, v.steps)
    v_fwd, g_fwd, d_fwd = total(v_layers), total(g_layers), k * total(d_layers)
    d_bwd = k * backward_flops(d_layers, False, True)
    g_bwd = backward_flops(g_layers, False, True)
    v_bwd = backward_flops(v_layers, True, False)
    return StepFlops("phase2 G step", v_fwd + g_fwd + d_fwd, d_bwd + g_bwd + v_bwd,
                     {"G_V forward": v_fwd, "G_F forward": g_fwd, "D_V forward": d_fwd, "D_V backward": d_bwd,
                      "G_F input backward": g_bwd, "G_V backward": v_bwd})


def paper_models(device: str = "meta"):
    """The paper-width reference models on the meta device (free): (G_F, D_F, G_V, D_V)."""
    from vidgan_fast.models import FrameDiscriminator, FrameGenerator, VideoDiscriminator, VideoGenerator
    with torch.device(device):
        return FrameGenerator(), FrameDiscriminator(), VideoGenerator(), VideoDiscriminator()
