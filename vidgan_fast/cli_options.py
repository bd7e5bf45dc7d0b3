"""The options of the `vidgan` commands (cli.py): the train options generated from TrainConfig, the --device type
and its `auto` default, the default preset, and the validation of a command line before anything is created.

Torch-free at import (so every --help is quick); `resolve_device` imports torch only when it must ask it.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from pathlib import Path

import click

from .config import CODE_MAPS, COMBINATIONS, MAX_SEED, PRESETS, TrainConfig, check_batch, option_name, parse_device
from .config import preset as make_preset
from .errors import ConfigError, OptionError
from .signals import saved

PHASE_ALIASES = {  # short options of `train frames` / `train video` -> the phase's config field
    "frames": {"batch": "frames_batch", "k": "frames_k", "lr": "frames_lr", "epochs": "frames_epochs"},
    "video": {"batch": "video_batch", "k": "video_k", "lr": "video_lr", "epochs": "video_epochs"},
}
SEED = click.IntRange(0, MAX_SEED)
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


class Widths(click.ParamType):
    """A comma list of integers, e.g. 32,32,16,8."""
    name = "W1,W2,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma list of integers", param, ctx)


class Device(click.ParamType):
    """auto, cpu, cuda or cuda:N (the syntax; whether the GPU is there is checked when the command runs)."""
    name = "device"

    def get_metavar(self, param, ctx=None):
        return "[auto|cpu|cuda|cuda:N]"

    def convert(self, value, param, ctx):
        device = parse_device(value)
        if device is None:
            self.fail(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N", param, ctx)
        return device


DEVICE_HELP = "where to run: auto (a CUDA GPU if there is one, else the CPU; said on stderr), cpu, cuda or cuda:N"


def device_option(func):
    return click.option("--device", type=Device(), default="auto", show_default=True, help=DEVICE_HELP)(func)


def gpu_available() -> bool:
    """Does torch see a CUDA GPU? On Linux without any GPU device file the answer is no without importing torch."""
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in GPU_DEVICE_FILES):
        return False
    import torch
    return torch.cuda.is_available()


def resolve_device(device: str, say: bool = True) -> str:
    """'auto' -> 'cuda' where torch sees a GPU, else 'cpu' (said on stderr with say=True); a cuda device is
    checked to exist (ConfigError). Anything else as given."""
    if device == "auto":
        device = "cuda" if gpu_available() else "cpu"
        if say and first_process():
            click.echo(f"device: {device} (--device auto: {'a CUDA GPU is' if device == 'cuda' else 'no CUDA GPU is'} "
                       f"available)", err=True)
        return device
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ConfigError(f"invalid --device {device}: no CUDA GPU is available on this machine (or this torch "
                              f"is a CPU build); use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"invalid --device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def _click_type(f: dataclasses.Field):
    default = f.default
    if isinstance(default, tuple):
        return Widths()
    if f.name == "max_steps":
        return int
    if f.name == "data":
        return click.Path(dir_okay=False)
    if f.name == "loss":
        return click.Choice(COMBINATIONS)
    if f.name == "video_codes":
        return click.Choice(CODE_MAPS)
    if f.name == "device":
        return Device()
    return type(default)


# Options that only one command uses (every other TrainConfig field is used by all three train commands).
FRAMES_ONLY = {"frames_k", "frames_batch", "frames_lr", "frames_epochs", "df_widths", "frames_ema",
               "frames_select_every", "frames_select_n"}
VIDEO_ONLY = {"video_k", "video_batch", "video_lr", "video_epochs", "gv_hidden", "gv_lstm", "dv_widths",
              "finetune_frames", "finetune_lr", "video_codes", "gv_forget_bias", "gv_smoothing", "calibrate_codes"}
ALL_ONLY = {"sample_n"}
NOT_IN = {"frames": VIDEO_ONLY | ALL_ONLY, "video": FRAMES_ONLY | ALL_ONLY, "all": set()}
HELP_IN = {("video", "gf_widths"): "G_F channel widths: read from the --frames checkpoint (if given, they must "
                                   "match it)"}


def command_fields(command: str) -> list[dataclasses.Field]:
    """The TrainConfig fields that `train COMMAND` uses, as options."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in NOT_IN[command]]


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def preset_values(name: str) -> str:
    """The presets' values of a field for its help: '[default: V]' where all presets agree, else each distinct
    value once with the presets that hold it ('[paper: 48; tiny: 8; small: 16]'); '' for None everywhere."""
    if name == "device":
        return "[default: auto]"
    groups: dict[str, list[str]] = {}
    for preset_name, cfg in PRESETS.items():
        groups.setdefault(_shown(getattr(cfg, name)), []).append(preset_name)
    if len(groups) == 1:
        value = next(iter(groups))
        return "" if value == "None" else f"[default: {value}]"
    return "[" + "; ".join(f"{', '.join(names)}: {value}" for value, names in groups.items()) + "]"


