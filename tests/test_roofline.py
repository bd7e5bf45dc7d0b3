"""The roofline model (vidgan_fast/roofline.py) and `vidgan bench --static`: hand counts of one layer (FLOPs, tile
padding, bytes), agreement with flops.py and with the kernels' own tiles and geometry, the floor's definition, the
command's tables. Static: no kernel runs, a few seconds."""
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vidgan_fast import flops as F
from vidgan_fast import roofline as R
from vidgan_fast import step
from vidgan_fast.cli import main
from vidgan_fast.config import PRESETS, preset
from vidgan_fast.models import count_parameters, frame_discriminators, video_discriminators

# ---------------------------------------------------------------------------------------------- one layer by hand


def test_one_conv_layer_by_hand():
    # K=2 discriminators, B=3, 5 -> 7 channels, 4x4 kernel, stride 2, padding 1: 8x8 -> 4x4, LeakyReLU
    fwd, dgrad, wgrad = R.conv_ops("t", 2, 3, 5, 7, (8, 8), (2, 2), (1, 1), leaky=True)
    nominal = 2 * (2 * 3) * 5 * 7 * 16 * (4 * 4)
    assert fwd.nominal == dgrad.nominal == wgrad.nominal == nominal == 107_520
    # forward: M = 3*16 = 48 -> 64, N = 7 -> 64, R = 5*16 = 80 -> 96 (steps of 32), per discriminator
    assert fwd.executed == 2 * 2 * 64 * 64 * 96
    # dgrad (sub-pixel): 4 residue classes of 3 * 4 * 4 = 48 -> 64 positions (one row tile holding all of them, so
    # the tap box is the class's 2 x 2 taps), N = Cin 5 -> 64, R = 7 * 2 * 2 = 28 -> 32
    assert dgrad.executed == 2 * 2 * 4 * 64 * 64 * 32
    # wgrad: M = Cout 7 -> 64, N = 5*16 = 80 -> 128, R = 3*16 = 48 -> 64
    assert wgrad.executed == 2 * 2 * 64 * 128 * 64
    x, w, b, y = 3 * 5 * 64, 7 * 5 * 16, 7, 3 * 7 * 16
    assert fwd.bytes == 4 * 2 * (x + w + b + y)
    assert dgrad.bytes == 4 * 2 * (2 * y + w + x)          # dy and y (LeakyReLU' from the sign of y), w; writes dx
    assert wgrad.bytes == 4 * 2 * (2 * y + x + w + b)      # dy, y, x; writes dw and db


def test_the_logit_layer_executes_its_covered_taps_on_cuda_cores():
    """conv4 (Cout 1, one output position) runs kernels/logit.py: fp32 FMA GEMVs, no N = 1 -> 16 padding (it was 16x
    the nominal count); each input element meets one tap, so the padding taps flops.py counts are not executed."""
    # D_F: B = 64, 1024 channels at 2x2 -> 1x1 (kernel 4x4, padding 1): 4 of the 16 taps meet the input
    fwd, dgrad, wgrad = R.conv_ops("conv4", 1, 64, 1024, 1, (2, 2), (1, 1), (1, 1), leaky=False)
    row = 1024 * 4
    assert fwd.nominal == 2 * 64 * 1024 * 16
    assert fwd.executed == dgrad.executed == wgrad.executed == 2 * 64 * row == fwd.nominal // 4
    assert {op.unit for op in (fwd, dgrad, wgrad)} == {"fp32"}
    assert fwd.bytes == 4 * (64 * row + row + 1 + 64)            # x, the covered taps of w, bias; writes y
    assert dgrad.bytes == 4 * (64 + row + 64 * row)              # dy, w; writes dx
    assert wgrad.bytes == 4 * (64 + 64 * row + 1024 * 16 + 1)    # dy, x; writes all of dw, db
    # D_V: 768 channels at 4x2x2 -> 1x1x1 (kernel 4x4x4, padding (0, 1, 1)), K = 16, LeakyReLU' read from y
    fwd, dgrad = R.conv_ops("conv4", 16, 8, 768, 1, (4, 2, 2), (1, 1, 1), (0, 1, 1), True, ("forward", "dgrad"))
    assert fwd.executed == 2 * 16 * 8 * 768 * 16 == fwd.nominal // 4
    assert dgrad.bytes == 4 * 16 * (2 * 8 + 768 * 16 + 8 * 768 * 16)
    assert R.gpu_tile(1, 64) == 16          # the other layers' dimensions of 1 still take tl.dot's 16-block


