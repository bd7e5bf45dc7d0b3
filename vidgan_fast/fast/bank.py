"""K discriminators as one module: stacked weights [K, ...], one launch per layer for all K.

    bank = FrameDiscriminatorBank.from_reference([d_1, ..., d_K])   # same weights, one module
    bank(frames)            # logits [K, B], equal to torch.stack([d_k(frames) for k])
    bank.to_reference()     # K reference modules with the bank's current weights

Parameters are `conv{i}_weight` [K, Cout, Cin, *kernel] and `conv{i}_bias` [K, Cout] (registered in the order
of one reference discriminator's parameters), the fixed projections are the buffer `projections` [K, 8, 8].
Since every optimizer in torch.optim is elementwise, a step on the bank equals a step on each reference.
The layer geometry and the projections are the reference models' (models.FRAME_GEOMETRY / VIDEO_GEOMETRY,
models.project_frames / project_videos). Checkpoints hold the reference layout: reference_state_dict and
reference_optimizer_state, the same two methods as models.DiscriminatorList.

impl='triton': the projection kernel, then per layer the batched implicit-GEMM kernels of kernels/batched_conv.py
(which runs the logit layer conv4 through kernels/logit.py's batched GEMVs).
precision='bf16' also stores in bf16 what passes between the layers: each conv layer's output (the next layer's
input and the LeakyReLU mask, saved for backward) and each input gradient after the first layer's; the logits and
the projection (1 channel) stay fp32. The nn.Parameters stay fp32 master weights (the optimizer updates them, the
checkpoints hold them, their gradients are fp32); the forward and the dgrad read each weight's bf16 copy
(fast/weight_copy.py), which the fused RMSprop writes in the same pass as the update (2 B per weight) and which is
recast only when the weight changed otherwise (a load, a reference optimizer step): so a training step reads 2 B
per weight in the forward and 2 B in the dgrad, instead of 4 + 4 B, and bf16 also halves the activations' bytes
between layers (vidgan_fast/roofline.py counts both).
impl='ref': the same mathematics in plain PyTorch with grouped convolutions (input [B, K*Cin, ...], groups=K),
runs everywhere. impl='auto': as vidgan_fast.fast.backend.resolve_impl says, per call.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from vidgan_fast import models
from vidgan_fast.fast import weight_copy
from vidgan_fast.fast.backend import check_precision, resolve_impl
from vidgan_fast.fast.interchange import optimizer_state_to_reference
from vidgan_fast.fast.projection import project_frames, project_videos

LAYERS = tuple(models.FRAME_GEOMETRY)   # conv1..conv3 are followed by LeakyReLU, conv4 is the logit


class BatchedConv(torch.autograd.Function):
    """y[k] = act(conv(x[k], w[k]) + b[k]) for all k in one launch; x [K, B, Cin, ...], y [K, B, Cout, ...].

    Storage: y is written in out_dtype; the kernels read `weight_read`, the weight as stored (None: the parameter
    itself; or its bf16 copy, fast/weight_copy.py), saved for the dgrad; the input gradient has x's dtype (what
    autograd would cast it to anyway); the weight and bias gradients are float32, the master weights'.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, leaky, precision="fp32", tiles="auto",
                out_dtype=torch.float32, weight_read=None):
        from vidgan_fast.kernels.batched_conv import conv_forward
        weight_read = weight if weight_read is None else weight_read
        y = conv_forward(x, weight_read, bias, stride, padding, leaky, precision, tiles, out_dtype)
        ctx.save_for_backward(x, weight_read, y if leaky else None)   # LReLU'(pre) is read from the sign of y
        ctx.conf = (stride, padding, precision, tiles, tuple(weight.shape))
        return y

    @staticmethod
    def backward(ctx, grad_y):
        from vidgan_fast.kernels.batched_conv import conv_input_grad, conv_weight_grad
        x, weight_read, y = ctx.saved_tensors
        stride, padding, precision, tiles, w_shape = ctx.conf
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_input_grad(grad_y, weight_read, x.shape, stride, padding, y, precision, tiles, x.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_w, grad_b = conv_weight_grad(grad_y, x, w_shape, stride, padding, y, precision, tiles)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


class DiscriminatorBank(nn.Module):
    """Shared machinery; subclasses pin the reference class, conv rank, layer geometry and input layout."""

    reference_cls: type = nn.Module
    dims = 2
    geometry: dict = {}     # layer -> (stride, padding): the reference models' table
    input_layout = ""

    def __init__(self, projections: torch.Tensor, widths, impl: str = "auto", precision: str = "fp32",
                 seeds=None, tiles: str = "auto"):
        super().__init__()
        if projections.dim() != 3:
            raise ValueError(f"{type(self).__name__}: projections must be [K, 8, 8], got {tuple(projections.shape)}")
        K = projections.shape[0]
        self.widths = tuple(int(c) for c in widths)
        if len(self.widths) != 3:
            raise ValueError(f"{type(self).__name__}: widths must be 3 channel counts, got {widths}")
        self.impl, self.precision, self.tiles = impl, check_precision(precision), tiles
        self.seeds = list(range(K)) if seeds is None else [int(s) for s in seeds]
        self.register_buffer("projections", projections.detach().clone())
        channels = (1, *self.widths, 1)
        kernel = (models.DISC_KERNEL,) * self.dims
        for name, cin, cout in zip(LAYERS, channels[:-1], channels[1:]):
            w = torch.empty(K, cout, cin, *kernel, device=projections.device, dtype=projections.dtype)
            setattr(self, f"{name}_weight", nn.Parameter(w.normal_(0.0, 0.02)))
            setattr(self, f"{name}_bias", nn.Parameter(w.new_zeros(K, cout)))

    @property
    def k(self) -> int:
        return self.projections.shape[0]

    def extra_repr(self) -> str:
        return f"k={self.k}, widths={self.widths}, impl={self.impl!r}, precision={self.precision!r}"

    # ---- layout conversion to and from K reference discriminators ----

    @staticmethod
    def stacked_parameter_names() -> list[tuple[str, str]]:
        """(bank parameter, reference parameter suffix) pairs, in parameter order of both layouts."""
        return [(f"{layer}_{kind}", f"{layer}.{kind}") for layer in LAYERS for kind in ("weight", "bias")]

    @classmethod
    def from_reference(cls, discriminators, impl: str = "auto", precision: str = "fp32", tiles: str = "auto"):
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
            bank = cls(projections, refs[0].widths, impl=impl, precision=precision, seeds=[d.seed for d in refs],
                       tiles=tiles)
        with torch.no_grad():
            for bank_name, suffix in cls.stacked_parameter_names():
                getattr(bank, bank_name).copy_(torch.stack([d.get_parameter(suffix).detach() for d in refs]))
        return bank

    def reference_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """Exactly the keys and values of models.DiscriminatorList(self.to_reference()).state_dict()."""
        sd = OrderedDict()
        for k in range(self.k):
            sd[f"{k}.projection"] = self.projections[k].reshape(1, 1, *self.projections.shape[1:]).clone()
            for bank_name, suffix in self.stacked_parameter_names():
                sd[f"{k}.{suffix}"] = getattr(self, bank_name)[k].detach().clone()
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
        rank = 2 + self.dims
        if x.dim() != rank or x.shape[1] != 1:
            raise ValueError(f"{type(self).__name__}: expected input {self.input_layout}, got shape {tuple(x.shape)}")
        x = x.float()        # under bf16 autocast the generator hands over bf16: the bank computes in fp32
        if resolve_impl(self.impl, x.device, type(self).__name__) == "ref":
            return self._forward_grouped(x)
        h = self.project(x, filters=self.projections, impl="triton", precision=self.precision,
                         tiles=self.tiles)                                # [K, B, 1, ...]
        stored = self.storage_dtype
        for name in LAYERS:
            w, b = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
            stride, padding = self.geometry[name]
            last = name == LAYERS[-1]
            w_read = w if stored == w.dtype else weight_copy.stored_copy(w, stored)
            h = BatchedConv.apply(h, w, b, stride, padding, not last, self.precision, self.tiles,
                                  torch.float32 if last else stored, w_read)
        return h.reshape(self.k, x.shape[0], -1).squeeze(2)

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype of the activations passed between layers and of the weights as the kernels read them."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def _forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """The 'ref' path, kept in the grouped layout [B, K*C, ...] from the projection to the logits."""
        K, B = self.k, x.shape[0]
        conv = F.conv2d if self.dims == 2 else F.conv3d
        h = self.project_grouped(x, self.projections)                    # [B, K, ...]
        for name in LAYERS:
            w, b = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
            stride, padding = self.geometry[name]
            h = conv(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), stride, padding, groups=K)
            if name != LAYERS[-1]:
                h = F.leaky_relu(h, models.LEAKY_SLOPE)
        return h.reshape(B, K, -1).transpose(0, 1).squeeze(2)


class FrameDiscriminatorBank(DiscriminatorBank):
    """K frame discriminators (models.FrameDiscriminator): frames [B, 1, 30, 30] -> logits [K, B]."""

    reference_cls = models.FrameDiscriminator
    dims = 2
    geometry = models.FRAME_GEOMETRY
    input_layout = "frames [B, 1, H, W]"
    project = staticmethod(project_frames)                   # [K, B, 1, 15, 15]
    project_grouped = staticmethod(models.project_frames)    # [B, K, 15, 15]


class VideoDiscriminatorBank(DiscriminatorBank):
    """K video discriminators (models.VideoDiscriminator): videos [B, 1, T, 30, 30] -> logits [K, B]."""

    reference_cls = models.VideoDiscriminator
    dims = 3
    geometry = models.VIDEO_GEOMETRY
    input_layout = "videos [B, 1, T, H, W]"
    project = staticmethod(project_videos)                   # [K, B, 1, T, 9, 9]
    project_grouped = staticmethod(models.project_videos)    # [B, K, T, 9, 9]