def config_options(command: str):
    """One option per TrainConfig field that `train COMMAND` uses; each defaults to None, meaning 'not given'."""
    def decorate(func):
        for f in reversed(command_fields(command)):
            name = option_name(f.name)
            help = HELP_IN.get((command, f.name)) or f"{f.metadata['help']}  {preset_values(f.name)}".rstrip()
            if isinstance(f.default, bool):
                func = click.option(f"{name}/--no-{name[2:]}", f.name, default=None, help=help)(func)
            else:
                func = click.option(name, f.name, type=_click_type(f), default=None, help=help)(func)
        return func
    return decorate


def run_options(func):
    func = click.option("--resume", is_flag=True, help="continue the run saved in --out (its config, plus the "
                                                       "options given again)")(func)
    func = click.option("--out", type=click.Path(file_okay=False), default=None,
                        help="run folder (default runs/PRESET); one run at a time owns it")(func)
    func = click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                        help="starting values of every option  [default: paper on a GPU (--device auto with a GPU, "
                             "or cuda), else tiny: on a CPU the paper's sizes take minutes per step and write GB "
                             "checkpoints]")(func)
    return func


def phase_aliases(phase: str):
    def decorate(func):
        for alias, field in reversed(PHASE_ALIASES[phase].items()):
            kind = float if alias == "lr" else int
            func = click.option(f"--{alias}", f"alias_{alias}", type=kind, default=None,
                                help=f"same as {option_name(field)}")(func)
        return func
    return decorate


def first_process() -> bool:
    """A one-process run, or rank 0 under torchrun (read from torchrun's environment, without importing torch):
    the process that owns the run folder and writes to it."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0


def choose_preset(preset: str | None, device: str, resume: bool) -> str:
    """--preset as given, else paper on a GPU and tiny otherwise (said on stderr). `device` is resolved (no auto)."""
    if preset is None:
        preset = "paper" if device.startswith("cuda") else "tiny"
        if not resume and first_process():
            click.echo(f"preset: {preset} (no --preset given; the default "
                       f"{'on a GPU' if preset == 'paper' else 'on the CPU'})", err=True)
    elif preset == "paper" and not resume and not device.startswith("cuda") and first_process():
        warnings.warn("--preset paper on a CPU takes minutes per step and writes checkpoints of several GB; "
                      "pass --device cuda, or --preset tiny for a quick run", RuntimeWarning, stacklevel=2)
    return preset


def configure(preset: str | None, kwargs: dict, resume: bool, command: str,
              out: str | None) -> tuple[TrainConfig | None, dict, Path]:
    """(config, overrides, run folder): the preset with the options given (None = not given) applied and
    validated, before anything is created. With --resume the config is the saved run's (the overrides, checked
    here for their ranges, are applied to it later): None here. A value out of range is an OptionError (exit 2).
    --device auto (the default) is resolved here: on --resume only when given, else the saved run's device."""
    overrides = {f.name: kwargs.pop(f.name, None) for f in dataclasses.fields(TrainConfig)}
    used = {}
    for alias, field in PHASE_ALIASES.get(command, {}).items():
        value = kwargs.pop(f"alias_{alias}")
        if value is not None:
            overrides[field], used[field] = value, alias
    overrides = {k: v for k, v in overrides.items() if v is not None}

    def checked(build):
        try:
            return build()
        except ConfigError as e:     # an impossible value: a usage error, naming the option as the user typed it
            message = str(e)
            for field, alias in used.items():
                message = message.replace(f"invalid {option_name(field)} ", f"invalid --{alias} ")
            raise OptionError(message) from None

    checked(lambda: make_preset("tiny", **{k: v for k, v in overrides.items() if k != "device"}))   # the ranges
    if "device" in overrides or not resume:          # --resume without --device: the saved run's device
        overrides["device"] = resolve_device(overrides.get("device", "auto"))
    preset = choose_preset(preset, overrides.get("device", "cpu"), resume)
    folder = Path(out) if out else Path("runs") / preset
    if resume:
        saved(f"the checkpoints in {folder} are unchanged; continue with --resume")   # what a stop now leaves
        return None, overrides, folder

    def build():
        cfg = make_preset(preset, **overrides)
        for name in ([command] if command in PHASE_ALIASES else ["frames", "video"]):
            check_batch(cfg, name)
        return cfg
    return checked(build), overrides, folder