def test_projection_by_hand():
    # 48 frame projections of 64 frames: 30x30 -> 15x15, one 64-tap tl.dot against 32-filter blocks (48 -> 64)
    fwd, bwd = R.projection_ops("p", 48, 64, video=False, backward=True)
    assert fwd.nominal == bwd.nominal == 2 * 48 * 64 * 225 * 64
    assert fwd.executed == 2 * (64 * 225) * 64 * 64
    assert bwd.executed == 2 * (64 * 900) * 48 * 64 and bwd.unit == "fp32"     # every input pixel x 64 taps
    assert fwd.bytes == bwd.bytes == 4 * (64 * 900 + 48 * 64 + 48 * 64 * 225)


def test_tile_rounding():
    assert [R.gpu_tile(n, 64) for n in (1, 2, 16, 64, 1000)] == [16, 64, 64, 64, 64]
    assert [R.pow2_block(n, 32) for n in (1, 5, 17, 48, 100)] == [16, 16, 32, 32, 32]
    assert R.padded(65, 64) == 128 and R.padded(64, 64) == 64


# ---------------------------------------------------------------------------------------------- against the code


def test_tiles_and_rounding_are_the_kernels_own():
    pytest.importorskip("triton")
    from kernels import batched_conv, common, frame_generator, projection
    assert R.read_constant("batched_conv", "GPU_TILES") == batched_conv.GPU_TILES
    assert R.read_constant("projection", "GPU_TILES") == projection.GPU_TILES
    assert R.read_constant("frame_generator", "GPU_TILES") == frame_generator.GPU_TILES
    for n in (1, 2, 15, 16, 17, 31, 64, 100, 513):
        for cap in (16, 32, 64):
            assert R.gpu_tile(n, cap) == common.tile(n, cap, gpu=True)
            assert R.pow2_block(n, cap) == common.block(n, cap)


def test_bank_geometry_matches_the_banks():
    from vidgan_fast.fast.bank import FrameDiscriminatorBank, VideoDiscriminatorBank
    assert R.DF_GEOMETRY == FrameDiscriminatorBank.geometry
    assert R.DV_GEOMETRY == VideoDiscriminatorBank.geometry
    from vidgan_fast.fast.frozen_generator import UP_PADDING
    assert R.GF_PADDING == UP_PADDING


@pytest.mark.parametrize("name", list(PRESETS))
def test_step_nominal_flops_equal_the_flop_model(name):
    cfg = preset(name)
    with torch.device("meta"):
        g = step.build_frame_generator(cfg)
        v = step.build_video_generator(cfg)
        df, dv = frame_discriminators(1, cfg.df_widths), video_discriminators(1, cfg.dv_widths)
    want = [F.phase1_d_step_flops(g, df, cfg.frames_k, cfg.frames_batch),
            F.phase1_g_step_flops(g, df, cfg.frames_k, cfg.frames_batch),
            F.phase2_d_step_flops(v, g, dv, cfg.video_k, cfg.video_batch),
            F.phase2_g_step_flops(v, g, dv, cfg.video_k, cfg.video_batch)]
    steps = R.step_models(cfg)
    assert [s.total("nominal") for s in steps] == [w.total for w in want]
    assert R.frame_generator_params(cfg) == count_parameters(g)
    assert R.video_generator_params(cfg) == count_parameters(v)
    assert R.bank_params(cfg.df_widths, 2) == count_parameters(df)
    assert R.bank_params(cfg.dv_widths, 3) == count_parameters(dv)


