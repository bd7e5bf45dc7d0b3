"""K discriminators as one module: stacked weights, one Triton launch per layer and pass for all K.

    bank = FrameDiscriminatorBank.from_reference([d_1, ..., d_K])   # same weights, one module
    bank(frames)            # logits [K, B], equal to models.DiscriminatorList([d_1, ..., d_K])(frames)
    bank.to_reference()     # K reference modules with the bank's current weights

Parameters are `conv{i}_weight` [K, Cout, Cin, *kernel] and `conv{i}_bias` [K, Cout], registered in the order of
one reference discriminator's parameters (so a state dict or an optimizer state converts index by index); each
weight is stored channels last, (tap, input channel) contiguous per output channel, the layout its kernels read
(kernels/conv.py). The fixed projections are the buffer `projections` [K, 8, 8]. Since every optimizer in
torch.optim is elementwise, a step on the bank equals a step on each reference. Geometry: models.FRAME_GEOMETRY /
VIDEO_GEOMETRY; projections: fast/projection.py. Checkpoints hold the reference layout (reference_state_dict,
reference_optimizer_state: the same two methods as models.DiscriminatorList).

The whole stack after the projection is one autograd Function (_Bank): its forward runs conv1..conv3 (+LeakyReLU)
and the logit layer, its backward the chain with each LeakyReLU derivative applied once, where the input gradient
that crosses it is written (the next layer's dgrad epilogue), the bias gradients as column sums of those, and only
the gradients the step asks for (a D step: weights, no input gradient; a G step: the input gradient only).
With an optimizer fused (fuse_optimizer, as engine.to_fast does), a D step's backward also applies that optimizer's
RMSprop step to conv1..conv3's weights in their weight-gradient launches, instead of returning those gradients.

precision 'bf16' also stores in bf16 what passes between the layers (activations, input gradients) and reads
bf16 copies of the weights. The bank owns those copies (`stored_weights()`, non-persistent buffers: they follow
.to() and stay out of checkpoints); they are current after construction, after load_reference_state_dict(),
after a FusedRMSprop step that was given them (engine.to_fast does), and after refresh_stored_weights(): whoever
changes the weights otherwise calls that (fast/graphs.py does after its warm-up restore).
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import torch
import torch.nn as nn

from vidgan_fast import models
from vidgan_fast.fast.interchange import optimizer_state_to_reference
from vidgan_fast.fast.projection import project_frames, project_videos
from vidgan_fast.kernels import conv as C
from vidgan_fast.kernels import logit as L
from vidgan_fast.kernels.mode import PRECISIONS

LAYERS = tuple(models.FRAME_GEOMETRY)   # conv1..conv3 are followed by LeakyReLU, conv4 is the logit


def _as3d(geometry, dims):
    """A layer's ((stride), (padding)) as 3-D tuples (a 2-D layer has depth 1)."""
    stride, padding = geometry
    return ((1, *stride), (0, *padding)) if dims == 2 else (tuple(stride), tuple(padding))


