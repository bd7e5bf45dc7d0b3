"""Test set-up. Without a CUDA GPU, Triton kernels run through Triton's interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton.jit decorates any kernel, hence here, before any import of kernels/.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device():
    return DEVICE


def _needs_gate(item) -> bool:
    return "gate" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    gated = [item for item in items if _needs_gate(item)]      # the compile gate's tests run last
    items[:] = [item for item in items if not _needs_gate(item)] + gated
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny
    models gain nothing from intra-op threads, and on a busy 2-core machine they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _interpreter_cannot_run() -> str | None:
    """Why Triton's interpreter cannot run the kernels here, or None. Triton 3.6's interpreter calls int() on
    1-element arrays (a loop bound read from a tensor), which numpy >= 2.4 refuses: every kernel test would fail
    with the same TypeError. One tiny launch (a dgrad: a tensor loop bound) finds out."""
    try:
        from vidgan_fast.kernels import conv
        x = torch.randn(1, 1, 1, 4, 4, 16)
        conv.conv_dgrad(torch.randn(1, 1, 1, 2, 2, 16), torch.randn(1, 16, 1, 2, 2, 16), x, (1, 2, 2), (1, 2, 2),
                        (0, 0, 0), False)
    except ImportError:
        return None                       # no Triton: the kernel tests skip or fall back on their own
    except Exception as e:                # noqa: BLE001 - any failure of the interpreter itself
        import numpy
        import triton
        return (f"Triton {triton.__version__}'s interpreter cannot run the kernels with numpy {numpy.__version__} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); install numpy<2.4, or a Triton newer than "
                f"3.6, and run the tests again")
    return None


def pytest_sessionstart(session):
    if os.environ.get("TRITON_INTERPRET") == "1" and not session.config.option.collectonly:
        why = _interpreter_cannot_run()
        if why:
            pytest.exit(why, returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_collection_finish(session):
    """The items are final here (after -k, -m, --lf, --ff): if one of them needs the compile gate, its subprocess
    starts now and compiles beside the rest of the suite (tests/test_compile_gate.py)."""
    gated = [item for item in session.items if _needs_gate(item)]
    if gated and not session.config.option.collectonly:
        gated[0].module.start_gate()
