"""K discriminators as one module: stacked weights [K, ...], one launch per layer for all K.

    bank = FrameDiscriminatorBank.from_reference([d_1, ..., d_K])   # same weights, one module
    bank(frames)            # logits [K, B], equal to torch.stack([d_k(frames) for k])
    bank.to_reference()     # K reference modules with the bank's current weights

Parameters are `conv{i}_weight` [K, Cout, Cin, *kernel] and `conv{i}_bias` [K, Cout] (registered in the order
of one reference discriminator's parameters), the fixed projections are the buffer `projections` [K, 8, 8].
Since every optimizer in torch.optim is elementwise, a step on the bank equals a step on each reference.

impl='triton': the projection kernel, then per layer the batched implicit-GEMM kernels of kernels/batched_conv.py
(or PyTorch grouped convolution for the layers that `layer_impl` marks 'grouped'). impl='ref': the same
mathematics in plain PyTorch with grouped convolutions (input [B, K*Cin, ...], groups=K), runs everywhere.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from vidgan_fast import models
from vidgan_fast.fast.backend import check_precision, resolve_impl
from vidgan_fast.fast.projection import project_frames, project_videos

LAYERS = ("conv1", "conv2", "conv3", "conv4")   # conv1..conv3 are followed by LeakyReLU(0.2), conv4 is the logit
SLOPE = 0.2
LAYER_IMPLS = ("triton", "grouped")


class BatchedConv(torch.autograd.Function):
    """y[k] = act(conv(x[k], w[k]) + b[k]) for all k in one launch; x [K, B, Cin, ...], y [K, B, Cout, ...]."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, leaky, precision="fp32", tiles="auto"):
        from kernels.batched_conv import conv_forward
        y = conv_forward(x, weight, bias, stride, padding, leaky, precision, tiles)
        ctx.save_for_backward(x, weight, y if leaky else None)   # LReLU'(pre) is read from the sign of y
        ctx.conf = (stride, padding, precision, tiles)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        from kernels.batched_conv import conv_input_grad, conv_weight_grad
        x, weight, y = ctx.saved_tensors
        stride, padding, precision, tiles = ctx.conf
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_input_grad(grad_y, weight, x.shape, stride, padding, y, precision, tiles)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_w, grad_b = conv_weight_grad(grad_y, x, weight.shape, stride, padding, y, precision, tiles)
        return grad_x, grad_w, grad_b, None, None, None, None, None


def grouped_conv(x, weight, bias, stride, padding, leaky):
    """BatchedConv's mathematics through one PyTorch grouped convolution (same [K, B, C, ...] layout)."""
    K, B = x.shape[:2]
    conv = F.conv2d if x.dim() == 5 else F.conv3d
    y = conv(x.transpose(0, 1).reshape(B, -1, *x.shape[3:]), weight.reshape(-1, *weight.shape[2:]),
             bias.reshape(-1), stride, padding, groups=K)
    y = y.view(B, K, -1, *y.shape[2:]).transpose(0, 1)
    return F.leaky_relu(y, SLOPE) if leaky else y


