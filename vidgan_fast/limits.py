"""Will a run fit? The memory a phase needs at least, against what the device has, checked before any model is
built (train.open_phase), so that absurd sizes (--gf-widths 100000,..., --frames-k 4000 at the paper's widths)
are one line at start-up instead of an allocation failure, or minutes of silence, after it.

The estimate is a floor, not a projection (vidgan_fast/lab/memory.py projects the fast path's GPU memory): fp32
weights, their gradients and RMSprop's state (3 x 4 bytes per trained parameter, 4 for a frozen one), and the
activations of one forward and backward pass (2 x 4 bytes per value) of the generator and the K discriminators on
one batch (under torchrun, each process's share of the K). Shapes come from the models built on the meta device (one discriminator, times K): nothing is
allocated and no random number is drawn.
"""
from __future__ import annotations

import os

import torch

from .config import TrainConfig, option_name
from .errors import ConfigError
from .models import frame_discriminators, video_discriminators
from .step import Phase, build_frame_generator, build_video_generator

GIB = 2 ** 30


def _activations(module: torch.nn.Module, *inputs) -> tuple[int, torch.Tensor]:
    """(values one sample's forward pass produces (the outputs of every submodule), the output), on meta tensors."""
    count = [0]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            count[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.no_grad():
            out = module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return count[0] // inputs[0].shape[0], out


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def needed_bytes(cfg: TrainConfig, phase: str) -> int:
    """The floor of the memory phase `phase` needs (see the module docstring)."""
    p = Phase.of(cfg, phase)
    k = -(-p.k // max(1, int(os.environ.get("WORLD_SIZE", "1"))))     # torchrun: each process holds K / world
    with torch.device("meta"):
        frame_generator = build_frame_generator(cfg)
        z = torch.zeros(2, 100)
        gf_acts, frames = _activations(frame_generator, z)
        if not p.video:
            disc = frame_discriminators(1, cfg.df_widths)
            d_acts, _ = _activations(disc, frames)
            trained, frozen, acts = _parameters(frame_generator) + k * _parameters(disc), 0, gf_acts + k * d_acts
        else:
            video_generator = build_video_generator(cfg)
            gv_acts, videos = _activations(video_generator, z, frame_generator)
            disc = video_discriminators(1, cfg.dv_widths)
            d_acts, _ = _activations(disc, videos)
            gf = _parameters(frame_generator)
            trained = _parameters(video_generator) + k * _parameters(disc) + (gf if cfg.finetune_frames else 0)
            frozen, acts = (0 if cfg.finetune_frames else gf), gv_acts + k * d_acts
    return 12 * trained + 4 * frozen + 8 * p.batch * acts


def available_bytes(device: torch.device) -> int | None:
    """The memory of `device`: a GPU's total, or the memory the system has available now; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(cfg: TrainConfig, phase: str, device: torch.device) -> None:
    """ConfigError if phase `phase` of `cfg` cannot fit on `device` (at least needed_bytes)."""
    have = available_bytes(device)
    if have is None:
        return
    need = needed_bytes(cfg, phase)
    if need > have:
        p = Phase.of(cfg, phase)
        sizes = (f"{option_name(f'{phase}_k')} {p.k}, {option_name(f'{phase}_batch')} {p.batch}, widths "
                 + (f"--gf-widths {_w(cfg.gf_widths)} --df-widths {_w(cfg.df_widths)}" if not p.video else
                    f"--gv-hidden {_w(cfg.gv_hidden)} --gv-lstm {cfg.gv_lstm} --dv-widths {_w(cfg.dv_widths)}"))
        where = "this GPU has" if device.type == "cuda" else "this machine has available"
        raise ConfigError(f"phase {p.number} would need at least {need / GIB:.1f} GiB of memory (weights, gradients, "
                          f"optimizer state and one batch's activations; {sizes}) but {where} {have / GIB:.1f} GiB; "
                          f"choose smaller widths, K or batch")


def _w(widths) -> str:
    return ",".join(map(str, widths))
