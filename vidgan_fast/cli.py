"""The `vidgan` command line (click).

    vidgan data --n 100000 --out data/balls.npy
    vidgan train all --preset tiny --out runs/tiny          # both phases + sample GIF (the main job)
    vidgan train frames --preset paper --out runs/paper
    vidgan train video --frames runs/paper/frames.ckpt --out runs/paper
    vidgan sample runs/tiny/video.ckpt --n 16

Every TrainConfig field that a command uses is an option (generated from the dataclass; not given = the
preset's value, or on --resume the saved run's value). Every project error and usage error ends as one
`error: ...` line on stderr and a non-zero exit, never a traceback. Torch is imported only when a command runs,
so every --help is quick.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

import click

from .config import PRESETS, TrainConfig, check_batch, option_name
from .config import preset as make_preset
from .errors import ConfigError, TrainingInterrupted, VidganError, os_error_message
from .run_folder import claim

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


# Options that only one command uses (every other TrainConfig field is used by all three train commands).
FRAMES_ONLY = {"frames_k", "frames_batch", "frames_lr", "frames_epochs", "df_widths"}
VIDEO_ONLY = {"video_k", "video_batch", "video_lr", "video_epochs", "gv_hidden", "gv_lstm", "dv_widths",
              "finetune_frames", "finetune_lr", "video_codes", "gv_forget_bias", "gv_smoothing", "calibrate_codes"}
ALL_ONLY = {"sample_n"}
NOT_IN = {"frames": VIDEO_ONLY | ALL_ONLY, "video": FRAMES_ONLY | ALL_ONLY, "all": set()}
HELP_IN = {("video", "gf_widths"): "G_F channel widths: read from the --frames checkpoint (if given, they must "
                                   "match it)"}


def command_fields(command: str) -> list[dataclasses.Field]:
    """The TrainConfig fields that `train COMMAND` uses, as options."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in NOT_IN[command]]


def config_options(command: str):
    """One option per TrainConfig field that `train COMMAND` uses; each defaults to None, meaning 'not given'."""
    def decorate(func):
        for f in reversed(command_fields(command)):
            name = option_name(f.name)
            values = "; ".join(f"{p}: {_shown(getattr(c, f.name))}" for p, c in PRESETS.items())
            help = HELP_IN.get((command, f.name)) or f"{f.metadata['help']}  [{values}]"
            if isinstance(f.default, bool):
                func = click.option(f"{name}/--no-{name[2:]}", f.name, default=None, help=help)(func)
            else:
                func = click.option(name, f.name, type=_click_type(f), default=None, help=help)(func)
        return func
    return decorate


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def run_options(func):
    func = click.option("--resume", is_flag=True, help="continue the run saved in --out (its config, plus the "
                                                       "options given again)")(func)
    func = click.option("--out", type=click.Path(file_okay=False), default=None,
                        help="run folder (default runs/PRESET); one run at a time owns it")(func)
    func = click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                        help="starting values of every option  [default: paper with --device cuda, else tiny: "
                             "on a CPU the paper's sizes take minutes per step and write GB checkpoints]")(func)
    return func


def choose_preset(preset: str | None, kwargs: dict, resume: bool) -> str:
    """--preset as given, else paper on a GPU (--device cuda[:N]) and tiny otherwise (said on stderr)."""
    device = kwargs.get("device") or PRESETS["paper"].device
    if preset is None:
        preset = "paper" if device.startswith("cuda") else "tiny"
        if not resume and first_process():
            click.echo(f"preset: {preset} (no --preset given; the default "
                       f"{'with --device cuda' if preset == 'paper' else 'without --device cuda'})", err=True)
    elif preset == "paper" and not resume and not device.startswith("cuda") and first_process():
        warnings.warn("--preset paper on a CPU takes minutes per step and writes checkpoints of several GB; "
                      "pass --device cuda, or --preset tiny for a quick run", RuntimeWarning, stacklevel=2)
    return preset


def phase_aliases(phase: str):
    def decorate(func):
        for alias, field in reversed(PHASE_ALIASES[phase].items()):
            kind = float if alias == "lr" else int
            func = click.option(f"--{alias}", f"alias_{alias}", type=kind, default=None,
                                help=f"same as {option_name(field)}")(func)
        return func
    return decorate