def test_dgrad_tap_boxes_by_hand():
    # D_V conv3 at B = 8: 7x3x3 -> 4x2x2 (stride 1, padding 0/1/1), 64-row tiles = 8 positions each. Tile 0 holds
    # depth 0 only (kd = 0 reaches od = 0: 1 tap) and every h, w (4 x 4 taps); tile 1 holds depths 0 and 1 (2 taps)
    boxes = R.dgrad_tap_boxes(8, (7, 3, 3), (4, 4, 4), (1, 1, 1), (0, 1, 1), (4, 2, 2), 64)
    assert len(boxes) == 8 and boxes[:2] == [16, 32]
    _, dgrad = R.conv_ops("c3", 1, 8, 64, 64, (7, 3, 3), (1, 1, 1), (0, 1, 1), leaky=True, passes=("forward", "dgrad"))
    assert dgrad.executed == 2 * 64 * 64 * 64 * sum(boxes)    # tile rows x N x (box x Cout 64, a multiple of 32)


@pytest.mark.parametrize("name", list(PRESETS))
def test_executed_flops_are_at_least_nominal(name):
    for step in R.step_models(preset(name)):
        for op in step.ops:
            # the exceptions: G_F's last layer, whose nominal count includes taps into the cropped border, and the
            # banks' dgrad, whose tap boxes leave out taps into the padding (test_bank_dgrad_executes_every_hit),
            # and the logit layer, which executes only the taps that meet its input
            bank_dgrad = op.name.startswith(("D_F", "D_V")) and op.name.endswith("dgrad")
            if "(tanh)" not in op.name and not bank_dgrad and "conv4" not in op.name:
                assert op.executed >= op.nominal, (step.name, op.name)


