"""bf16 storage in the discriminator banks (precision "bf16"): activations and input gradients in bf16 between the
layers, bf16 copies of the fp32 master weights, fp32 weight gradients. Everything against fp64.

Two levels, each with a bound derived in vidgan_fast.tolerance (not tuned):
- one layer (BatchedConv) against an fp64 run on exactly the operands the kernels multiply (the stored bf16 x and
  dy, the bf16 copy of w, the LeakyReLU-scaled dy rounded to bf16): what remains is fp32 accumulation, plus, for
  an output stored in bf16, its one rounding to nearest, |bf16(v) - v| <= u |v| element by element. This pins the
  rounding mode (a truncating store fails) and the fp32 weight gradient (one accumulated in bf16 fails).
- the whole bank against the references run in fp64 with tolerance("bf16", ..., layers=4, stored=...): the
  products' operand rounding, 4 u per layer, plus 2 u per tensor kept in bf16 along the chain. A LeakyReLU whose
  pre-activation lies within the forward error of 0 may take the other slope in the bank than in fp64 (a
  discontinuity: no bound on the gradients holds across it), so the fp64 references take the bank's slopes (the
  sign of the y the bank saved); their forward values differ only where the pre-activation is that close to 0.
Widths are tiny or a few GPU tiles (80, 130, 72 channels at tiles="gpu"): the kernels run under the interpreter.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from test_bank import WIDTHS, make_input, make_references
from vidgan_fast import models
from vidgan_fast.fast import bank as bank_module
from vidgan_fast.fast.bank import BatchedConv, FrameDiscriminatorBank, VideoDiscriminatorBank
from vidgan_fast.tolerance import UNIT_ROUNDOFF, relative_error, tolerance

pytestmark = pytest.mark.usefixtures("one_thread")
U = UNIT_ROUNDOFF["bf16"]
BF16 = torch.bfloat16


def bf16(t):
    """t rounded to the nearest bf16 value (ties to even), in fp64."""
    return t.to(BF16).double()


def assert_stored_close(what, got, ref, tol32):
    """got is a bf16 store of an fp32 result v with |v - ref| <= tol32 * max|ref|: |got - ref| <= u |v| + that."""
    assert got.dtype == BF16, f"{what}: stored as {got.dtype}, expected bfloat16"
    ref = ref.double()
    slack = tol32 * ref.abs().max().item()
    bound = U * (ref.abs() + slack) + slack
    excess = (got.double() - ref).abs() - bound
    assert excess.max().item() <= 0, (f"{what}: {int((excess > 0).sum())} of {ref.numel()} elements beyond "
                                      f"u |ref| + {tol32:.3g} max|ref| (worst by {excess.max().item():.3g})")


LAYER_CASES = [   # x shape [K, B, Cin, ...], (Cout, kernel), stride, padding, leaky, tiles
    ((2, 2, 80, 8, 8), (130, (4, 4)), (2, 2), (1, 1), True, "gpu"),           # conv2-like, 2-3 tiles each way
    ((1, 1, 66, 4, 5, 5), (80, (4, 4, 4)), (1, 1, 1), (0, 1, 1), True, "gpu"),  # 3D, conv3-like, 2 tiles
    ((3, 3, 4, 15, 15), (8, (4, 4)), (2, 2), (2, 2), False, "auto"),          # odd sizes, identity (logit-like)
    ((2, 1, 5, 7, 6), (3, (4, 3)), (2, 1), (1, 0), True, "gpu"),
    ((2, 3, 2, 9, 7, 7), (5, (4, 4, 4)), (2, 1, 1), (1, 1, 1), True, "auto"),
]


@pytest.mark.parametrize("x_shape,conv,stride,padding,leaky,tiles", LAYER_CASES)
def test_bf16_storage_layer_matches_fp64_of_its_operands(x_shape, conv, stride, padding, leaky, tiles):
    """y and dx stored in bf16 (rounded to nearest), dw and db in fp32 at fp32 accuracy, from a bf16 x and dy and
    an fp32 master weight read through its bf16 copy."""
    gen = torch.Generator().manual_seed(sum(x_shape))
    cout, kernel = conv
    K, _, cin = x_shape[:3]
    x = torch.randn(x_shape, generator=gen).to(BF16)              # as the layer below stored it
    w = torch.randn((K, cout, cin, *kernel), generator=gen) / (cin * math.prod(kernel)) ** 0.5
    b = torch.randn((K, cout), generator=gen) * 0.1
    xr, wr, br = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    y = BatchedConv.apply(xr, wr, br, stride, padding, leaky, "bf16", tiles, BF16, w.to(BF16))
    dy = torch.randn(y.shape, generator=gen).to(BF16)             # as the layer above stored its input gradient
    y.backward(dy)
    assert (y.dtype, xr.grad.dtype, wr.grad.dtype, br.grad.dtype) == (BF16, BF16, torch.float32, torch.float32)
    conv_nd = F.conv2d if x.dim() == 5 else F.conv3d
    grad_in = torch.nn.grad.conv2d_input if x.dim() == 5 else torch.nn.grad.conv3d_input
    grad_w = torch.nn.grad.conv2d_weight if x.dim() == 5 else torch.nn.grad.conv3d_weight
    refs = {"y": [], "dx": [], "dw": [], "db": []}
    for k in range(K):
        pre = conv_nd(x[k].double(), bf16(w[k]), b[k].double(), stride, padding)
        refs["y"].append(F.leaky_relu(pre, 0.2) if leaky else pre)
        dpre = torch.where(y[k] > 0, dy[k].float(), dy[k].float() * 0.2) if leaky else dy[k].float()   # fp32
        refs["dx"].append(grad_in(x[k].shape, bf16(w[k]), bf16(dpre), stride, padding))
        refs["dw"].append(grad_w(x[k].double(), w[k].shape, bf16(dpre), stride, padding))
        refs["db"].append(dpre.double().sum(dim=[0, *range(2, dpre.dim())]))
    refs = {name: torch.stack(r) for name, r in refs.items()}
    tol32 = tolerance("fp32", max(cin * math.prod(kernel), cout * math.prod(kernel), x_shape[1] * y[0, 0, 0].numel()))
    assert_stored_close("y", y.detach(), refs["y"], tol32)
    assert_stored_close("dx", xr.grad, refs["dx"], tol32)
    for name, got in (("dw", wr.grad), ("db", br.grad)):
        err = relative_error(got, refs[name])
        assert err <= tol32, f"{name}: relative error {err:.3g} > {tol32:.3g} (fp32 accumulation)"


def test_batched_conv_dtype_errors():
    from vidgan_fast.kernels.batched_conv import conv_forward, conv_input_grad
    x, w, b = torch.zeros(2, 1, 3, 8, 8), torch.zeros(2, 4, 3, 4, 4), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="bias must be float32, got torch.bfloat16"):
        conv_forward(x.to(BF16), w.to(BF16), b.to(BF16), 2, 1, leaky=True)
    with pytest.raises(ValueError, match="out_dtype must be"):
        conv_forward(x, w, b, 2, 1, leaky=True, out_dtype=torch.float16)
    with pytest.raises(ValueError, match="dy must be float32 or bfloat16, got torch.float16"):
        conv_input_grad(torch.zeros(2, 1, 4, 4, 4, dtype=torch.float16), w, x.shape, 2, 1)


# ---- the whole bank against fp64 references that take the bank's LeakyReLU slopes ----

def bank_slopes(monkeypatch):
    """Record the outputs y of the bank's LeakyReLU layers (their sign is the slope the bank's backward takes)."""
    saved = []
    apply = BatchedConv.apply

    def recording(x, w, b, stride, padding, leaky, *rest):
        y = apply(x, w, b, stride, padding, leaky, *rest)
        if leaky:
            saved.append(y.detach())
        return y
    monkeypatch.setattr(bank_module.BatchedConv, "apply", staticmethod(recording))
    return saved


def fp64_with_slopes(bank, x, slopes):
    """The bank's mathematics in fp64 (its weights, the reference projection), LeakyReLU slope from `slopes`."""
    conv = F.conv2d if bank.dims == 2 else F.conv3d
    params = {name: p.detach().double().requires_grad_() for name, p in bank.named_parameters()}
    x = x.double().requires_grad_()
    project = models.project_frames if bank.dims == 2 else models.project_videos
    h = project(x, bank.projections.double()).transpose(0, 1)             # [K, B, ...]
    h = h.unsqueeze(2)
    for i, name in enumerate(bank_module.LAYERS):
        w, b = params[f"{name}_weight"], params[f"{name}_bias"]
        stride, padding = bank.geometry[name]
        h = torch.stack([conv(h[k], w[k], b[k], stride, padding) for k in range(bank.k)])
        if i < len(slopes):
            h = torch.where(slopes[i] > 0, h, 0.2 * h)
    return h.reshape(bank.k, x.shape[0]), x, params


