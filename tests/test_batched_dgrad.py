"""The batched input gradient (kernels/batched_conv.py, _conv_dgrad_kernel) against fp64, at the GPU tiles under
the interpreter: sub-pixel residue classes, rows position-major (batch fastest), and per tile a reduction over
only its tap box (the taps that reach an in-range output for some row of the tile).

Shapes: the layers of both discriminators at multi-tile widths (2-3 channel tiles of 64 each way, several row
tiles so that tiles have different boxes), and odd geometries the architectures do not use (kernel not a multiple
of the stride, stride 3, padding 2 with a 3-tap kernel, one output channel, batch 1).
What it catches (each tried by breaking the kernel on purpose; each made this file fail):
a wrong phase offset (r_d = c_d % SD, the padding dropped), a tap box one tap too narrow (count hi - lo instead of
hi - lo + 1), a box that starts one tap late (lo from O - 2 instead of O - 1).
"""
import pytest
import torch

import torch.nn.functional as F

from vidgan_fast.kernels.batched_conv import conv_input_grad
from vidgan_fast.tolerance import relative_error, tolerance

CASES = [   # x shape [K, B, Cin, (D,) H, W], (Cout, kernel), stride, padding
    ((1, 3, 66, 7, 3, 3), (40, (4, 4, 4)), (1, 1, 1), (0, 1, 1)),      # D_V conv3: out 4x2x2, most taps are border
    ((1, 2, 66, 9, 4, 4), (36, (4, 4, 4)), (2, 1, 1), (1, 1, 1)),      # D_V conv2: strided in depth only
    ((1, 5, 70, 4, 2, 2), (1, (4, 4, 4)), (1, 1, 1), (0, 1, 1)),       # D_V conv4: one output channel, out 1x1x1
    ((2, 3, 20, 15, 15), (33, (4, 4)), (2, 2), (2, 2)),                # D_F conv1-like, odd size
    ((1, 9, 80, 4, 4), (130, (4, 4)), (2, 2), (1, 1)),                 # D_F conv3: 9 positions per tile row block
    ((1, 2, 17, 7, 6), (5, (3, 3)), (2, 2), (0, 2)),                   # kernel 3, stride 2: a class with 1 tap
    ((2, 1, 5, 11, 10), (7, (4, 4)), (3, 2), (1, 0)),                  # stride 3, batch 1
    ((1, 2, 3, 5, 3, 4), (2, (3, 4, 4)), (1, 2, 1), (0, 1, 2)),        # 3D, mixed strides, padding 2
]


def reference(dy, w, x_shape, stride, padding, y):
    """fp64 dx of y = act(conv(x, w) + b) per discriminator (torch.nn.grad), act' from the sign of y if given."""
    grad_in = torch.nn.grad.conv2d_input if len(x_shape) == 5 else torch.nn.grad.conv3d_input
    dpre = dy if y is None else torch.where(y > 0, dy, dy * 0.2)
    return torch.stack([grad_in(x_shape[1:], w[k].double(), dpre[k].double(), stride, padding)
                        for k in range(x_shape[0])])


@pytest.mark.parametrize("leaky", [True, False])
@pytest.mark.parametrize("x_shape,conv,stride,padding", CASES)
def test_dgrad_matches_fp64_at_gpu_tiles(x_shape, conv, stride, padding, leaky):
    gen = torch.Generator().manual_seed(sum(x_shape) + leaky)
    cout, kernel = conv
    K, _, cin = x_shape[:3]
    x = torch.randn(x_shape, generator=gen)
    w = torch.randn((K, cout, cin, *kernel), generator=gen)
    conv = F.conv2d if x.dim() == 5 else F.conv3d
    y = torch.stack([F.leaky_relu(conv(x[k], w[k], None, stride, padding), 0.2) for k in range(K)])
    dy = torch.randn(y.shape, generator=gen)
    dx = conv_input_grad(dy, w, x.shape, stride, padding, y if leaky else None, tiles="gpu")
    ref = reference(dy, w, x_shape, stride, padding, y if leaky else None)
    taps = cout * torch.tensor(kernel).prod().item()
    assert dx.shape == ref.shape
    assert relative_error(dx, ref) <= tolerance("fp32", taps), relative_error(dx, ref)


def test_dgrad_interpreter_tiles_equal_gpu_tiles():
    """One row tile (interpreter tiles: the whole class) and several (GPU tiles) sum the same taps."""
    x_shape, (cout, kernel), stride, padding = CASES[0]
    gen = torch.Generator().manual_seed(3)
    w = torch.randn((x_shape[0], cout, x_shape[2], *kernel), generator=gen)
    dy = torch.randn((x_shape[0], x_shape[1], cout, 4, 2, 2), generator=gen)
    a = conv_input_grad(dy, w, x_shape, stride, padding, tiles="gpu")
    b = conv_input_grad(dy, w, x_shape, stride, padding, tiles="interpreter")
    assert relative_error(a, b.double()) <= tolerance("fp32", cout * 64)
