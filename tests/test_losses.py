"""Losses: per-discriminator BCE and the generator's combinations on known inputs."""
import math

import pytest
import torch

from vidgan_fast.losses import COMBINATIONS, combine, discriminator_losses, generator_losses

LOG2 = math.log(2.0)


def test_zero_logits_give_log2():
    zeros = torch.zeros(4, 6)
    torch.testing.assert_close(discriminator_losses(zeros, zeros), torch.full((4,), 2 * LOG2))
    torch.testing.assert_close(generator_losses(zeros), torch.full((4,), LOG2))


def test_known_values_per_discriminator():
    real = torch.tensor([[2.0, -1.0], [0.0, 0.0]])
    fake = torch.tensor([[-3.0, 0.5], [1.0, 1.0]])
    sp = lambda x: math.log1p(math.exp(x))     # softplus
    expected_d = [(sp(-2) + sp(1)) / 2 + (sp(-3) + sp(0.5)) / 2, LOG2 + sp(1)]
    torch.testing.assert_close(discriminator_losses(real, fake), torch.tensor(expected_d))
    torch.testing.assert_close(generator_losses(fake), torch.tensor([(sp(3) + sp(-0.5)) / 2, sp(-1)]))


def test_combinations_on_known_losses():
    l = torch.tensor([1.0, 2.0, 4.0])
    assert combine(l, "mean").item() == pytest.approx(7 / 3)
    assert combine(l, "sum").item() == pytest.approx(7.0)
    eta = 1.5 * 4.0
    assert combine(l, "hypervolume").item() == pytest.approx(-(math.log(eta - 1) + math.log(eta - 2) + math.log(eta - 4)))
    w = torch.softmax(0.8 * l, 0)
    assert combine(l, "gman").item() == pytest.approx((w * l).sum().item())


def test_combination_gradients():
    l = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    combine(l, "hypervolume").backward()
    eta = 6.0    # detached: no gradient through eta
    torch.testing.assert_close(l.grad, torch.tensor([1 / (eta - 1), 1 / (eta - 2), 1 / (eta - 4)]))
    l.grad = None
    combine(l, "gman").backward()
    torch.testing.assert_close(l.grad, torch.softmax(0.8 * l.detach(), 0))   # weights detached
    l.grad = None
    combine(l, "mean").backward()
    torch.testing.assert_close(l.grad, torch.full((3,), 1 / 3))


def test_hypervolume_focuses_on_the_worst_discriminator():
    l = torch.tensor([0.5, 0.6, 3.0], requires_grad=True)
    combine(l, "hypervolume").backward()
    assert l.grad.argmax().item() == 2


def test_unknown_combination():
    with pytest.raises(ValueError, match="unknown loss combination 'max'"):
        combine(torch.ones(2), "max")
    assert COMBINATIONS == ("mean", "sum", "hypervolume", "gman")
