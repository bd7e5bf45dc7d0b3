"""Triton kernels and their launch wrappers. No autograd, no nn.Module: those live in vidgan_fast.fast."""