class _Bank(torch.autograd.Function):
    """logits [K, B] of conv1..conv4 on x [K, B, D, H, W, 1]; gradients to x and to the 8 parameters."""

    @staticmethod
    def forward(ctx, x, bank, *params):
        weights = bank.kernel_weights()
        acts = [x]
        for i, (w, b, geo) in enumerate(zip(weights[:3], params[1:6:2], bank.layer_geometry()[:3])):
            acts.append(C.conv_forward(acts[-1], w, b, bank.kernel, *geo, leaky=True, precision=bank.precision,
                                       out_dtype=bank.storage_dtype))
        stride, padding = bank.layer_geometry()[3]
        logits = L.logit_forward(acts[3], weights[3], params[7], bank.kernel, padding, bank.precision)
        ctx.bank = bank
        ctx.save_for_backward(*acts, *weights)
        return logits

    @staticmethod
    def backward(ctx, g):
        bank = ctx.bank
        x, y1, y2, y3, *weights = ctx.saved_tensors
        acts, geos = (x, y1, y2, y3), bank.layer_geometry()
        wants_input = ctx.needs_input_grad[0]
        wants_params = any(ctx.needs_input_grad[2:])
        grads = [None] * 8
        g = g.contiguous()
        _, padding = geos[3]
        if wants_params:
            dw, db = L.logit_wgrad(g, y3, bank.kernel, padding, bank.precision)
            grads[6], grads[7] = bank.parameter_view(3, dw), db
        d = L.logit_dgrad(g, weights[3], y3, bank.kernel, padding, act_in=True, precision=bank.precision,
                          out_dtype=bank.storage_dtype)                 # dL/d(pre-activation of conv3)
        dx = None
        for i in (2, 1, 0):                                             # conv3, conv2, conv1
            # the input gradient first: it reads the weights that a fused optimizer step below overwrites
            d_below = None
            if i > 0:
                d_below = C.conv_dgrad(d, weights[i], acts[i], bank.kernel, *geos[i], act_in=True,
                                       precision=bank.precision, out_dtype=bank.storage_dtype)
            elif wants_input:
                dx = C.conv_input_grad(d, weights[0], x, bank.kernel, *geos[0], act_in=False,
                                       precision=bank.precision, out_dtype=torch.float32)
            if wants_params:
                update = bank.weight_update(i) if ctx.needs_input_grad[2 + 2 * i] else None
                dw = C.conv_wgrad(d, acts[i], bank.kernel, *geos[i], weights[i].shape[1], bank.precision,
                                  update=update)
                grads[2 * i] = None if update is not None else bank.parameter_view(i, dw)
                grads[2 * i + 1] = d.sum(dim=(1, 2, 3, 4), dtype=torch.float32)
            d = d_below
        return (dx, None, *grads)


