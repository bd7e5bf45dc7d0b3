"""The `vidgan` command line (click).

    vidgan data --n 100000 --out data/balls.npy
    vidgan train all --preset tiny --out runs/tiny          # both phases + sample GIF (the main job)
    vidgan train frames --preset paper --out runs/paper
    vidgan train video --frames runs/paper/frames.ckpt --out runs/paper
    vidgan sample runs/tiny/video.ckpt --n 16

Every TrainConfig field that a command uses is an option (cli_options.py generates them from the dataclass; not
given = the preset's value, or on --resume the saved run's value). Every project error and usage error ends as
one `error: ...` line on stderr and a non-zero exit (2 for a command line wrong by itself, 130 / 143 for SIGINT /
SIGTERM at any point), never a traceback. -h and --help everywhere; --version. Torch is imported only when a
command runs, so every --help is quick.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from pathlib import Path

import click

from . import signals
from .allocator import keep_freed_memory
from .cli_options import (SEED, config_options, configure, device_option, first_process, phase_aliases,
                          resolve_device, run_options)
from .errors import ConfigError, TrainingInterrupted, VidganError, os_error_message
from .run_folder import claim

CONTEXT = {"help_option_names": ["-h", "--help"]}
DATA_LIMIT = 10_000_000        # vidgan data --n: 270 GB of videos


def summary(state) -> str:
    losses = state.last_losses
    shown = f", d_loss {losses['d_loss']:.4f}, g_loss {losses['g_loss']:.4f}" if "d_loss" in losses else ""
    return f"phase {state.phase.number} done: {state.step} steps{shown}"


class Main(click.Group):
    """A click group that reports errors as one `error: ...` line: exit 1; 2 for a command line that is wrong by
    itself (unknown option, a value out of its range or not in its list); 128 + the signal's number when SIGINT
    (130) or SIGTERM (143) stopped the command, at any point (signals.py), the line saying what was saved."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        warnings.formatwarning = one_line_warning
        with signals.immediate_stops():
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
            except click.Abort as e:      # click turns a KeyboardInterrupt (our signals.Stopped) into Abort
                cause = e.__cause__ or e.__context__
                code = stopped(cause) if isinstance(cause, KeyboardInterrupt) else fail("aborted", 1)
            except TrainingInterrupted as e:
                code = fail(f"interrupted by {e}", 128 + e.signum)
            except VidganError as e:
                code = fail(str(e), e.exit_code)
            except OSError as e:
                code = fail(os_error_message(e), 1)
            except KeyboardInterrupt as e:
                code = stopped(e)
        if standalone_mode:
            sys.exit(code)
        return code


