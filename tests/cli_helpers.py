"""Running `vidgan ...` in-process for the CLI tests (tests/test_cli.py, test_ux.py, test_check.py, ...)."""
from click.testing import CliRunner

from vidgan_fast.cli import main


def vidgan(*args, ok=True):
    """`vidgan ARGS` through click's runner; with ok=True the command must exit 0."""
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="vidgan")
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def one_error(result) -> str:
    """The one `error: ...` line a failed command ends with (and no traceback)."""
    assert result.exit_code != 0 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and sum(x.startswith("error: ") for x in lines) == 1, lines
    assert "Errno" not in lines[-1] and ".tmp" not in lines[-1]
    return lines[-1]
