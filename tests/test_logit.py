"""The logit-layer kernels (kernels/logit.py: conv4 of both discriminators as a batched GEMV) against fp64, through
the launch wrappers of kernels/batched_conv.py, which route every Cout = 1, one-output-position layer there.

Shapes: both discriminators' conv4 geometry (2D 2x2 input with padding 1, 3D 4x2x2 with padding (0, 1, 1)) at
odd K, B and Cin, rows of x long enough to span several 512-element blocks with a partial last one (at the GPU
tiles), a kernel that covers its input exactly (padding 0: dw written by the kernel alone), and a strided one
that leaves input elements without a tap. Bounds: vidgan_fast.tolerance's fp32 bound for the length of each sum
(forward: the row, R = Cin x input positions; wgrad: the batch; dgrad: one product).
What it catches (each tried by breaking kernels/logit.py on purpose, 2026-12-03; each made the first GPU-tile case
fail): the forward without its bias (y off by 0.75), the x load without its column mask (the last partial block
reads the next row: NaN), the wgrad's batch mask widened by one row (db off by 0.55), the tap offset without its
padding along W (y off by 1.1).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from vidgan_fast.kernels.autotune import forcing
from vidgan_fast.kernels.batched_conv import conv_forward, conv_input_grad, conv_weight_grad
from vidgan_fast.kernels.logit import CANDIDATES, GPU_TILES, is_logit_layer, logit_forward
from vidgan_fast.tolerance import relative_error, tolerance

CASES = [   # x shape [K, B, Cin, (D,) H, W], kernel, stride, padding
    ((3, 5, 301, 2, 2), (4, 4), (1, 1), (1, 1)),             # D_F conv4: R = 1204, 3 blocks of 512 at GPU tiles
    ((2, 3, 71, 4, 2, 2), (4, 4, 4), (1, 1, 1), (0, 1, 1)),  # D_V conv4: R = 1136
    ((1, 9, 33, 4, 4), (4, 4), (1, 1), (0, 0)),              # exact cover: every tap meets an input element
    ((2, 1, 7, 5, 5), (4, 4), (2, 2), (0, 0)),               # stride 2: row and column 4 meet no tap; batch 1
]


def reference(x, w, b, stride, padding, leaky, dy):
    """fp64 y, dx, dw, db of y = act(conv(x[k], w[k]) + b[k]) per discriminator, by autograd."""
    conv = F.conv2d if x.dim() == 5 else F.conv3d
    x, w, b = (t.double().requires_grad_() for t in (x, w, b))
    y = torch.stack([conv(x[k], w[k], b[k], stride, padding) for k in range(x.shape[0])])
    y = F.leaky_relu(y, 0.2) if leaky else y
    y.backward(dy.double())
    return y.detach(), x.grad, w.grad, b.grad


def inputs(x_shape, kernel, seed):
    gen = torch.Generator().manual_seed(seed)
    K, B, cin = x_shape[:3]
    x = torch.randn(x_shape, generator=gen)
    w = torch.randn((K, 1, cin, *kernel), generator=gen) / math.sqrt(cin * math.prod(kernel))
    b = torch.randn((K, 1), generator=gen)
    dy = torch.randn((K, B, 1, *(1,) * len(kernel)), generator=gen)
    return x, w, b, dy


def run_layer(x, w, b, stride, padding, leaky, dy, tiles, precision="fp32"):
    y = conv_forward(x, w, b, stride, padding, leaky, precision, tiles)
    saved = y if leaky else None
    dx = conv_input_grad(dy, w, x.shape, stride, padding, saved, precision, tiles)
    dw, db = conv_weight_grad(dy, x, w.shape, stride, padding, saved, precision, tiles)
    return y, dx, dw, db


def check(x_shape, kernel, stride, padding, leaky, tiles, seed=0):
    x, w, b, dy = inputs(x_shape, kernel, seed)
    got = run_layer(x, w, b, stride, padding, leaky, dy, tiles)
    ref = reference(x, w, b, stride, padding, leaky, dy)
    row = math.prod(x_shape[2:])
    for what, g, r, n in zip(("y", "dx", "dw", "db"), got, ref, (row, 1, x_shape[1], x_shape[1])):
        assert g.shape == r.shape, (what, g.shape, r.shape)
        err = relative_error(g, r)
        assert err <= tolerance("fp32", n), f"{what}: relative error {err:.3g} (tiles {tiles})"


@pytest.mark.parametrize("leaky", [False, True])
@pytest.mark.parametrize("tiles", ["gpu", "interpreter"])
@pytest.mark.parametrize("x_shape,kernel,stride,padding", CASES)
def test_logit_layer_matches_fp64(x_shape, kernel, stride, padding, tiles, leaky):
    check(x_shape, kernel, stride, padding, leaky, tiles, seed=sum(x_shape) + leaky)


@pytest.mark.parametrize("name,candidate", [(n, c) for n, cs in CANDIDATES.items() for c in cs])
def test_every_candidate_tile_matches_fp64(name, candidate):
    """Each tile kernels/autotune.py may pick on a GPU, forced, at the GPU tiling under the interpreter."""
    with forcing(name, candidate):
        check(*CASES[0], leaky=True, tiles="gpu", seed=1)


def test_the_wrappers_route_conv4_to_the_logit_kernels():
    """conv_forward of a logit layer is logit_forward, bit for bit; the fixed tiles are the first candidates."""
    x, w, b, _ = inputs(CASES[1][0], CASES[1][1], 2)
    assert is_logit_layer(1, (1, 1, 1)) and not is_logit_layer(2, (1, 1, 1)) and not is_logit_layer(1, (1, 2))
    y = conv_forward(x, w, b, 1, (0, 1, 1), leaky=False, tiles="gpu")
    direct = logit_forward(x, w, b, (4, 2, 2), (4, 4, 4), (0, 1, 1), False, "fp32", "gpu")
    assert y.shape == (2, 3, 1, 1, 1, 1) and torch.equal(y.flatten(), direct.flatten())
    assert all(GPU_TILES[n.removeprefix("logit_")] == c[0] for n, c in CANDIDATES.items())


def test_bf16_is_bf16_operands_with_fp32_sums():
    """precision 'bf16': every product's operands rounded to bf16 (as the tensor-core layers do), fp32 sums. The
    reference is fp64 on the rounded operands (x, w forward; g, w dgrad; g, x wgrad), so the fp32 bound applies;
    'tf32' has no tl.dot to change here: exact fp32 products."""
    x_shape, kernel, stride, padding = CASES[0]
    x, w, b, dy = inputs(x_shape, kernel, 3)
    y, dx, dw, db = run_layer(x, w, b, stride, padding, True, dy, "gpu", "bf16")
    g = torch.where(y > 0, dy, dy * 0.2)
    r16 = lambda t: t.to(torch.bfloat16).float()                            # noqa: E731
    y64 = reference(r16(x), r16(w), b, stride, padding, True, g)[0]
    _, dx64, _, _ = reference(x, r16(w), b, stride, padding, False, r16(g))
    _, _, dw64, _ = reference(r16(x), w, b, stride, padding, False, r16(g))
    db64 = g.double().sum(dim=1).reshape(db.shape)
    for what, got, ref, n in (("y", y, y64, math.prod(x_shape[2:])), ("dx", dx, dx64, 1), ("dw", dw, dw64, 5),
                              ("db", db, db64, 5)):
        assert relative_error(got, ref) <= tolerance("fp32", n), what
    assert relative_error(y, reference(x, w, b, stride, padding, True, g)[0]) > 1e-4     # the rounding is real
    tf32 = run_layer(x, w, b, stride, padding, True, dy, "gpu", "tf32")
    assert all(torch.equal(a, c) for a, c in zip(tf32, run_layer(x, w, b, stride, padding, True, dy, "gpu")))