def stopped(e: KeyboardInterrupt) -> int:
    signum = getattr(e, "signum", signal.SIGINT)
    return fail(f"interrupted by {signal.Signals(signum).name}; {signals.saved()}", 128 + signum)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line as one `warning: ...` line (no source location)."""
    return "warning: " + " ".join(str(message).split()) + "\n"


def fail(message: str, code: int) -> int:
    click.echo("error: " + " ".join(message.split()), err=True)
    return code


@click.group(cls=Main, context_settings=CONTEXT)
@click.version_option(package_name="vidgan-fast", prog_name="vidgan", message="%(prog)s %(version)s")
def main():
    """vidgan: a two-phase video GAN (frame generator, then an LSTM that walks its manifold).

    \b
    Exit status: 0 done; 1 an error; 2 a wrong command line; 3 `check` with rows not checked; 130 / 143 stopped by
    SIGINT / SIGTERM.
    """
    keep_freed_memory()           # allocator.py: no page faults per large tensor (torch-free, instant)


@main.command()
@click.option("--n", "n", type=click.IntRange(1, DATA_LIMIT), default=100_000, show_default=True,
              help=f"number of videos (27,000 bytes each; at most {DATA_LIMIT:,})")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="output .npy file")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an existing file")
def data(n, out, seed, overwrite):
    """Write N bouncing-balls videos as a uint8 [N, 30, 30, 30] .npy file."""
    if os.path.lexists(out) and not overwrite:
        raise click.UsageError(f"{out} already exists; pass --overwrite to replace it")
    from .data import write_dataset
    from .sample import check_space
    check_space(Path(out), n * 27_000)
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
@click.option("--n", "n", type=click.IntRange(1, 100_000), default=16, show_default=True,
              help="samples: at most 1,024 in the picture files (one grid), 100,000 with --npy")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="output folder (default: CHECKPOINT's folder/samples); files already there are kept, the new "
                   "ones get the next free name (videos-2.gif, ...)")
@click.option("--npy", type=click.Path(dir_okay=False), default=None,
              help="write the samples instead as a uint8 .npy array, videos [N, 30, 30, 30] or frames [N, 30, 30], "
                   "quantised like `vidgan data` (for outside metrics)")
@click.option("--overwrite", is_flag=True, help="replace existing sample files (and an existing --npy file)")
@click.option("--seed", type=SEED, default=0, show_default=True)
@device_option
def sample(checkpoint, n, out, npy, overwrite, seed, device):
    """A video checkpoint -> GIF grid + PNG strip; a frames checkpoint -> PNG grid of frames (or, with --npy,
    the samples as an array)."""
    if npy is not None and os.path.lexists(npy) and not overwrite:
        raise click.UsageError(f"--npy {npy} already exists; pass --overwrite to replace it, or name another file")
    if npy is not None and not npy.endswith(".npy"):
        raise click.UsageError(f"--npy {npy} must end in .npy")
    if npy is None and n > 1024:
        raise click.BadParameter(f"{n}: the picture files hold at most 1,024 samples (one grid); use --npy for "
                                 f"up to 100,000", param_hint="'--n'")
    device = resolve_device(device)
    from .sample import write_array, write_samples
    if npy is not None:
        path, shape = write_array(checkpoint, npy, n=n, seed=seed, device=device, overwrite=overwrite)
        click.echo(f"wrote {path} (uint8 {list(shape)})")
        return
    folder = Path(out) if out else Path(checkpoint).parent / "samples"
    for path in write_samples(checkpoint, folder, n=n, seed=seed, device=device, overwrite=overwrite):
        click.echo(f"wrote {path}")


@main.command("check")
@device_option
@click.option("--paper-size", is_flag=True, help="paper widths, K and batch sizes (GPU only)")
@click.option("--op", "ops", multiple=True, help="only this check (repeatable); the op column of the table "
                                                 "names them")
@click.option("--allow-fallback", is_flag=True, help="count PyTorch-fallback rows as passes")
@click.option("--tf32", is_flag=True, help="run the captured-step rows (CUDA graphs vs eager) with TF32 products; "
                                            "the op rows always check exact fp32 products")
@click.option("--allow-skip", is_flag=True,
              help="exit 0 although rows were not checked (e.g. the CUDA-graph rows on a CPU); they still print "
                   "as NOT CHECKED")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="also write the rows here (a new file; an existing one needs --overwrite)")
@click.option("--overwrite", is_flag=True, help="replace an existing --json file")
def check(device, paper_size, ops, allow_fallback, tf32, allow_skip, seed, json_path, overwrite):
    """Check every fast op against its reference twin on this machine (and, on a GPU, the CUDA-graph steps
    against eager steps).

    \b
    Exit status: 0 every row ran and passed; 1 a row failed;
    3 nothing failed but rows were NOT CHECKED (skipped: the CUDA-graph rows on a CPU).
    A row that was not checked is not a pass: pass --allow-skip to accept that (exit 0), or --op to choose rows.
    """
    if json_path and os.path.lexists(json_path) and not overwrite:
        raise click.UsageError(f"--json {json_path} already exists; pass --overwrite to replace it, or name another file")
    device = resolve_device(device)
    from .check_report import exit_status, format_table, write_json
    from .checks import check_header, run_checks, use_interpreter_on_cpu
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
        write_json(json_path, results, header, status, replace=overwrite)
    if status:
        raise click.exceptions.Exit(status)


@main.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--n", "n", type=click.IntRange(2, 10_000), default=1000, show_default=True,
              help="videos per set (real, generated, baseline), at most 10,000")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="output folder (default: CHECKPOINT's folder/eval); an earlier eval's files there are kept, the "
                   "new ones get the next free number (eval-2.json, eval-2.png, samples-2.gif)")
@click.option("--overwrite", is_flag=True, help="replace eval.json, eval.png and samples.gif")
@click.option("--seed", type=SEED, default=0, show_default=True)
@device_option
def eval_(checkpoint, n, out, overwrite, seed, device):
    """A video checkpoint -> metrics table (real, generated, random-code baseline), eval.json, eval.png, samples.gif."""
    device = resolve_device(device)
    from .evaluate import evaluate_checkpoint, format_table
    results, files = evaluate_checkpoint(checkpoint, Path(out) if out else Path(checkpoint).parent / "eval",
                                         n=n, seed=seed, device=device, overwrite=overwrite)
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
