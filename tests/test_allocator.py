"""allocator.keep_freed_memory: a large tensor allocated again and again stops costing page faults (glibc)."""
import subprocess
import sys

import pytest

# In a fresh process: minor page faults of 20 allocations of a 64 MB tensor (with a small one beside it, as a
# training step has), after 20 that warm the allocator up, with `keep` or without.
PROBE = """
import resource, sys, torch
from vidgan_fast.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():
    x, small = torch.empty(16 * 2 ** 20).fill_(1.0), torch.empty(100)
for _ in range(20):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    kept, n = out.split()
    return kept, int(n)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults():
    _, plain = faults("plain")
    kept, reused = faults("keep")
    assert kept == "True"
    assert plain > 20 * 10_000 and reused < 1_000, (plain, reused)     # 16,384 pages a tensor without it


def test_the_cli_keeps_freed_memory(monkeypatch):
    from click.testing import CliRunner
    from vidgan_fast import cli
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1))
    assert CliRunner().invoke(cli.main, ["check", "--help"]).exit_code == 0 and calls == [1]