BANK_CASES = [   # kind, k, b, widths, tiles
    ("frame", 1, 1, WIDTHS, "auto"),
    ("frame", 3, 2, (5, 7, 3), "auto"),             # odd widths
    ("frame", 1, 1, (80, 130, 72), "gpu"),          # several GPU tiles per layer
    ("video", 2, 1, WIDTHS, "auto"),
]


@pytest.mark.parametrize("kind,k,b,widths,tiles", BANK_CASES)
def test_bf16_bank_matches_fp64(kind, k, b, widths, tiles, monkeypatch):
    """Logits, input gradient and every weight gradient of a bf16 bank against fp64: layers=4 products on every
    path (a gradient crosses at most the 3 dgrads and 1 wgrad or dgrad of the 4 conv layers; the logits the 4
    forwards); stored: 3 activations for the logits, those and the 3 stored input gradients for the gradients."""
    refs = make_references(kind, k, seed=k + b, widths=widths)
    cls = FrameDiscriminatorBank if kind == "frame" else VideoDiscriminatorBank
    bank = cls.from_reference(list(refs), impl="triton", precision="bf16", tiles=tiles)
    x = make_input(kind, b, seed=k).requires_grad_()
    grad_logits = torch.randn(k, b, generator=torch.Generator().manual_seed(b))
    slopes = bank_slopes(monkeypatch)
    logits = bank(x)
    logits.backward(grad_logits)
    assert logits.dtype == torch.float32 and [s.dtype for s in slopes] == [BF16] * 3
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in bank.parameters())
    logits64, x64, params64 = fp64_with_slopes(bank, x.detach(), slopes)
    logits64.backward(grad_logits.double())
    n = 16 * max(widths) * (4 if kind == "video" else 1)                   # the longest sums (conv3's)
    forward_tol = tolerance("bf16", n, layers=4, stored=3)
    grad_tol = tolerance("bf16", n, layers=4, stored=6)
    err = relative_error(logits, logits64)
    assert err <= forward_tol, f"logits: {err:.3g} > {forward_tol:.3g}"
    for name, got, ref in [("input", x.grad, x64.grad)] + [(n_, p.grad, params64[n_].grad)
                                                              for n_, p in bank.named_parameters()]:
        err = relative_error(got, ref)
        assert err <= grad_tol, f"{name} gradient: {err:.3g} > {grad_tol:.3g}"


def test_bf16_bank_keeps_fp32_master_weights_and_reference_checkpoints():
    """An optimizer step updates the fp32 parameters; the reference state dict is fp32 and equals the parameters;
    the forward leaves the parameters untouched (the bf16 copies are the kernels')."""
    refs = make_references("frame", 2)
    bank = FrameDiscriminatorBank.from_reference(list(refs), impl="triton", precision="bf16")
    before = copy.deepcopy(bank.state_dict())
    opt = torch.optim.RMSprop(bank.parameters(), lr=1e-3)
    bank(make_input("frame", 2)).sum().backward()
    assert all(torch.equal(v, before[key]) for key, v in bank.state_dict().items())
    opt.step()
    assert all(p.dtype == torch.float32 for p in bank.parameters())
    assert not torch.equal(bank.conv2_weight, before["conv2_weight"])
    sd = bank.reference_state_dict()
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert torch.equal(sd["1.conv2.weight"], bank.conv2_weight[1])
