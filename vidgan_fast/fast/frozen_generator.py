"""The frozen frame generator: a trained G_F with batch norm folded in, run by one Triton launch per layer.

    frozen = FrozenFrameGenerator.from_reference(g)   # g: models.FrameGenerator; BN folded once, eval stats
    frames = frozen(codes)                            # [M, 1, 30, 30] == g.eval()(codes); grads reach codes only

The module has no nn.Parameter: the folded weights are buffers (they follow .to() and the state dict) and
nothing in it requires grad. It runs kernels/frame_generator.py through an autograd.Function whose backward
computes the code gradient only. Its reference is the G_F it was folded from, in eval mode
(tests/test_frozen_generator.py).

ReLU masks for the backward come from the saved activations (h > 0): the forward writes them anyway as the
next layer's input, so keeping them costs memory only (about 0.5 MB per frame at paper widths, 114 MB for 240
frames; half that in bf16) and no extra launches; recomputing would re-run the whole forward, which is most of
the FLOPs.

precision='bf16' also stores in bf16: the packed kernel weights (cast once, when packing: the module is frozen,
so there is no per-step cast), the ReLU activations h0..h3 (written by the forward, saved for backward) and the
input gradients passed between the backward's layers. The codes, the frames (tanh output), the code gradient and
the biases stay fp32, and so do the state dict's folded weights (saved and loaded exactly as under fp32).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from vidgan_fast.kernels import frame_generator as K
from vidgan_fast.kernels.mode import PRECISIONS
from vidgan_fast.models import GF_PADDINGS as UP_PADDING    # up1..up3 and out, kernel 4 stride 2: the reference's

OP = "FrozenFrameGenerator"


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) in fp64 such that bn.eval()(x) == x * scale + shift."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{OP}: cannot fold {bn} without running statistics (track_running_stats=False)")
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _bias(layer: nn.Module, n: int) -> torch.Tensor:
    if layer.bias is None:
        return torch.zeros(n, dtype=torch.float64, device=layer.weight.device)
    return layer.bias.double()


class FrozenFrameGenerator(nn.Module):
    """G_F in eval mode with batch norm folded in: codes [M, z_dim] -> frames [M, 1, 30, 30]."""

    def __init__(self, fc_weight: torch.Tensor, fc_bias: torch.Tensor, up_weights: list[torch.Tensor],
                 up_biases: list[torch.Tensor], precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"{OP}: precision must be one of {PRECISIONS}, got {precision!r}")
        if len(up_weights) != 4 or len(up_biases) != 4 or up_weights[-1].shape[1] != 1:
            raise ValueError(f"{OP}: expected 4 transposed convolutions, the last with 1 output channel")
        self.precision = precision
        self.z_dim = fc_weight.shape[1]
        self.widths = tuple(w.shape[0] for w in up_weights)
        if fc_weight.shape[0] != 4 * self.widths[0]:
            raise ValueError(f"{OP}: dense layer gives {fc_weight.shape[0]} features, "
                             f"up1 wants 4 x {self.widths[0]}")
        self.register_buffer("fc_weight", fc_weight.detach().clone())
        self.register_buffer("fc_bias", fc_bias.detach().clone())
        for i, (w, b) in enumerate(zip(up_weights, up_biases), start=1):
            self.register_buffer(f"up{i}_weight", w.detach().clone())
            self.register_buffer(f"up{i}_bias", b.detach().clone())
        self._pack()
        self.register_load_state_dict_post_hook(_repack)

    @classmethod
    def from_reference(cls, g: nn.Module, precision: str = "fp32") -> "FrozenFrameGenerator":
        """Fold g's batch norms (running statistics, i.e. eval mode) into the preceding layers, once."""
        names = ("fc", "fc_bn", "up1", "bn1", "up2", "bn2", "up3", "bn3", "out")
        if not all(hasattr(g, n) for n in names):
            raise TypeError(f"{OP}.from_reference: expected a models.FrameGenerator, got {type(g).__name__}")
        with torch.no_grad():
            scale, shift = _bn_scale_shift(g.fc_bn)
            fc_weight = g.fc.weight.double() * scale[:, None]
            fc_bias = _bias(g.fc, scale.numel()) * scale + shift
            up_weights, up_biases = [], []
            for up, bn in ((g.up1, g.bn1), (g.up2, g.bn2), (g.up3, g.bn3)):
                scale, shift = _bn_scale_shift(bn)   # ConvTranspose2d weight is [Cin, Cout, kh, kw]: scale dim 1
                up_weights.append(up.weight.double() * scale[None, :, None, None])
                up_biases.append(_bias(up, scale.numel()) * scale + shift)
            up_weights.append(g.out.weight.double())
            up_biases.append(_bias(g.out, 1))
        dtype = g.fc.weight.dtype
        cast = lambda ts: [t.to(dtype) for t in ts]   # noqa: E731
        return cls(fc_weight.to(dtype), fc_bias.to(dtype), cast(up_weights), cast(up_biases), precision)

    @torch.no_grad()
    def _pack(self) -> None:
        """Kernel layouts of the folded weights (non-persistent buffers, rebuilt after load_state_dict), in the
        storage dtype (bf16 under precision 'bf16'); biases stay in the state dict's dtype."""
        c0, stored = self.widths[0], self._packed_dtype()
        nhwc = torch.arange(4 * c0, device=self.fc_weight.device).view(c0, 4).t().reshape(-1)
        self.register_buffer("fc_weight_nhwc", self.fc_weight[nhwc].to(stored).contiguous(), persistent=False)
        self.register_buffer("fc_bias_nhwc", self.fc_bias[nhwc].contiguous(), persistent=False)
        for i, pad in enumerate(UP_PADDING, start=1):
            w = getattr(self, f"up{i}_weight")
            forward = K.pack_forward_weight(w, pad) if i < 4 else K.pack_tap_weight(w)
            self.register_buffer(f"up{i}_forward", forward.to(stored), persistent=False)
            self.register_buffer(f"up{i}_backward", K.pack_backward_weight(w).to(stored), persistent=False)

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype of the activations and input gradients the kernels pass between layers."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def _packed_dtype(self) -> torch.dtype:
        """bf16 packed weights under 'bf16' for an fp32 module; otherwise the state dict's own dtype."""
        return self.storage_dtype if self.fc_weight.dtype == torch.float32 else self.fc_weight.dtype

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, widths={self.widths}, precision={self.precision!r}"

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 2 or codes.shape[1] != self.z_dim:
            raise ValueError(f"{OP}: codes must be [M, {self.z_dim}], got {tuple(codes.shape)}")
        if codes.dtype != self.fc_weight.dtype and codes.dtype in (torch.bfloat16, torch.float16):
            codes = codes.to(self.fc_weight.dtype)          # from an autocast G_V: the kernels read fp32
        if codes.dtype != self.fc_weight.dtype or codes.device != self.fc_weight.device:
            raise ValueError(f"{OP}: codes are {codes.dtype} on {codes.device}, the module is "
                             f"{self.fc_weight.dtype} on {self.fc_weight.device}")
        if codes.dtype != torch.float32:
            raise ValueError(f"{OP}: the Triton kernels run float32 only, got {codes.dtype}")
        return _FrozenFrameGeneratorFn.apply(codes, self)

    def forward_kernels(self, codes: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Triton forward without autograd: (NHWC ReLU activations h0..h3, tanh output [M, 30, 30])."""
        M, c0 = codes.shape[0], self.widths[0]
        opts = dict(precision=self.precision, out_dtype=self.storage_dtype)
        h = K.dense(codes.contiguous(), self.fc_weight_nhwc.t(), self.fc_bias_nhwc, relu=True, **opts)
        acts = [h.view(M, 2, 2, c0)]
        for i, pad in enumerate(UP_PADDING[:3], start=1):
            acts.append(K.conv_transpose_relu(acts[-1], getattr(self, f"up{i}_forward"),
                                              getattr(self, f"up{i}_bias"), pad, **opts))
        y = K.conv_transpose_tanh(acts[-1], self.up4_forward, self.up4_bias, UP_PADDING[3], self.precision)
        return acts, y

    def backward_kernels(self, grad_frames: torch.Tensor, acts: list[torch.Tensor],
                         y: torch.Tensor) -> torch.Tensor:
        """Code gradient [M, z_dim] from the frames' gradient and the saved forward (no weight gradients)."""
        M, opts = y.shape[0], dict(precision=self.precision, out_dtype=self.storage_dtype)
        g = grad_frames.reshape(M, *y.shape[1:], 1).contiguous()                 # NHWC with C = 1
        g = K.conv_transpose_input_grad(g, self.up4_backward, UP_PADDING[3], relu_input=acts[3],
                                        tanh_out=y.view(g.shape), **opts)
        for i in (3, 2, 1):
            g = K.conv_transpose_input_grad(g, getattr(self, f"up{i}_backward"), UP_PADDING[i - 1],
                                            relu_input=acts[i - 1], **opts)
        return K.dense(g.view(M, -1), self.fc_weight_nhwc, **{**opts, "out_dtype": torch.float32})


def _repack(module: FrozenFrameGenerator, incompatible_keys) -> None:
    module._pack()


class _FrozenFrameGeneratorFn(torch.autograd.Function):
    """codes -> frames through the Triton kernels; backward returns the code gradient only."""

    @staticmethod
    def forward(ctx, codes: torch.Tensor, module: FrozenFrameGenerator) -> torch.Tensor:
        acts, y = module.forward_kernels(codes)
        ctx.module = module
        ctx.save_for_backward(*acts, y)
        return y.view(codes.shape[0], 1, *y.shape[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_frames: torch.Tensor):
        *acts, y = ctx.saved_tensors
        return ctx.module.backward_kernels(grad_frames, acts, y), None
