"""Roofline model of the training steps: FLOPs (nominal and as the GPU tiles execute them), bytes moved, and the
floor max(FLOPs / matrix rate, bytes / memory bandwidth) on named devices. Static: no GPU, no kernel launch.

    steps = step_models(preset("paper"))            # 4 Step objects, each a list of Op
    floor(steps[0], DEVICES["h100"], "tf32")        # {"compute_s", "memory_s", "floor_s", "serial_s", ...}
    vidgan bench --static [--preset paper] [--device-model h100 ...]   (vidgan_fast/roofline_report.py)

What an Op counts (per launch; `calls` launches of it per step):
- nominal: flops.py's conventions and hand formulas (2 FLOPs per multiply-add, every kernel tap of every output,
  biases/activations/losses/optimizer not counted). Per step, the nominal total equals flops.phase*_step_flops
  (tests/test_roofline.py checks it on the meta-device models).
- executed: what the chosen GPU tiles issue. A Triton program runs every tl.dot of its tile whatever the masks
  say, so executed = 2 * (programs * BLOCK_M * BLOCK_N) * (reduction steps * BLOCK_R): M, N and the reduction are
  padded to tile multiples (a dimension of 1 takes a 16-block, any other the full GPU tile: kernels/common.tile);
  the sub-pixel dgrad pads each residue class to ceil(size / stride) positions, and each row tile reduces over
  its tap box only (dgrad_tap_boxes) times Cout, padded to BLOCK_R: it (and conv4, logit_ops) can execute fewer
  FLOPs than the nominal count, which includes the padding taps. Tiles: the kernels' GPU_TILES (read_constant).
  PyTorch ops (phase 1's trained G_F, G_V): executed = nominal, cuDNN/cuBLAS tiling not modelled (an under-estimate).
- unit: "mma" ops run at the run's matrix precision (fp32 = exact fp32 FMA, tf32, bf16); "fp32" ops use CUDA
  cores whatever the precision (FMA reductions, not tl.dot: projection backward, G_F's last layer, logit_ops).
- bytes: compulsory DRAM traffic: each operand read once, each result written once (tile re-reads assumed to hit
  L2; a floor, not a prediction), 4 bytes per element, except under precision "bf16", where the banks and the
  frozen G_F store in bf16 (fast/bank.py, fast/frozen_generator.py): 2 bytes per element of the activations
  between their layers, of the input gradients between their layers and of every weight read; still 4 bytes: the
  bank's projection output and logits (and their gradients), the codes, frames and code gradient of the frozen G_F,
  biases, weight gradients and the optimizer's passes (fp32 master weights). The banks' bf16 weight copies are
  written by the D step's fused RMSprop as it updates the weights (2 B more per weight, fast/weight_copy.py), so no
  step casts a weight; the frozen G_F packs its bf16 weights once, outside the steps. The PyTorch modules (phase
  1's G_F, G_V) are counted at 4 bytes whatever the precision (autocast's own copies are not modelled). Not
  counted: batch norm / ReLU / tanh passes of the PyTorch modules, the LSTM's gate buffers, loss tensors,
  .contiguous() copies (all activation-sized and small next to the bank weights at the paper preset; an
  under-estimate).
- optimizer: torch.optim.RMSprop's foreach path (the default on CUDA; plain float lr, no momentum, not centered),
  read in torch/optim/rmsprop.py _multi_tensor_rmsprop: mul_(v) 2 passes, addcmul_(v, g, g) 3, sqrt(v) 2,
  add_(avg, eps) 2, addcdiv_(p, g, avg) 4 = 13 parameter-sized passes, for the generators. The banks (--fast) use
  the fused RMSprop (fast/rmsprop.py): read w, g, v, write w, v = 5 passes. A D step runs the bank once on the
  [2B] batch of real and generated samples (step.d_step): one weight read per pass, one weight gradient.
"""
from __future__ import annotations

import ast
import importlib.util
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from vidgan_fast.roofline_devices import DEVICES, Device  # noqa: F401  (the device table, re-exported)

