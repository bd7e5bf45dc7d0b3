"""Issue 29's command-line conventions: -h and --help everywhere, --version, closed sets as choice lists (exit 2),
help that shows each preset value once, --device auto said on stderr, --log-every N writing one line per N steps,
and every command line in README.md's code blocks parsing (read from the README, so the test follows its
rewrites). In-process (click's parser), except one process for the help of every command without torch."""
import importlib
import inspect
import json
import re
import runpy
from importlib import metadata
import shlex
import sys
from pathlib import Path

import click
import pytest
from cli_helpers import one_error, vidgan  # tests/cli_helpers.py

from vidgan_fast.cli import main
from vidgan_fast.config import PRESETS

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [["train", "frames"], ["train", "video"], ["train", "all"], ["train"], ["sample"], ["data"], ["check"],
            ["eval"], ["bench"], ["bench", "--static"], []]

pytestmark = pytest.mark.usefixtures("one_thread")    # tests/conftest.py


def test_dash_h_and_version_answer_everywhere():
    for command in COMMANDS:
        for flag in ("-h", "--help"):
            result = vidgan(*command, flag)
            assert result.stdout.lower().startswith("usage: vidgan"), (command, flag, result.stdout[:200])
    assert vidgan("--version").stdout.strip() == f"vidgan {metadata.version('vidgan-fast')}"


def test_help_shows_a_preset_value_only_where_the_presets_differ():
    text = " ".join(vidgan("train", "all", "-h").stdout.split())
    assert "None" not in text and "[default: mean]" in text and "[default: auto]" in text
    assert f"[paper: 48; tiny: 8; small: {PRESETS['small'].frames_k}]" in text        # --frames-k
    assert "[paper, tiny: 0; small: 1]" in text                                        # --cpu-threads
    assert "[paper: 1024,1024,512,256; tiny, small: 32,32,16,64]" in text              # --gf-widths
    assert len(vidgan("train", "all", "-h").stdout.splitlines()) < 135                  # was ~150; 130 + --cpu-threads


@pytest.mark.parametrize("args, fragment", [
    (["train", "all", "--loss", "foo"], "Invalid value for '--loss': 'foo' is not one of 'mean', 'sum', 'hypervolume'"),
    (["train", "video", "--video-codes", "cube", "--frames", "f.ckpt"], "Invalid value for '--video-codes'"),
    (["train", "frames", "--preset", "huge"], "Invalid value for '--preset'"),
    (["check", "--device", "tpu"], "Invalid value for '--device'"),
    (["train", "frames", "--k", "0"], "invalid --k 0: must be a positive integer"),
])
def test_a_wrong_command_line_exits_2(args, fragment, tmp_path):
    result = vidgan(*args, "--out", tmp_path / "run", ok=False) if args[0] == "train" else vidgan(*args, ok=False)
    assert result.exit_code == 2 and fragment in one_error(result)
    assert not (tmp_path / "run").exists()


def test_device_auto_and_the_preset_it_implies_are_said_on_stderr(tmp_path):
    result = vidgan("train", "frames", "--steps", 1, "--out", tmp_path / "run")
    assert "device: cpu (--device auto: no CUDA GPU is available)" in result.stderr      # CI has no GPU
    assert "preset: tiny (no --preset given; the default on the CPU)" in result.stderr
    assert "device: cpu (--device auto" in vidgan("sample", tmp_path / "run" / "frames.ckpt", "--n", 2).stderr


def test_log_every_writes_one_line_per_n_steps_and_resume_keeps_each_step_once(tmp_path):
    args = ["--preset", "tiny", "--log-every", 3, "--checkpoint-every", 4]
    vidgan("train", "frames", *args, "--steps", 4, "--out", tmp_path / "split")
    vidgan("train", "frames", "--resume", "--steps", 8, "--out", tmp_path / "split")
    vidgan("train", "frames", *args, "--steps", 8, "--out", tmp_path / "straight")
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("split", "straight")]
    # a line every 3 steps and at each checkpoint (4, 8): each step counted in exactly one line
    assert [(r["step"], r["steps"]) for r in logs[1]] == [(3, 3), (4, 1), (6, 2), (8, 2)]
    assert [(r["step"], r["steps"], r["d_loss"], r["g_loss"]) for r in logs[0]] == \
        [(r["step"], r["steps"], r["d_loss"], r["g_loss"]) for r in logs[1]]
    assert all(r["it_s"] > 0 for r in logs[0] + logs[1])
    help_text = " ".join(vidgan("train", "frames", "-h").stdout.split())
    assert "the mean d_loss and g_loss over its steps, and it_s over its own interval" in help_text