def configure(preset: str | None, kwargs: dict, resume: bool, command: str,
              out: str | None) -> tuple[TrainConfig | None, dict, Path]:
    """(config, overrides, run folder): the preset with the options given (None = not given) applied and
    validated. With --resume the config is the saved run's (the overrides are applied to it later): None here.
    """
    preset = choose_preset(preset, kwargs, resume)
    overrides = {f.name: kwargs.pop(f.name, None) for f in dataclasses.fields(TrainConfig)}
    used = {}
    for alias, field in PHASE_ALIASES.get(command, {}).items():
        value = kwargs.pop(f"alias_{alias}")
        if value is not None:
            overrides[field], used[field] = value, alias
    overrides = {k: v for k, v in overrides.items() if v is not None}
    folder = Path(out) if out else Path("runs") / preset
    try:
        if resume:
            return None, overrides, folder
        cfg = make_preset(preset, **overrides)
        for name in ([command] if command in PHASE_ALIASES else ["frames", "video"]):
            check_batch(cfg, name)
        return cfg, overrides, folder
    except ConfigError as e:     # name the option as the user typed it
        message = str(e)
        for field, alias in used.items():
            message = message.replace(f"invalid {option_name(field)} ", f"invalid --{alias} ")
        raise ConfigError(message) from None


def first_process() -> bool:
    """A one-process run, or rank 0 under torchrun (read from torchrun's environment, without importing torch):
    the process that owns the run folder and writes to it."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0


def summary(state) -> str:
    losses = state.last_losses
    shown = f", d_loss {losses['d_loss']:.4f}, g_loss {losses['g_loss']:.4f}" if "d_loss" in losses else ""
    return f"phase {state.phase.number} done: {state.step} steps{shown}"


class Main(click.Group):
    """A click group that reports errors as one `error: ...` line (exit 1; usage errors exit 2; a run stopped by
    a signal exits 128 + the signal number: 130 for SIGINT, 143 for SIGTERM)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        warnings.formatwarning = one_line_warning
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            # click returns ctx.exit(N)'s N here (standalone_mode=False), e.g. `vidgan check` with a failed op
            code = result if isinstance(result, int) and not isinstance(result, bool) else 0
            if not standalone_mode:
                return result
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
            code = fail(f"interrupted by {e}", 128 + e.signum)
        except VidganError as e:
            code = fail(str(e), 1)
        except OSError as e:
            code = fail(os_error_message(e), 1)
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
    if Path(out).exists() and not overwrite:
        raise click.UsageError(f"{out} already exists; pass --overwrite to replace it")
    from .data import write_dataset
    path = write_dataset(out, n, seed=seed, overwrite=overwrite)
    click.echo(f"wrote {n} videos to {path}")


@main.group()
def train():
    """Train phase 1 (frames), phase 2 (video), or both (all)."""


@train.command("frames")
@run_options
@phase_aliases("frames")
@config_options("frames")
def train_frames(preset, out, resume, **kwargs):
    """Phase 1: the frame generator G_F against K frame discriminators."""
    cfg, overrides, folder = configure(preset, kwargs, resume, "frames", out)
    with claim(folder, enabled=first_process()):       # before torch is imported: a busy folder fails at once
        from .distributed import launched
        from .train import open_phase, train_phase
        with launched():              # torchrun: join the group (nothing on one process)
            state = train_phase(open_phase("frames", folder, cfg, resume, overrides), folder)
            click.echo(f"{summary(state)}; saved {folder / 'frames.ckpt'}")


@train.command("video")
@click.option("--frames", "frames_ckpt", type=click.Path(dir_okay=False), default=None,
              help="phase-1 checkpoint whose G_F renders the frames (not needed with --resume)")
@run_options
@phase_aliases("video")
@config_options("video")
def train_video(frames_ckpt, preset, out, resume, **kwargs):
    """Phase 2: the video generator G_V (through the frozen G_F) against K video discriminators."""
    if frames_ckpt is None and not resume:
        raise click.UsageError("Missing option '--frames' (a phase-1 checkpoint)")
    cfg, overrides, folder = configure(preset, kwargs, resume, "video", out)
    with claim(folder, enabled=first_process()):
        from .distributed import launched
        from .train import open_phase, train_phase
        with launched():              # torchrun: join the group (nothing on one process)
            state = train_phase(open_phase("video", folder, cfg, resume, overrides, frames=frames_ckpt), folder)
            click.echo(f"{summary(state)}; saved {folder / 'video.ckpt'}")


@train.command("all")
@run_options
@config_options("all")
def train_all_command(preset, out, resume, **kwargs):
    """Both phases, then a sample GIF and PNG strips in OUT/samples (the main job)."""
    cfg, overrides, folder = configure(preset, kwargs, resume, "all", out)
    start = time.perf_counter()
    with claim(folder, enabled=first_process()):
        from .distributed import launched
        from .train import train_all
        with launched():              # torchrun: join the group (nothing on one process)
            for path in train_all(cfg, folder, resume, overrides):
                click.echo(f"wrote {path}")
            click.echo(f"both phases done in {time.perf_counter() - start:.1f} s; run folder {folder}")


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), default=16, show_default=True, help="samples")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="output folder (default: CHECKPOINT's folder/samples); files already there are kept, the new "
                   "ones get the next free name (videos-2.gif, ...)")
