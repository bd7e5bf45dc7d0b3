"""Non-saturating GAN losses for a bank of K discriminators, and the generator's ways of combining them.

Logits come as [K, B] (one row per discriminator). Each discriminator k trains on its own loss; the generator
minimises one scalar made from the K per-discriminator losses (`mean`, `sum`, `hypervolume` or `gman`: see combine).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import COMBINATIONS  # noqa: F401  (re-exported: the names combine() accepts)
HYPERVOLUME_SLACK = 1.5
GMAN_TEMPERATURE = 0.8


def discriminator_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """[K] losses: BCE(real, 1) + BCE(fake, 0) for each discriminator, averaged over the batch."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits), reduction="none")
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits), reduction="none")
    return real.mean(dim=-1) + fake.mean(dim=-1)


def generator_losses(fake_logits: torch.Tensor) -> torch.Tensor:
    """[K] non-saturating generator losses BCE(fake, 1), averaged over the batch."""
    return F.binary_cross_entropy_with_logits(
        fake_logits, torch.ones_like(fake_logits), reduction="none").mean(dim=-1)


def combine(losses: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """One generator loss from the K per-discriminator losses.

    mean: average; sum: total; hypervolume: -sum_k log(eta - l_k) with eta = 1.5 * max_k l_k (detached,
    recomputed each call); gman: softmax(0.8 * l) weights (detached) times the losses.
    """
    if mode == "mean":
        return losses.mean()
    if mode == "sum":
        return losses.sum()
    if mode == "hypervolume":
        eta = HYPERVOLUME_SLACK * losses.detach().max()
        return -torch.log(eta - losses).sum()
    if mode == "gman":
        weights = torch.softmax(GMAN_TEMPERATURE * losses.detach(), dim=0)
        return (weights * losses).sum()
    raise ValueError(f"unknown loss combination {mode!r}; choose one of {', '.join(COMBINATIONS)}")