class DiscriminatorBank(nn.Module):
    """Shared machinery; subclasses pin the reference class, conv rank, layer geometry and input layout."""

    reference_cls: type = nn.Module
    dims = 2
    geometry: dict = {}     # layer -> (stride, padding) exactly as in the reference class
    input_layout = ""

    def __init__(self, projections: torch.Tensor, widths, impl: str = "auto", precision: str = "fp32",
                 seeds=None, layer_impl: dict | None = None, tiles: str = "auto"):
        super().__init__()
        if projections.dim() != 3:
            raise ValueError(f"{type(self).__name__}: projections must be [K, 8, 8], got {tuple(projections.shape)}")
        K = projections.shape[0]
        self.widths = tuple(int(c) for c in widths)
        if len(self.widths) != 3:
            raise ValueError(f"{type(self).__name__}: widths must be 3 channel counts, got {widths}")
        self.impl, self.precision, self.tiles = impl, check_precision(precision), tiles
        self.seeds = list(range(K)) if seeds is None else [int(s) for s in seeds]
        self.layer_impl = {name: "triton" for name in LAYERS}
        self.set_layer_impl(layer_impl or {})
        self.register_buffer("projections", projections.detach().clone())
        channels = (1, *self.widths, 1)
        kernel = (4,) * self.dims
        for name, cin, cout in zip(LAYERS, channels[:-1], channels[1:]):
            w = torch.empty(K, cout, cin, *kernel, device=projections.device, dtype=projections.dtype)
            setattr(self, f"{name}_weight", nn.Parameter(w.normal_(0.0, 0.02)))
            setattr(self, f"{name}_bias", nn.Parameter(w.new_zeros(K, cout)))

    @property
    def k(self) -> int:
        return self.projections.shape[0]

    def set_layer_impl(self, choices: dict) -> None:
        """Per-layer choice on the Triton path: 'triton' (batched kernel) or 'grouped' (PyTorch grouped conv)."""
        for name, choice in choices.items():
            if name not in LAYERS or choice not in LAYER_IMPLS:
                raise ValueError(f"{type(self).__name__}: layer_impl wants {{layer in {LAYERS}: one of "
                                 f"{LAYER_IMPLS}}}, got {name!r}: {choice!r}")
            self.layer_impl[name] = choice

    def extra_repr(self) -> str:
        return f"k={self.k}, widths={self.widths}, impl={self.impl!r}, precision={self.precision!r}"

    # ---- layout conversion to and from K reference discriminators ----

    @staticmethod
    def stacked_parameter_names() -> list[tuple[str, str]]:
        """(bank parameter, reference parameter suffix) pairs, in parameter order of both layouts."""
        return [(f"{layer}_{kind}", f"{layer}.{kind}") for layer in LAYERS for kind in ("weight", "bias")]

    @classmethod
    def from_reference(cls, discriminators, impl: str = "auto", precision: str = "fp32",
                       layer_impl: dict | None = None, tiles: str = "auto"):
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
                       layer_impl=layer_impl, tiles=tiles)
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
        h = self._project(x)                                              # [K, B, 1, ...]
        for name in LAYERS:
            w, b = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
            stride, padding = self.geometry[name]
            leaky = name != LAYERS[-1]
            if self.layer_impl[name] == "triton":
                h = BatchedConv.apply(h, w, b, stride, padding, leaky, self.precision, self.tiles)
            else:
                h = grouped_conv(h, w, b, stride, padding, leaky)
        return h.reshape(self.k, x.shape[0], -1).squeeze(2)

    def _forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """The 'ref' path, kept in the grouped layout [B, K*C, ...] from the projection to the logits."""
        K, B = self.k, x.shape[0]
        conv = F.conv2d if self.dims == 2 else F.conv3d
        h = self._project_grouped(x)                                      # [B, K, ...]
        for name in LAYERS:
            w, b = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
            stride, padding = self.geometry[name]
            h = conv(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), stride, padding, groups=K)
            if name != LAYERS[-1]:
                h = F.leaky_relu(h, SLOPE)
        return h.reshape(B, K, -1).transpose(0, 1).squeeze(2)


class FrameDiscriminatorBank(DiscriminatorBank):
    """K frame discriminators (models.FrameDiscriminator): frames [B, 1, 30, 30] -> logits [K, B]."""

    reference_cls = models.FrameDiscriminator
    dims = 2
    geometry = {"conv1": ((2, 2), (2, 2)), "conv2": ((2, 2), (1, 1)), "conv3": ((2, 2), (1, 1)),
                "conv4": ((1, 1), (1, 1))}
    input_layout = "frames [B, 1, H, W]"

    def _project(self, x):
        return project_frames(x, self.projections, "triton", self.precision, self.tiles)

    def _project_grouped(self, x):
        return F.conv2d(x, self.projections.unsqueeze(1), **models.FRAME_PROJ)   # [B, K, 15, 15]


class VideoDiscriminatorBank(DiscriminatorBank):
    """K video discriminators (models.VideoDiscriminator): videos [B, 1, T, 30, 30] -> logits [K, B]."""

    reference_cls = models.VideoDiscriminator
    dims = 3
    geometry = {"conv1": ((2, 2, 2), (1, 1, 1)), "conv2": ((2, 1, 1), (1, 1, 1)),
                "conv3": ((1, 1, 1), (0, 1, 1)), "conv4": ((1, 1, 1), (0, 1, 1))}
    input_layout = "videos [B, 1, T, H, W]"

    def _project(self, x):
        return project_videos(x, self.projections, "triton", self.precision, self.tiles)

    def _project_grouped(self, x):
        B, _, T, H, W = x.shape
        p = F.conv2d(x.transpose(1, 2).reshape(B * T, 1, H, W), self.projections.unsqueeze(1), **models.VIDEO_PROJ)
        return p.view(B, T, self.k, *p.shape[-2:]).transpose(1, 2)     # [B, K, T, 9, 9]