F32 = 4                       # bytes per fp32 element
BF16 = 2                      # bytes per bf16 element: the banks' and frozen G_F's storage under precision "bf16"
Z_DIM, FRAMES, STEP_DIM = 100, 30, 128     # train.Z_DIM, train.FRAMES, VideoGenerator's default step_dim
RMSPROP_PASSES = 13           # foreach RMSprop, see the module docstring
FUSED_RMSPROP_PASSES = 5      # read w, g, v; write w, v

# Layer geometry of the banks, (stride, padding) per layer as fast/bank.py's *Bank.geometry (a test checks).
DF_GEOMETRY = {"conv1": ((2, 2), (2, 2)), "conv2": ((2, 2), (1, 1)), "conv3": ((2, 2), (1, 1)),
               "conv4": ((1, 1), (1, 1))}
DV_GEOMETRY = {"conv1": ((2, 2, 2), (1, 1, 1)), "conv2": ((2, 1, 1), (1, 1, 1)),
               "conv3": ((1, 1, 1), (0, 1, 1)), "conv4": ((1, 1, 1), (0, 1, 1))}
GF_PADDING = (1, 1, 1, 2)     # up1..up3, out (fast/frozen_generator.UP_PADDING)

# ----------------------------------------------------------------------------------------------- tiles

