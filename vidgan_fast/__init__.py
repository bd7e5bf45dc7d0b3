"""vidgan_fast: a two-phase video GAN with a reference PyTorch path and a Triton/CUDA-graph fast path."""
from pathlib import Path as _Path

__version__ = "0.1.0"

# The repository's top-level folders kernels/ and benchmarks/ install as vidgan_fast.kernels and
# vidgan_fast.benchmarks (pyproject.toml, package-dir). A source tree used without installing (PYTHONPATH=.)
# finds them here, through this package's path; an installed package never takes this branch.
_source_tree = _Path(__file__).resolve().parent.parent
if (_source_tree / "pyproject.toml").is_file() and (_source_tree / "kernels" / "common.py").is_file():
    __path__.append(str(_source_tree))  # noqa: F821  (the package's own __path__)