class DiscriminatorBank(nn.Module):
    """Shared machinery; subclasses pin the reference class, conv rank, layer geometry and input layout."""

    reference_cls: type = nn.Module
    dims = 2
    geometry: dict = {}     # layer -> (stride, padding): the reference models' table
    input_layout = ""

    def __init__(self, projections: torch.Tensor, widths, precision: str = "fp32", seeds=None):
        super().__init__()
        if projections.dim() != 3:
            raise ValueError(f"{type(self).__name__}: projections must be [K, 8, 8], got {tuple(projections.shape)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        K = projections.shape[0]
        self.widths = tuple(int(c) for c in widths)
        if len(self.widths) != 3:
            raise ValueError(f"{type(self).__name__}: widths must be 3 channel counts, got {widths}")
        self.precision = precision
        self._fused_optimizer = None         # fuse_optimizer()
        self.seeds = list(range(K)) if seeds is None else [int(s) for s in seeds]
        self.kernel = (1,) * (3 - self.dims) + (models.DISC_KERNEL,) * self.dims       # 3-D, depth 1 for 2-D
        self.register_buffer("projections", projections.detach().clone())
        channels = (1, *self.widths, 1)
        for name, cin, cout in zip(LAYERS, channels[:-1], channels[1:]):
            stored = torch.empty(K, cout, *self.kernel[3 - self.dims:], cin, device=projections.device,
                                 dtype=projections.dtype)                       # channels last
            w = stored.movedim(-1, 2)                                           # viewed as [K, Cout, Cin, *kernel]
            setattr(self, f"{name}_weight", nn.Parameter(w.normal_(0.0, 0.02)))
            setattr(self, f"{name}_bias", nn.Parameter(w.new_zeros(K, cout)))
            if self.storage_dtype != projections.dtype:
                self.register_buffer(f"{name}_weight_stored", torch.empty_like(w, dtype=self.storage_dtype),
                                     persistent=False)
        self.refresh_stored_weights()

    @property
    def k(self) -> int:
        return self.projections.shape[0]

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype of the activations passed between layers and of the weights as the kernels read them."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def extra_repr(self) -> str:
        return f"k={self.k}, widths={self.widths}, precision={self.precision!r}"

    def layer_geometry(self) -> list:
        return [_as3d(self.geometry[name], self.dims) for name in LAYERS]

    # ---- the weights as the kernels read them ----

    def stored_weights(self) -> list[torch.Tensor]:
        """The bank's bf16 weight copies (one per layer, shaped and strided like its parameter), [] when the bank
        reads its fp32 parameters directly."""
        return [getattr(self, f"{name}_weight_stored") for name in LAYERS if hasattr(self, f"{name}_weight_stored")]

    def stored_copy_of(self) -> dict:
        """{parameter: its stored copy}: what a fused optimizer step writes beside the update."""
        return {getattr(self, f"{name}_weight"): getattr(self, f"{name}_weight_stored") for name in LAYERS
                if hasattr(self, f"{name}_weight_stored")}

    @torch.no_grad()
    def refresh_stored_weights(self) -> None:
        """Recast the stored copies from the parameters (after any change of the weights other than a fused
        optimizer step that wrote them)."""
        for param, copy in self.stored_copy_of().items():
            copy.copy_(param)

    def kernel_weights(self) -> list[torch.Tensor]:
        """Each layer's weight as the kernels read it: [K, Cout, *kernel3d, Cin] contiguous (a view)."""
        out = []
        for name in LAYERS:
            w = getattr(self, f"{name}_weight_stored", None)
            out.append(self.kernel_layout(getattr(self, f"{name}_weight") if w is None else w))
        return out

    def kernel_layout(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped and strided like a weight parameter, viewed as the kernels read it: [K, Cout, *kernel3d,
        Cin], contiguous (no copy)."""
        t = t.movedim(2, -1)
        return t.reshape(t.shape[0], t.shape[1], *self.kernel, t.shape[-1])

    # ---- the optimizer step in the backward ----

    def fuse_optimizer(self, optimizer) -> None:
        """From now on the backward of a D step applies `optimizer`'s step (a fast/rmsprop.FusedRMSprop over this
        bank's parameters) to conv1..conv3's weights where it computes their gradients, in the weight-gradient
        launch's epilogue: those gradients are never stored and the weights get no .grad, so optimizer.step()
        updates only the biases and the logit layer. The update is the one step() would make (same kernel math,
        same state). None: the backward returns every gradient again (what `vidgan check` compares)."""
        self._fused_optimizer = optimizer

    def weight_update(self, layer: int):
        """The RMSprop step of layer `layer`'s weight for its weight-gradient launch (kernels/rmsprop.RMSpropStep,
        in the kernel layout), or None when no optimizer is fused."""
        optimizer = self._fused_optimizer
        if optimizer is None:
            return None
        step = optimizer.update_of(getattr(self, f"{LAYERS[layer]}_weight"))
        return dataclasses.replace(step, weight=self.kernel_layout(step.weight),
                                   square_avg=self.kernel_layout(step.square_avg),
                                   copy=None if step.copy is None else self.kernel_layout(step.copy))

    def parameter_view(self, layer: int, dw: torch.Tensor) -> torch.Tensor:
        """A kernel-layout weight gradient [K, Cout, *kernel3d, Cin] viewed as the layer's parameter (same
        shape and strides, no copy)."""
        K, cout, *_, cin = dw.shape
        return dw.view(K, cout, *self.kernel[3 - self.dims:], cin).movedim(-1, 2)

    # ---- layout conversion to and from K reference discriminators ----

    @staticmethod
    def stacked_parameter_names() -> list[tuple[str, str]]:
        """(bank parameter, reference parameter suffix) pairs, in parameter order of both layouts."""
        return [(f"{layer}_{kind}", f"{layer}.{kind}") for layer in LAYERS for kind in ("weight", "bias")]

    @classmethod
    def from_reference(cls, discriminators, precision: str = "fp32"):
        """A bank holding the weights and projections of K reference discriminators (copies)."""
        refs = list(discriminators)
        if not refs:
            raise ValueError(f"{cls.__name__}.from_reference: need at least one discriminator")
        for i, d in enumerate(refs):
            if not isinstance(d, cls.reference_cls):
                raise TypeError(f"{cls.__name__}.from_reference: item {i} is {type(d).__name__}, "
                                f"expected {cls.reference_cls.__name__}")
            if tuple(d.widths) != tuple(refs[0].widths):
                raise ValueError(f"{cls.__name__}.from_reference: discriminator {i} has widths {d.widths}, "
                                 f"discriminator 0 has {refs[0].widths}; all K must match")
            for name, (stride, padding) in cls.geometry.items():
                conv = getattr(d, name)
                if (tuple(conv.stride), tuple(conv.padding)) != (stride, padding):
                    raise ValueError(f"{cls.__name__}.from_reference: discriminator {i} {name} has stride "
                                     f"{conv.stride} padding {conv.padding}, the bank implements {stride} {padding}")
        projections = torch.stack([d.projection.detach().reshape(d.projection.shape[-2:]) for d in refs])
        device = projections.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            # the constructor's random init is overwritten below: it must not move the run's RNG streams
            bank = cls(projections, refs[0].widths, precision=precision, seeds=[d.seed for d in refs])
        with torch.no_grad():
            for bank_name, suffix in cls.stacked_parameter_names():
                getattr(bank, bank_name).copy_(torch.stack([d.get_parameter(suffix).detach() for d in refs]))
        bank.refresh_stored_weights()
        return bank

    def reference_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """Exactly the keys and values of models.DiscriminatorList(self.to_reference()).state_dict()."""
        sd = OrderedDict()
        for k in range(self.k):
            sd[f"{k}.projection"] = self.projections[k].reshape(1, 1, *self.projections.shape[1:]).clone()
            for bank_name, suffix in self.stacked_parameter_names():
                sd[f"{k}.{suffix}"] = getattr(self, bank_name)[k].detach().clone(memory_format=torch.contiguous_format)
        return sd

    def reference_optimizer_state(self, optimizer_state: dict) -> dict:
        """The state dict of an optimizer over self.parameters(), in the reference (checkpoint) layout."""
        return optimizer_state_to_reference(self, optimizer_state)

    def load_reference_state_dict(self, state_dict) -> None:
        """Load a models.DiscriminatorList state dict of K discriminators (strict: same keys and shapes)."""
        expected = self.reference_state_dict()
        missing = [key for key in expected if key not in state_dict]
        unexpected = [key for key in state_dict if key not in expected]
        if missing or unexpected:
            raise KeyError(f"{type(self).__name__}.load_reference_state_dict: missing keys {missing[:4]}, "
                           f"unexpected keys {unexpected[:4]}")
        for key, value in state_dict.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise ValueError(f"{type(self).__name__}.load_reference_state_dict: {key} has shape "
                                 f"{tuple(value.shape)}, expected {tuple(expected[key].shape)}")
        with torch.no_grad():
            for k in range(self.k):
                self.projections[k].copy_(state_dict[f"{k}.projection"].reshape(self.projections.shape[1:]))
                for bank_name, suffix in self.stacked_parameter_names():
                    getattr(self, bank_name)[k].copy_(state_dict[f"{k}.{suffix}"])
        self.refresh_stored_weights()

    def to_reference(self) -> list[nn.Module]:
        """K reference discriminators (on the bank's device and dtype) holding the bank's current weights."""
        with torch.random.fork_rng(devices=[]):   # the constructors' random init must not move the global RNG
            refs = [self.reference_cls(seed=s, widths=self.widths) for s in self.seeds]
        refs = [d.to(device=self.projections.device, dtype=self.projections.dtype) for d in refs]
        models.DiscriminatorList(refs).load_state_dict(self.reference_state_dict())
        return refs

    # ---- forward ----

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (the reference's input layout) -> logits [K, B]."""
        if x.dim() != 2 + self.dims or x.shape[1] != 1:
            raise ValueError(f"{type(self).__name__}: expected input {self.input_layout}, got shape {tuple(x.shape)}")
        x = x.float()        # under bf16 autocast the generator hands over bf16: the bank computes in fp32
        h = self.project(x, self.projections, precision=self.precision)    # [K, B, (T,) OH, OW]
        K, B = h.shape[:2]
        h = h.reshape(K, B, *([1] if self.dims == 2 else []), *h.shape[2:], 1)   # channels last, one channel
        return _Bank.apply(h, self, *self.parameters())


class FrameDiscriminatorBank(DiscriminatorBank):
    """K frame discriminators (models.FrameDiscriminator): frames [B, 1, 30, 30] -> logits [K, B]."""

    reference_cls = models.FrameDiscriminator
    dims = 2
    geometry = models.FRAME_GEOMETRY
    input_layout = "frames [B, 1, H, W]"
    project = staticmethod(project_frames)                   # [K, B, 15, 15]


class VideoDiscriminatorBank(DiscriminatorBank):
    """K video discriminators (models.VideoDiscriminator): videos [B, 1, T, 30, 30] -> logits [K, B]."""

    reference_cls = models.VideoDiscriminator
    dims = 3
    geometry = models.VIDEO_GEOMETRY
    input_layout = "videos [B, 1, T, H, W]"
    project = staticmethod(project_videos)                   # [K, B, T, 9, 9]