def read_constant(module: str, name: str):
    """The literal value of `name = ...` at the top level of a kernel module, read from its source file (installed,
    or kernels/ of a source tree) without importing it: the static model runs where Triton is not installed."""
    tree = ast.parse(Path(importlib.util.find_spec(f"vidgan_fast.kernels.{module}").origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "dict":
                return {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords}
            return ast.literal_eval(node.value)
    raise KeyError(f"roofline: no constant {name} in {module}.py")


def gpu_tile(n: int, cap: int) -> int:
    """kernels/common.tile(n, cap, gpu=True): 16 for a dimension of 1 (tl.dot's minimum), else the full tile."""
    return 16 if n == 1 else cap


def pow2_block(n: int, cap: int) -> int:
    """kernels/common.block: a power of two holding n, at least 16, at most cap."""
    return max(16, min(cap, 1 << max(0, n - 1).bit_length()))


def padded(n: int, block: int) -> int:
    return -(-n // block) * block


# ----------------------------------------------------------------------------------------------- ops

@dataclass
class Op:
    name: str
    nominal: int              # FLOPs per call (flops.py conventions)
    executed: int             # FLOPs per call the GPU tiles issue
    bytes: int                # compulsory DRAM bytes per call
    unit: str = "mma"         # "mma": at the run's precision; "fp32": CUDA cores
    impl: str = "triton"      # "triton", "torch" (executed = nominal) or "memory" (elementwise passes)
    calls: int = 1
    note: str = ""


@dataclass
class Step:
    name: str
    ops: list

    def total(self, attr: str) -> int:
        return sum(getattr(op, attr) * op.calls for op in self.ops)


def storage_bytes(precision: str) -> int:
    """Bytes per element of what the banks and the frozen G_F store (activations, input gradients, weight reads)."""
    return BF16 if precision == "bf16" else F32


def conv_ops(tag: str, k: int, b: int, cin: int, cout: int, in_size, stride, padding, leaky: bool,
             passes=("forward", "dgrad", "wgrad"), calls: int = 1, x_bytes: int = F32, y_bytes: int = F32,
             w_bytes: int = F32) -> list[Op]:
    """kernels/batched_conv.py: K discriminators' layer in one launch per pass, 2D as 3D with D = kd = 1.
    x_bytes: per element of x and dx (dx takes x's dtype); y_bytes: of y and dy; w_bytes: of the weight read by
    the forward and the dgrad. Bias reads and the weight and bias gradients are fp32."""
    from vidgan_fast.flops import conv_flops
    tiles = read_constant("batched_conv", "GPU_TILES")
    kern = (4,) * len(in_size)
    if len(in_size) == 2:
        in_size, stride, padding, kern = (1, *in_size), (1, *stride), (0, *padding), (1, *kern)
    out = tuple((i + 2 * p - kk) // s + 1 for i, kk, s, p in zip(in_size, kern, stride, padding))
    kvol, in_vol, out_vol = math.prod(kern), math.prod(in_size), math.prod(out)
    nominal = conv_flops(k * b, cin, cout, kern, out)
    if cout == 1 and out_vol == 1:                  # the logit layer: kernels/logit.py
        return logit_ops(tag, k, b, cin, in_size, kern, nominal, leaky, passes, calls, x_bytes, y_bytes, w_bytes)
    x, w, bias, y = b * cin * in_vol, cout * cin * kvol, cout, b * cout * out_vol
    dy_reads = y * (2 if leaky else 1)              # dy, and y for LeakyReLU' (read from the sign of y)
    x, w_read, w_grad, y, bias, dy_reads = (x * x_bytes, w * w_bytes, w * F32, y * y_bytes, bias * F32,
                                            dy_reads * y_bytes)       # in bytes from here on
    ops = []
    for p in passes:
        bm, bn, br, _warps = tiles[p]
        if p == "forward":
            m, n, r, groups = b * out_vol, cout, cin * kvol, 1
            io = x + w_read + bias + y
        elif p == "dgrad":          # sub-pixel classes, row tiles, each reducing over its own tap box only
            groups = math.prod(stride)
            m = b * math.prod(-(-i // s) for i, s in zip(in_size, stride))
            n, r = cin, cout * math.prod(-(-kk // s) for kk, s in zip(kern, stride))
            io = dy_reads + w_read + x
            boxes = dgrad_tap_boxes(b, in_size, kern, stride, padding, out, gpu_tile(m, bm))
            bn, br = gpu_tile(n, bn), gpu_tile(r, br)
            executed = 2 * k * gpu_tile(m, bm) * padded(n, bn) * sum(padded(t * cout, br) for t in boxes)
            ops.append(Op(f"{tag} {p}", nominal, executed, k * io, calls=calls,
                          note=f"M {m} x{groups} classes in {len(boxes)} tiles, N {n}->{padded(n, bn)}, "
                               f"R {r} -> tap boxes of {min(boxes)}-{max(boxes)} taps x {cout}"))
            continue
        else:
            m, n, r, groups = cout, cin * kvol, b * out_vol, 1
            io = dy_reads + x + w_grad + bias
        bm, bn, br = gpu_tile(m, bm), gpu_tile(n, bn), gpu_tile(r, br)
        executed = 2 * k * groups * padded(m, bm) * padded(n, bn) * padded(r, br)
        ops.append(Op(f"{tag} {p}", nominal, executed, k * io, calls=calls,
                      note=f"M {m}->{padded(m, bm)}{f' x{groups} classes' if groups > 1 else ''}, "
                           f"N {n}->{padded(n, bn)}, R {r}->{padded(r, br)}"))
    return ops


def logit_ops(tag: str, k: int, b: int, cin: int, in_size, kern, nominal: int, leaky: bool, passes, calls,
              x_bytes: int = F32, y_bytes: int = F32, w_bytes: int = F32):
    """kernels/logit.py (conv4: Cout 1, one output position): GEMVs, fp32 FMA on CUDA cores, no tile padding; an
    input element meets one tap: executed = 2 K B Cin x input positions (< nominal, which counts padding taps).
    Bytes per element as in conv_ops (x and dx x_bytes, y and dy y_bytes, weight reads w_bytes; dw, db fp32)."""
    row, dy = cin * math.prod(in_size), b * (2 if leaky else 1)    # R: a sample's input row = weight taps read
    x, w = b * row * x_bytes, cin * math.prod(kern)
    dy, y = dy * y_bytes, b * y_bytes
    io = {"forward": x + row * w_bytes + F32 + y, "dgrad": dy + row * w_bytes + x, "wgrad": dy + x + (w + 1) * F32}
    return [Op(f"{tag} {p}", nominal, 2 * k * b * row, k * io[p], unit="fp32", calls=calls,
               note=f"logit GEMV: {b} rows x R {row}, fp32 FMA, no padding") for p in passes]


def dgrad_tap_boxes(b: int, size, kern, stride, pad, out, bm: int) -> list[int]:
    """kernels/batched_conv.py's dgrad, one entry per (residue class, row tile): the taps in the tile's tap box.
    Rows of a class are (u_d, u_h, u_w, b), batch fastest, input position i = c + S * u; per dimension the box
    holds the class's taps kk = r + S * j (j < ceil(kernel / S)) that reach an output in [0, out) from some valid
    row of the tile (the kernel's _tap_range)."""
    boxes = []
    for cls in itertools.product(*(range(s) for s in stride)):
        grid = list(itertools.product(*(range(-(-i // s)) for i, s in zip(size, stride))))   # u, row-major
        for t0 in range(0, b * len(grid), bm):
            pos = [[c + s * v for c, s, v in zip(cls, stride, u)] for u in grid[t0 // b:-(-(t0 + bm) // b)]]
            pos = [p for p in pos if all(i < n for i, n in zip(p, size))]
            box = 1 if pos else 0
            for dim, (c, kk, s, p, o) in enumerate(zip(cls, kern, stride, pad, out)):
                r, coords = (c + p) % s, [q[dim] for q in pos] or [0]
                lo, hi = max((min(coords) + p - r) // s - (o - 1), 0), min((max(coords) + p - r) // s, -(-kk // s) - 1)
                box *= max(hi - lo + 1, 0)
            boxes.append(box)
    return boxes


def projection_ops(tag: str, k: int, images: int, video: bool, backward: bool, calls: int = 1) -> list[Op]:
    """kernels/projection.py: K fixed 8x8 filters on `images` 30x30 images (frames, or every frame of videos)."""
    from vidgan_fast import flops
    geo = flops.VIDEO_PROJ if video else flops.FRAME_PROJ
    ks, size = flops.PROJ_KERNEL, flops.FRAME_SIZE
    o = flops.conv_out(size, ks, geo["stride"], geo["padding"])
    block_p, max_k, _ = read_constant("projection", "GPU_TILES")
    taps = 1 << (ks * ks - 1).bit_length()
    nominal = flops.conv_flops(k * images, 1, 1, (ks, ks), (o, o))
    io = images * size * size + k * ks * ks + k * images * o * o
    ops = [Op(f"{tag} forward", nominal, 2 * padded(images * o * o, block_p) * taps * padded(k, pow2_block(k, max_k)),
              F32 * io, calls=calls, note=f"{k} filters -> {padded(k, pow2_block(k, max_k))}, {ks * ks} taps")]
    if backward:   # gather over (projection, tap) for every input pixel, tl.sum on CUDA cores
        ops.append(Op(f"{tag} backward", nominal, 2 * padded(images * size * size, block_p) * k * taps, F32 * io,
                      unit="fp32", calls=calls, note=f"every input pixel x {taps} taps (stride {geo['stride']})"))
    return ops


def torch_layer_ops(tag: str, kind: str, flops: int, x: int, w: int, y: int, dgrad: bool, wgrad: bool,
                    forward: bool = True) -> list[Op]:
    """A PyTorch layer (cuDNN/cuBLAS): executed = nominal; bytes: input, weights, output once per pass."""
    ops = [Op(f"{tag} forward", flops, flops, F32 * (x + w + y), impl="torch", note=kind)] if forward else []
    if dgrad:
        ops.append(Op(f"{tag} dgrad", flops, flops, F32 * (y + w + x), impl="torch", note=kind))
    if wgrad:
        ops.append(Op(f"{tag} wgrad", flops, flops, F32 * (y + x + w), impl="torch", note=kind))
    return ops


def frame_generator_torch(cfg, b: int, train: bool) -> list[Op]:
    """G_F as the reference nn.Module (phase 1: it trains): dense + 4 transposed convolutions."""
    from vidgan_fast.flops import conv_transpose_flops, linear_flops
    c0, *_ = cfg.gf_widths
    ops = torch_layer_ops("G_F fc", "Linear", linear_flops(b, Z_DIM, 4 * c0), b * Z_DIM, Z_DIM * 4 * c0 + 4 * c0,
                          b * 4 * c0, dgrad=False, wgrad=train)
    for name, cin, cout, h, pad in _gf_layers(cfg):
        o = 2 * h + 2 - 2 * pad
        ops += torch_layer_ops(f"G_F {name}", "ConvTranspose2d", conv_transpose_flops(b, cin, cout, (4, 4), (h, h)),
                               b * cin * h * h, 16 * cin * cout + cout, b * cout * o * o, dgrad=train, wgrad=train)
    return ops


def _gf_layers(cfg):
    """(name, Cin, Cout, input size, padding) of G_F's transposed convolutions (k4, s2)."""
    c0, c1, c2, c3 = cfg.gf_widths
    return [("up1", c0, c1, 2, 1), ("up2", c1, c2, 4, 1), ("up3", c2, c3, 8, 1), ("out", c3, 1, 16, 2)]


def frame_generator_frozen(cfg, m: int, backward: bool, precision: str = "fp32") -> list[Op]:
    """Phase 2's frozen G_F (kernels/frame_generator.py) on m frames; backward = the code gradient only.
    Activations, input gradients and weights at storage_bytes(precision); codes, frames, code gradient, biases fp32."""
    from vidgan_fast.flops import conv_transpose_flops, linear_flops
    t = read_constant("frame_generator", "GPU_TILES")
    bm, nmax, kmax = t["BLOCK_M"], t["MAX_BLOCK_N"], t["MAX_BLOCK_K"]
    a = storage_bytes(precision)
    c0 = cfg.gf_widths[0]
    lin = linear_flops(m, Z_DIM, 4 * c0)
    ops = [Op("G_F dense forward", lin, 2 * padded(m, bm) * padded(4 * c0, gpu_tile(4 * c0, nmax))
              * padded(Z_DIM, gpu_tile(Z_DIM, kmax)), F32 * (m * Z_DIM + 4 * c0) + a * (Z_DIM * 4 * c0 + m * 4 * c0))]
    back = []
    for name, cin, cout, h, pad in _gf_layers(cfg):
        o = 2 * h + 2 - 2 * pad
        nominal = conv_transpose_flops(m, cin, cout, (4, 4), (h, h))
        rows, red = m * (o // 2) ** 2, 4 * cin            # per phase (4 phases), 2x2 taps x Cin
        x, w, y = m * h * h * cin, 16 * cin * cout, m * o * o * cout
        if cout == 1:        # tanh layer: a GEMV with tl.sum, CUDA cores
            ex = 2 * 4 * padded(rows, bm) * padded(red, gpu_tile(red, kmax))
            ops.append(Op(f"G_F {name} forward (tanh)", nominal, ex, a * (x + w) + F32 * (1 + y), unit="fp32",
                          note="tl.sum GEMV; cropped-border taps not executed"))
        else:
            ex = 2 * 4 * padded(rows, bm) * padded(cout, gpu_tile(cout, nmax)) * padded(red, gpu_tile(red, kmax))
            ops.append(Op(f"G_F {name} forward", nominal, ex, a * (x + w + y) + F32 * cout, note="4 sub-pixel phases"))
        if backward:         # gather form: every input position x 16 taps x Cout; reads the ReLU mask h (= x)
            ex = 2 * padded(m * h * h, bm) * padded(cin, gpu_tile(cin, nmax)) * padded(16 * cout,
                                                                                     gpu_tile(16 * cout, kmax))
            dy = F32 * 2 * y if cout == 1 else a * y      # the frames' gradient and tanh output are fp32
            back.append(Op(f"G_F {name} dgrad", nominal, ex, dy + a * (w + 2 * x)))
    if backward:
        ex = 2 * padded(m, bm) * padded(Z_DIM, gpu_tile(Z_DIM, nmax)) * padded(4 * c0, gpu_tile(4 * c0, kmax))
        back.append(Op("G_F dense dgrad", lin, ex, a * (m * 4 * c0 + 4 * c0 * Z_DIM) + F32 * m * Z_DIM))
    return ops + back[::-1]


def video_generator_torch(cfg, b: int, train: bool) -> list[Op]:
    """G_V (PyTorch): dense stack (no biases), 2-layer bidirectional LSTM, to_code; forward and (train) backward."""
    from vidgan_fast.flops import linear_flops, lstm_flops
    dims, fwd, bwd = [Z_DIM, *cfg.gv_hidden, FRAMES * STEP_DIM], [], []
    for i, (a, c) in enumerate(zip(dims[:-1], dims[1:])):
        ops = torch_layer_ops(f"G_V dense{i}", "Linear", linear_flops(b, a, c), b * a, a * c, b * c,
                              dgrad=train and i > 0, wgrad=train)
        fwd.append(ops[0])
        bwd = ops[1:] + bwd
    h, width = cfg.gv_lstm, STEP_DIM
    for layer in range(2):
        w = 2 * (4 * h * (width + h) + 8 * h)
        ops = torch_layer_ops(f"G_V lstm{layer}", "LSTM", lstm_flops(FRAMES, b, width, h, 1, True),
                              FRAMES * b * width, w, FRAMES * b * 2 * h, dgrad=train, wgrad=train)
        fwd.append(ops[0])
        bwd = ops[1:] + bwd
        width = 2 * h
    ops = torch_layer_ops("G_V to_code", "Linear", linear_flops(FRAMES * b, 2 * h, Z_DIM), FRAMES * b * 2 * h,
                          2 * h * Z_DIM + Z_DIM, FRAMES * b * Z_DIM, dgrad=train, wgrad=train)
    return fwd + [ops[0]], ops[1:] + bwd


def bank_params(widths, dims: int, biases: bool = True) -> int:
    channels = (1, *widths, 1)
    return sum(co * ci * 4 ** dims + co * biases for ci, co in zip(channels[:-1], channels[1:]))


def frame_generator_params(cfg) -> int:
    c0 = cfg.gf_widths[0]
    return Z_DIM * 4 * c0 + 3 * 4 * c0 + sum(16 * ci * co + co * (3 if co > 1 else 1) for _, ci, co, _, _ in
                                             _gf_layers(cfg))


def video_generator_params(cfg) -> int:
    dims = [Z_DIM, *cfg.gv_hidden, FRAMES * STEP_DIM]
    h = cfg.gv_lstm
    lstm = 2 * (4 * h * (STEP_DIM + h) + 8 * h) + 2 * (4 * h * (2 * h + h) + 8 * h)
    return sum(a * c + 2 * c for a, c in zip(dims[:-1], dims[1:])) + lstm + 2 * h * Z_DIM + Z_DIM


def optimizer_ops(tag: str, params: int, fused: bool, copies: int = 0) -> list[Op]:
    """RMSprop over `params` parameters: the fused kernel (the banks; it also writes `copies` bf16 weight copies)
    or torch's foreach ops (the generators)."""
    passes, kind = (FUSED_RMSPROP_PASSES, "fused") if fused else (RMSPROP_PASSES, "foreach")
    note = f"{params / 1e6:.1f}M params x {passes} passes" + (f", {copies / 1e6:.1f}M bf16 copies" if copies else "")
    return [Op(f"{tag} RMSprop ({kind})", 0, 0, F32 * passes * params + BF16 * copies, impl="memory", note=note)]


def bank_ops(tag: str, cfg, phase: int, b: int, d_step: bool, precision: str = "fp32") -> list[Op]:
    """The K discriminators: projection, conv1..conv4 forward and backward (a D step: one pass over the 2b
    real and generated samples). Under bf16: weights read as bf16, bf16 between the layers (storage_bytes)."""
    k = cfg.frames_k if phase == 1 else cfg.video_k
    widths, geo = (cfg.df_widths, DF_GEOMETRY) if phase == 1 else (cfg.dv_widths, DV_GEOMETRY)
    calls = 1
    b = 2 * b if d_step else b
    images = b if phase == 1 else b * FRAMES
    ops = projection_ops(f"{tag} projection", k, images, video=phase == 2, backward=not d_step, calls=calls)
    size = (15, 15) if phase == 1 else (FRAMES, 9, 9)
    channels = (1, *widths, 1)
    a = storage_bytes(precision)
    fwd, back = [], []
    for i, name in enumerate(geo):
        stride, pad = geo[name]
        passes = ("dgrad", "wgrad") if d_step else ("dgrad",)
        if d_step and i == 0:
            passes = ("wgrad",)                            # conv1's input (the projection) needs no gradient
        layer = conv_ops(f"{tag} {name}", k, b, channels[i], channels[i + 1], size, stride, pad, leaky=i < 3,
                         passes=("forward", *passes), calls=calls, x_bytes=F32 if i == 0 else a,
                         y_bytes=F32 if i == len(geo) - 1 else a, w_bytes=a)   # projection and logits: fp32
        fwd.append(layer[0])
        back = layer[1:] + back
        kern = (4,) * len(size)
        size = tuple((s + 2 * p - kk) // st + 1 for s, kk, st, p in zip(size, kern, stride, pad))
    return [*ops[:1], *fwd, *back, *ops[1:]]


# ----------------------------------------------------------------------------------------------- steps

def step_models(cfg, precision: str | None = None) -> list[Step]:
    """The four training steps of `cfg` (a TrainConfig) as lists of ops, in execution order; bytes as stored
    under `precision` (default: cfg's)."""
    precision = precision or cfg.precision
    b1, b2, k1, k2 = cfg.frames_batch, cfg.video_batch, cfg.frames_k, cfg.video_k
    d1, d2 = k1 * bank_params(cfg.df_widths, 2), k2 * bank_params(cfg.dv_widths, 3)
    c1, c2 = (k1 * bank_params(cfg.df_widths, 2, False), k2 * bank_params(cfg.dv_widths, 3, False)) \
        if storage_bytes(precision) != F32 else (0, 0)          # the bf16 weight copies the fused RMSprop writes
    gv_fwd, _ = video_generator_torch(cfg, b2, train=False)
    gv_train_fwd, gv_bwd = video_generator_torch(cfg, b2, train=True)
    g_f_fwd, g_f_bwd = _split(frame_generator_torch(cfg, b1, train=True))
    r_fwd, r_bwd = _split(frame_generator_frozen(cfg, b2 * FRAMES, backward=True, precision=precision))
    return [
        Step(f"phase 1 D step (K={k1}, B={b1})",
             frame_generator_torch(cfg, b1, train=False) + bank_ops("D_F", cfg, 1, b1, True, precision)
             + optimizer_ops("D_F bank", d1, fused=True, copies=c1)),
        Step(f"phase 1 G step (K={k1}, B={b1})",
             g_f_fwd + bank_ops("D_F", cfg, 1, b1, False, precision) + g_f_bwd[::-1]
             + optimizer_ops("G_F", frame_generator_params(cfg), fused=False)),
        Step(f"phase 2 D step (K={k2}, B={b2})",
             gv_fwd + frame_generator_frozen(cfg, b2 * FRAMES, backward=False, precision=precision)
             + bank_ops("D_V", cfg, 2, b2, True, precision)
             + optimizer_ops("D_V bank", d2, fused=True, copies=c2)),
        Step(f"phase 2 G step (K={k2}, B={b2})",
             gv_train_fwd + r_fwd + bank_ops("D_V", cfg, 2, b2, False, precision) + r_bwd
             + gv_bwd + optimizer_ops("G_V", video_generator_params(cfg), fused=False)),
    ]


def _split(ops: list[Op]) -> tuple[list[Op], list[Op]]:
    """(forward ops, backward ops), each in the given order."""
    fwd = [op for op in ops if " forward" in op.name]
    return fwd, [op for op in ops if " forward" not in op.name]


def op_floor(op: Op, device: Device, precision: str) -> float:
    """Seconds for all of the op's calls: max(executed FLOPs / rate, bytes / bandwidth)."""
    return op.calls * max(op.executed / device.rate(op.unit, precision), op.bytes / (device.bandwidth * 1e9))


def floor(step: Step, device: Device, precision: str = "tf32") -> dict:
    """The step's roofline on `device`: compute_s = sum of executed FLOPs over their rates, memory_s = bytes over
    the bandwidth, floor_s = max of the two (perfect overlap of compute and traffic across the whole step),
    serial_s = the sum of per-op floors (each kernel alone, no overlap between kernels: still a lower bound of a
    step that launches them one after the other)."""
    compute = sum(op.calls * op.executed / device.rate(op.unit, precision) for op in step.ops)
    nominal = sum(op.calls * op.nominal / device.rate(op.unit, precision) for op in step.ops)
    memory = step.total("bytes") / (device.bandwidth * 1e9)
    return {"step": step.name, "device": device.key, "precision": precision,
            "nominal_flops": step.total("nominal"), "executed_flops": step.total("executed"),
            "bytes": step.total("bytes"), "nominal_compute_s": nominal, "compute_s": compute, "memory_s": memory,
            "floor_s": max(compute, memory), "bound": "memory" if memory >= compute else "compute",
            "serial_s": sum(op_floor(op, device, precision) for op in step.ops)}
