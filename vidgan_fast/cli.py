"""The `vidgan` command line (click).

    vidgan data --n 100000 --out data/balls.npy
    vidgan train all --preset tiny --out runs/tiny          # both phases + sample GIF (the main job)
    vidgan train frames --preset paper --out runs/paper
    vidgan train video --frames runs/paper/frames.ckpt --out runs/paper
    vidgan sample runs/tiny/video.ckpt --n 16

Every TrainConfig field is an option (generated from the dataclass; not given = the preset's value, or on
--resume the saved run's value). Every project error and usage error ends as one `error: ...` line on stderr
and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path

import click

from .config import PRESETS, TrainConfig, check_batch, option_name
from .config import preset as make_preset
from .errors import ConfigError, TrainingInterrupted, VidganError

PHASE_ALIASES = {  # short options of `train frames` / `train video` -> the phase's config field
    "frames": {"batch": "frames_batch", "k": "frames_k", "lr": "frames_lr", "epochs": "frames_epochs"},
    "video": {"batch": "video_batch", "k": "video_k", "lr": "video_lr", "epochs": "video_epochs"},
}


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


def _click_type(f: dataclasses.Field):
    default = f.default
    if isinstance(default, tuple):
        return Widths()
    if f.name == "max_steps":
        return int
    if f.name == "data":
        return click.Path(dir_okay=False)
    return type(default)


def config_options(func):
    """Add one option per TrainConfig field; each defaults to None, meaning 'not given'."""
    for f in reversed(dataclasses.fields(TrainConfig)):
        name = option_name(f.name)
        help = f"{f.metadata['help']}  [{'; '.join(f'{p}: {_shown(getattr(c, f.name))}' for p, c in PRESETS.items())}]"
        if isinstance(f.default, bool):
            func = click.option(f"{name}/--no-{name[2:]}", f.name, default=None, help=help)(func)
        else:
            func = click.option(name, f.name, type=_click_type(f), default=None, help=help)(func)
    return func


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def run_options(func):
    func = click.option("--resume", is_flag=True, help="continue the run saved in --out (its config, plus the "
                                                       "options given again)")(func)
    func = click.option("--out", type=click.Path(file_okay=False), default=None,
                        help="run folder (default runs/PRESET)")(func)
    func = click.option("--preset", type=click.Choice(list(PRESETS)), default="paper", show_default=True,
                        help="starting values of every option")(func)
    # --fast (lead): add the option here and pass it to the train_* calls below.
    return func


def phase_aliases(phase: str):
    def decorate(func):
        for alias, field in reversed(PHASE_ALIASES[phase].items()):
            kind = float if alias == "lr" else int
            func = click.option(f"--{alias}", f"alias_{alias}", type=kind, default=None,
                                help=f"same as {option_name(field)}")(func)
        return func
    return decorate


def configure(preset: str, kwargs: dict, resume: bool,
              phase: str | None = None) -> tuple[TrainConfig | None, dict]:
    """(config, overrides): the preset with the options given (None = not given) applied and validated.

    With --resume the config is the saved run's (the overrides are applied to it later), so it is None here.
    """
    overrides = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(TrainConfig)}
    used = {}
    for alias, field in (PHASE_ALIASES[phase].items() if phase else ()):
        value = kwargs.pop(f"alias_{alias}")
        if value is not None:
            overrides[field], used[field] = value, alias
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        if resume:
            return None, overrides
        cfg = make_preset(preset, **overrides)
        for name in ([phase] if phase else ["frames", "video"]):
            check_batch(cfg, name)
        return cfg, overrides
    except ConfigError as e:     # name the option as the user typed it
        message = str(e)
        for field, alias in used.items():
            message = message.replace(f"invalid {option_name(field)} ", f"invalid --{alias} ")
        raise ConfigError(message) from None


def summary(state) -> str:
    losses = state.last_losses
    shown = f", d_loss {losses['d_loss']:.4f}, g_loss {losses['g_loss']:.4f}" if "d_loss" in losses else ""
    return f"phase {1 if state.phase == 'frames' else 2} done: {state.step} steps{shown}"


def run_folder(out: str | None, preset_name: str) -> Path:
    return Path(out) if out else Path("runs") / preset_name


class Main(click.Group):
    """A click group that reports errors as one `error: ...` line (exit 1; usage errors exit 2)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        warnings.formatwarning = one_line_warning
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            code = fail(e.format_message() + hint, e.exit_code)
        except click.ClickException as e:
            code = fail(e.format_message(), e.exit_code)
        except click.Abort:
            code = fail("aborted", 1)
        except TrainingInterrupted as e:
            code = fail(f"interrupted by {e}", 130)
        except (VidganError, OSError) as e:
            code = fail(str(e), 1)
        except KeyboardInterrupt:
            code = fail("interrupted; nothing was saved since the last checkpoint", 130)
        if standalone_mode:
            sys.exit(code)
        return code


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line as one `warning: ...` line (no source location)."""
    return "warning: " + " ".join(str(message).split()) + "\n"


def fail(message: str, code: int) -> int:
    click.echo("error: " + " ".join(message.split()), err=True)
    return code


@click.group(cls=Main)
def main():
    """vidgan: a two-phase video GAN (frame generator, then an LSTM that walks its manifold)."""


@main.command()
@click.option("--n", "n", type=click.IntRange(min=1), default=100_000, show_default=True, help="number of videos")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="output .npy file")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an existing file")
def data(n, out, seed, overwrite):
    """Write N bouncing-balls videos as a uint8 [N, 30, 30, 30] .npy file."""
    from .data import write_dataset
    if Path(out).exists() and not overwrite:
        raise click.UsageError(f"{out} already exists; pass --overwrite to replace it")
    path = write_dataset(out, n, seed=seed, overwrite=overwrite)
    click.echo(f"wrote {n} videos to {path}")


@main.group()
def train():
    """Train phase 1 (frames), phase 2 (video), or both (all)."""


@train.command("frames")
@run_options
@phase_aliases("frames")
@config_options
def train_frames(preset, out, resume, **kwargs):
    """Phase 1: the frame generator G_F against K frame discriminators."""
    from .distributed import launched
    from .train import open_phase, train_phase
    with launched():                  # torchrun: join the group (nothing on one process)
        cfg, overrides = configure(preset, kwargs, resume, "frames")
        folder = run_folder(out, preset)
        state = train_phase(open_phase("frames", folder, cfg, resume, overrides), folder)
        click.echo(f"{summary(state)}; saved {folder / 'frames.ckpt'}")


@train.command("video")
@click.option("--frames", "frames_ckpt", type=click.Path(dir_okay=False), default=None,
              help="phase-1 checkpoint whose G_F renders the frames (not needed with --resume)")
@run_options
@phase_aliases("video")
@config_options
def train_video(frames_ckpt, preset, out, resume, **kwargs):
    """Phase 2: the video generator G_V (through the frozen G_F) against K video discriminators."""
    from .distributed import launched
    from .train import open_phase, train_phase
    if frames_ckpt is None and not resume:
        raise click.UsageError("Missing option '--frames' (a phase-1 checkpoint)")
    with launched():                  # torchrun: join the group (nothing on one process)
        cfg, overrides = configure(preset, kwargs, resume, "video")
        folder = run_folder(out, preset)
        state = train_phase(open_phase("video", folder, cfg, resume, overrides, frames=frames_ckpt), folder)
        click.echo(f"{summary(state)}; saved {folder / 'video.ckpt'}")


@train.command("all")
@run_options
@config_options
def train_all_command(preset, out, resume, **kwargs):
    """Both phases, then a sample GIF and PNG strips in OUT/samples (the main job)."""
    from .distributed import launched
    from .train import train_all
    with launched():                  # torchrun: join the group (nothing on one process)
        cfg, overrides = configure(preset, kwargs, resume)
        folder, start = run_folder(out, preset), time.perf_counter()
        for path in train_all(cfg, folder, resume, overrides):
            click.echo(f"wrote {path}")
        click.echo(f"both phases done in {time.perf_counter() - start:.1f} s; run folder {folder}")


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), default=16, show_default=True, help="samples")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="output folder (default: CHECKPOINT's folder/samples)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def sample(checkpoint, n, out, seed, device):
    """A video checkpoint -> GIF grid + PNG strip; a frames checkpoint -> PNG grid of frames."""
    from .sample import write_samples
    folder = Path(out) if out else Path(checkpoint).parent / "samples"
    for path in write_samples(checkpoint, folder, n=n, seed=seed, device=device):
        click.echo(f"wrote {path}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": []})
@click.pass_context
def bench(ctx):
    """The performance report: reference vs torch.compile vs fast, per op and per step (--help for options)."""
    from benchmarks.report import main as report_main
    code = report_main(ctx.args)
    if code:
        raise click.exceptions.Exit(code)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": []})
@click.pass_context
def kernels(ctx):
    """Compile every Triton kernel specialization the fast path launches for real GPU targets (no GPU needed):
    registers, spills, shared memory, tensor-core instructions, CTAs per SM (--help for options)."""
    import os
    import subprocess
    args = [sys.executable, "-m", "vidgan_fast.fast.kernel_gate", *ctx.args]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # the compiler, not the interpreter
    code = subprocess.run(args, env=env).returncode
    if code:
        raise click.exceptions.Exit(code)


from .check import check_command  # noqa: E402  (the commands live beside what they run)
from .evaluate import eval_command  # noqa: E402

main.add_command(check_command, "check")
main.add_command(eval_command, "eval")