@click.option("--npy", type=click.Path(dir_okay=False), default=None,
              help="write the samples instead as a uint8 .npy array, videos [N, 30, 30, 30] or frames [N, 30, 30], "
                   "quantised like `vidgan data` (for outside metrics)")
@click.option("--overwrite", is_flag=True, help="replace existing sample files (and an existing --npy file)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def sample(checkpoint, n, out, npy, overwrite, seed, device):
    """A video checkpoint -> GIF grid + PNG strip; a frames checkpoint -> PNG grid of frames (or, with --npy,
    the samples as an array)."""
    if npy is not None and Path(npy).exists() and not overwrite:
        raise click.UsageError(f"--npy {npy} already exists; pass --overwrite to replace it, or name another file")
    if npy is not None and not npy.endswith(".npy"):
        raise click.UsageError(f"--npy {npy} must end in .npy")
    from .sample import write_array, write_samples
    if npy is not None:
        path, shape = write_array(checkpoint, npy, n=n, seed=seed, device=device)
        click.echo(f"wrote {path} (uint8 {list(shape)})")
        return
    folder = Path(out) if out else Path(checkpoint).parent / "samples"
    for path in write_samples(checkpoint, folder, n=n, seed=seed, device=device, overwrite=overwrite):
        click.echo(f"wrote {path}")


@main.command("check")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="where to run  [default: cuda if PyTorch sees a GPU, else cpu]")
@click.option("--paper-size", is_flag=True, help="paper widths, K and batch sizes (GPU only)")
@click.option("--op", "ops", multiple=True, help="only this check (repeatable); the op column of the table "
                                                 "names them")
@click.option("--allow-fallback", is_flag=True, help="count PyTorch-fallback rows as passes")
@click.option("--tf32", is_flag=True, help="run the captured-step rows (CUDA graphs vs eager) with TF32 products; "
                                            "the op rows always check exact fp32 products")
@click.option("--allow-skip", is_flag=True,
              help="exit 0 although rows were not checked (e.g. the CUDA-graph rows on a CPU); they still print "
                   "as NOT CHECKED")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="also write the rows here")
def check(device, paper_size, ops, allow_fallback, tf32, allow_skip, seed, json_path):
    """Check every fast op against its reference twin on this machine (and, on a GPU, the CUDA-graph steps
    against eager steps).

    \b
    Exit status: 0 every row ran and passed; 1 a row failed;
    3 nothing failed but rows were NOT CHECKED (skipped: the CUDA-graph rows on a CPU).
    A row that was not checked is not a pass: pass --allow-skip to accept that (exit 0), or --op to choose rows.
    """
    import torch

    from .check_report import exit_status, format_table, write_json
    from .checks import check_header, run_checks, use_interpreter_on_cpu
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    interpret_note = use_interpreter_on_cpu() if device == "cpu" else None
    try:
        results = run_checks(device, paper_size=paper_size, seed=seed, ops=ops or None,
                             allow_fallback=allow_fallback, tf32=tf32)
    except ConfigError as e:
        raise click.UsageError(str(e))
    header = check_header(device, paper_size, interpret_note)
    click.echo(format_table(results, header))
    status = exit_status(results, allow_skip)
    if json_path:
        write_json(json_path, results, header, status)
    if status:
        raise click.exceptions.Exit(status)


@main.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--n", "n", type=click.IntRange(min=2), default=1000, show_default=True,
              help="videos per set (real, generated, baseline)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="output folder (default: CHECKPOINT's folder/eval)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def eval_(checkpoint, n, out, seed, device):
    """A video checkpoint -> metrics table (real, generated, random-code baseline), eval.json, eval.png, samples.gif."""
    from .evaluate import evaluate_checkpoint, format_table
    results, files = evaluate_checkpoint(checkpoint, Path(out) if out else Path(checkpoint).parent / "eval",
                                         n=n, seed=seed, device=device)
    click.echo(format_table(results))
    for path in files:
        click.echo(f"wrote {path}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": []})
@click.pass_context
def bench(ctx):
    """The performance report: reference vs torch.compile vs fast, per op and per step (--help for options);
    --static: the projected cost of every step and launch on named GPUs, from the compiled kernels, and the
    projected GPU memory; no GPU needed (--static --help)."""
    if "--static" in ctx.args:       # vidgan_fast/lab/report.py: needs no GPU
        from .lab.report import main as static_main
        code = static_main([a for a in ctx.args if a != "--static"])
    else:
        from .benchmarks.report import main as report_main
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
    args = [sys.executable, "-m", "vidgan_fast.lab.gate", *ctx.args]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # the compiler, not the interpreter
    code = subprocess.run(args, env=env).returncode
    if code:
        raise click.exceptions.Exit(code)