# ----------------------------------------------------------------------------------------------- README

def readme_command_lines(text: str) -> list[list[str]]:
    """The argument lists of every `vidgan ...` / `python -m vidgan_fast ...` / `torchrun ... -m vidgan_fast ...`
    command in README's code blocks (fenced, or indented 4 spaces), with continuation lines joined, `# comments`
    dropped and optional `[...]` parts kept. A `python -m vidgan_fast.MODULE` line gives ['-m', MODULE, ...]."""
    blocks, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            blocks.append(line.strip())
    commands, pending = [], ""
    for line in "\n".join(blocks).splitlines():
        pending += " " + line
        if line.endswith("\\"):
            pending = pending[:-1]
            continue
        for segment in pending.split("&&"):
            if not re.search(r"(^|\s)(vidgan|-m\s+vidgan_fast\S*)\s", segment):
                continue
            words = [w.strip("[]") for w in shlex.split(segment, comments=True)]
            words = [w for w in words if w]
            for i, w in enumerate(words):
                if w == "vidgan" and i + 1 < len(words) and words[i + 1] in [*main.commands, "-h", "--help",
                                                                             "--version"]:
                    commands.append(words[i + 1:])
                    break
                if w == "-m" and i + 1 < len(words) and words[i + 1].startswith("vidgan_fast"):
                    module = words[i + 1]
                    commands.append(words[i + 2:] if module == "vidgan_fast" else ["-m", module, *words[i + 2:]])
                    break
        pending = ""
    return commands


def parse_only(args: list[str], monkeypatch) -> None:
    """Parse `vidgan ARGS` as the command would, without running it: click's parser and conversions for the click
    commands, the argparse parsers for bench and kernels, -h for other modules. A bad line raises."""
    if args[:1] == ["-m"]:                       # another module's own parser: its main(ARGS + ['-h'])
        module = importlib.import_module(args[1])
        with pytest.raises(SystemExit) as e:
            if hasattr(module, "main") and inspect.signature(module.main).parameters:
                module.main([*args[2:], "-h"])
            else:
                monkeypatch.setattr(sys, "argv", [args[1], *args[2:], "-h"])
                runpy.run_module(args[1], run_name="__main__")
        assert e.value.code in (0, None), args
        return
    command, ctx, name = main, None, "vidgan"
    while isinstance(command, click.Group):
        ctx = click.Context(command, info_name=name, parent=ctx)
        name, args = args[0], args[1:]
        command = command.get_command(ctx, name)
        assert command is not None, name
    if command.name == "bench":
        if "--static" in args:
            from vidgan_fast.lab.report import build_parser
            build_parser().parse_args([a for a in args if a != "--static"])
        else:
            from vidgan_fast.benchmarks.report import build_parser
            build_parser().parse_args(args)
    elif command.name == "kernels":
        from vidgan_fast.lab import gate as kernel_gate

        def parsed(*a, **kw):
            raise StopIteration("parsed")
        monkeypatch.setattr(kernel_gate, "run", parsed)
        with pytest.raises(StopIteration):
            kernel_gate.main(args)
    else:
        command.make_context(command.name, list(args), parent=ctx)      # parses and converts every option


def test_every_command_line_in_the_readme_parses(monkeypatch):
    commands = readme_command_lines((REPO / "README.md").read_text())
    assert len(commands) >= 15 and ["train", "all", "--preset", "small", "--out", "runs/small"] in commands
    for args in commands:
        try:
            parse_only(list(args), monkeypatch)
        except (click.ClickException, SystemExit) as e:
            pytest.fail(f"README's `vidgan {' '.join(args)}` does not parse: {e}")
    with pytest.raises(click.ClickException):                # the check can fail
        parse_only(["sample", "x.ckpt", "--n", "many"], monkeypatch)
