"""The lab needs Triton in both of its modes: compiled (to bind launches as a GPU would and compile them) and
interpreted (to run a kernel's own code on the CPU, lab/sectors.py). Triton picks its mode once per process, when
it is imported (TRITON_INTERPRET), so a lab function that needs the other mode runs in a child process:

    result = call_in_mode("compiled", "vidgan_fast.lab.cost", "project_here", cfg, "tf32")

Arguments and the result travel by pickle through a temporary folder; the child's stderr tail becomes the error.
"""
from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import tempfile

MODES = ("compiled", "interpreted")


def mode_env(mode: str) -> dict:
    """os.environ for a child process whose Triton runs in `mode` (and this process's import path: a module this
    process imported from a folder it put on sys.path, the tests' among them, is found there too)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if mode == "compiled":
        env.pop("TRITON_INTERPRET", None)
    else:
        env["TRITON_INTERPRET"] = "1"
    return env


def call_in_mode(mode: str, module: str, function: str, *args, **kwargs):
    """module.function(*args, **kwargs) in a fresh Python process whose Triton runs in `mode`."""
    with tempfile.TemporaryDirectory(prefix="vidgan-lab-") as tmp:
        src, dst = os.path.join(tmp, "call.pkl"), os.path.join(tmp, "result.pkl")
        with open(src, "wb") as f:
            pickle.dump((module, function, args, kwargs), f)
        proc = subprocess.run([sys.executable, "-m", "vidgan_fast.lab.processes", src, dst], env=mode_env(mode),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"{module}.{function} failed in a {mode}-mode process:\n{tail}")
        with open(dst, "rb") as f:
            return pickle.load(f)


def _main(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        module, function, args, kwargs = pickle.load(f)
    result = getattr(importlib.import_module(module), function)(*args, **kwargs)
    with open(dst, "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    _main(*sys.argv[1:3])