@pytest.mark.parametrize("name", list(PRESETS))
def test_bank_dgrad_executes_every_hit(name):
    """A bank dgrad executes at least 2 K B Cin Cout x the (output, tap) pairs whose input is in range (counted by
    a convolution of ones, independently of the tap-box model), and at most what the gather form without tap
    boxes executed (every tap of the class for every row tile)."""
    cfg = preset(name)
    for k, b, widths, geo, size in ((cfg.frames_k, cfg.frames_batch, cfg.df_widths, R.DF_GEOMETRY, (15, 15)),
                                    (cfg.video_k, cfg.video_batch, cfg.dv_widths, R.DV_GEOMETRY, (30, 9, 9))):
        channels = (1, *widths, 1)
        conv = torch.nn.functional.conv2d if len(size) == 2 else torch.nn.functional.conv3d
        for i, (layer, (stride, pad)) in enumerate(geo.items()):
            hits = conv(torch.ones(1, 1, *size), torch.ones(1, 1, *(4,) * len(size)), stride=stride, padding=pad)
            cin, cout = channels[i], channels[i + 1]
            _, dgrad = R.conv_ops(layer, k, b, cin, cout, size, stride, pad, leaky=True, passes=("forward", "dgrad"))
            assert dgrad.executed >= 2 * k * b * cin * cout * int(hits.sum()), (name, layer)
            full = len(R.dgrad_tap_boxes(b, size, (4,) * len(size), stride, pad, hits.shape[2:], 64)) * 64 * \
                R.padded(cin, R.gpu_tile(cin, 64)) * R.padded(cout * 4 ** len(size) // math.prod(stride), 32)
            assert dgrad.executed <= 2 * k * full, (name, layer)
            size = tuple(hits.shape[2:])


def test_paper_bank_traffic_is_weight_dominated():
    """Phase-1 D step: 504M bank parameters (2.0 GB); one pass over real and fake: a forward read, a dgrad read
    (conv2-4), a gradient write, and the fused RMSprop (5): at least 8 weight-sized passes."""
    cfg = preset("paper")
    params = cfg.frames_k * R.bank_params(cfg.df_widths, 2)
    assert 504e6 < params < 505e6
    d_step = R.step_models(cfg)[0]
    assert d_step.total("bytes") >= 8 * 4 * params
    rms = [op for op in d_step.ops if "RMSprop" in op.name]
    assert len(rms) == 1 and rms[0].bytes == 5 * 4 * params


def test_rmsprop_pass_count_follows_torch():
    """13 passes = mul_ (2) + addcmul_ (3) + sqrt (2) + add_ (2) + addcdiv_ (4): the foreach ops torch runs."""
    from torch.optim import rmsprop
    src = inspect.getsource(rmsprop._multi_tensor_rmsprop)
    for op in ("_foreach_mul_(grouped_square_avgs", "_foreach_addcmul_(", "_foreach_sqrt(", "_foreach_add_(avg, eps",
               "_foreach_addcdiv_(grouped_params, grouped_grads, avg"):
        assert op in src, op
    assert R.RMSPROP_PASSES == 2 + 3 + 2 + 2 + 4


# ---------------------------------------------------------------------------------------------- the floor


def test_floor_is_the_max_of_compute_and_memory():
    dev = R.Device("toy", "toy", fp32=1.0, tf32=2.0, bf16=4.0, bandwidth=1000.0, source="test")
    flops_bound = R.Step("s", [R.Op("a", 10**12, 4 * 10**12, 10**9)])              # 2 s compute, 1 ms memory
    assert R.floor(flops_bound, dev, "tf32")["floor_s"] == pytest.approx(2.0)
    assert R.floor(flops_bound, dev, "fp32")["floor_s"] == pytest.approx(4.0)
    bytes_bound = R.Step("s", [R.Op("b", 0, 0, 3 * 10**12, impl="memory"),
                               R.Op("c", 10**12, 10**12, 0, unit="fp32", calls=2)])
    f = R.floor(bytes_bound, dev, "bf16")            # memory 3 s; compute 2 calls x 1 s at the CUDA-core rate
    assert (f["memory_s"], f["compute_s"], f["floor_s"], f["bound"]) == (pytest.approx(3.0), pytest.approx(2.0),
                                                                        pytest.approx(3.0), "memory")
    assert f["serial_s"] == pytest.approx(5.0)
    for step in R.step_models(preset("paper")):
        for d in R.DEVICES.values():
            f = R.floor(step, d, "tf32")
            assert f["floor_s"] == max(f["compute_s"], f["memory_s"]) <= f["serial_s"]


def test_gtx_1080_ti_has_no_tensor_cores():
    d = R.DEVICES["gtx1080ti"]
    assert d.rate("mma", "tf32") == d.rate("mma", "bf16") == d.rate("fp32", "tf32") == 11.3e12


# ---------------------------------------------------------------------------------------------- the command


def test_bench_static_prints_the_tables(tmp_path):
    out = tmp_path / "roofline.json"
    result = CliRunner().invoke(main, ["bench", "--static", "--preset", "tiny", "--device-model", "h100",
                                       "gtx1080ti", "--json", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Roofline projection (static, no GPU): preset tiny, precision tf32" in text
    for step in ("phase 1 D step", "phase 1 G step", "phase 2 D step", "phase 2 G step"):
        assert f"| {step} (K=" in text
    assert "H100 SXM5 80GB" in text and "GTX 1080 Ti" in text and "A100" not in text.split("- devices")[0]
    assert "| D_F conv4 forward | 1 |" in text and "| h100 ms | gtx1080ti ms |" in text
    saved = json.loads(out.read_text())
    assert len(saved["steps"]) == 8 and saved["precision"] == "tf32"
    assert "Projected GPU memory of --fast training (tiny, tf32)" in text and "| frames |" in text
    assert [r["phase"] for r in saved["memory"]] == ["frames", "video"]


def test_bench_static_help_does_not_import_torch():
    code = ("import sys\nfrom vidgan_fast.cli import main\n"
            "try:\n    main(['bench', '--static', '--help'], prog_name='vidgan')\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "assert 'torch' not in sys.modules\nprint('ok')\n")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.endswith("ok\n"), proc.stderr[-2000:]
    assert "--device-model" in proc.stdout


# ---------------------------------------------------------------------------------------------- bf16 storage

def test_one_conv_layer_bf16_bytes_by_hand():
    """Under bf16 x, y (and dx, dy) and the weight reads are 2 bytes; bias reads, dw and db stay 4 bytes."""
    fwd, dgrad, wgrad = R.conv_ops("t", 2, 3, 5, 7, (8, 8), (2, 2), (1, 1), leaky=True, x_bytes=2, y_bytes=2,
                                   w_bytes=2)
    x, w, b, y = 3 * 5 * 64, 7 * 5 * 16, 7, 3 * 7 * 16
    assert fwd.bytes == 2 * (2 * x + 2 * w + 4 * b + 2 * y)
    assert dgrad.bytes == 2 * (2 * 2 * y + 2 * w + 2 * x)
    assert wgrad.bytes == 2 * (2 * 2 * y + 2 * x + 4 * w + 4 * b)


def test_bf16_storage_bytes_of_the_paper_steps():
    """bf16 halves the banks' and the frozen G_F's activation and weight-read bytes, adds to the D step's fused
    RMSprop the bf16 weight copies it writes (2 B per weight; no step casts a weight) and leaves the PyTorch
    modules and the generators' fp32 optimizers alone."""
    cfg = preset("paper")
    for fp32_step, bf16_step in zip(R.step_models(cfg, "tf32"), R.step_models(cfg, "bf16")):
        before, after = {op.name: op for op in fp32_step.ops}, {op.name: op for op in bf16_step.ops}
        assert list(before) == list(after)
        phase, tag = (1, "D_F") if "phase 1" in fp32_step.name else (2, "D_V")
        k, widths = (cfg.frames_k, cfg.df_widths) if phase == 1 else (cfg.video_k, cfg.dv_widths)
        channels = (1, *widths, 1)
        weights = k * sum(ci * co * 4 ** (phase + 1) for ci, co in zip(channels[:-1], channels[1:]))
        for name, op in before.items():
            if name == f"{tag} bank RMSprop (fused)":
                assert after[name].bytes == op.bytes + 2 * weights, name     # writes the copies
            elif name.startswith("G_V") or "RMSprop" in name or (phase == 1 and name.startswith("G_F")):
                assert after[name].bytes == op.bytes, name            # PyTorch modules, fp32 optimizer passes
            elif "projection" in name:
                assert after[name].bytes == op.bytes, name            # fp32 frames / videos and projections
            else:
                assert op.bytes / 2 <= after[name].bytes < op.bytes, name   # bank convs, frozen G_F
        assert (f"{tag} bank RMSprop (fused)" in before) == ("D step" in fp32_step.name)
        conv3 = after[f"{tag} conv3 forward"]
        assert conv3.bytes * 2 == before[f"{tag} conv3 forward"].bytes + 4 * k * channels[3]   # bias read stays fp32
    assert "bf16 does not change bytes" not in R.__doc__ and "2 bytes per element" in R.__doc__


def test_bench_static_without_triton_prints_the_roofline_and_says_why_no_memory(tmp_path, monkeypatch, capsys):
    """Where Triton cannot be imported the fast state cannot be built, even on meta tensors: the memory table is
    replaced by one line and left out of the JSON, the rest as usual."""
    from vidgan_fast import memory_model, roofline_report
    from vidgan_fast.fast.engine import FastPathUnavailable

    def no_triton(*args, **kwargs):
        raise FastPathUnavailable("Triton is not installed")
    monkeypatch.setattr(memory_model, "project", no_triton)
    out = tmp_path / "r.json"
    assert roofline_report.main(["--preset", "tiny", "--device-model", "h100", "--steps-only", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Projected GPU memory: not available on this machine (Triton is not installed)" in text
    assert "| phase 1 D step (K=" in text and "memory" not in json.loads(out.read_text())
