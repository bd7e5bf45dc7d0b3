"""vidgan_fast: a two-phase video GAN with a reference PyTorch path and a Triton/CUDA-graph fast path."""
__version__ = "0.1.0"
