"""The Bradley-Terry reward-model loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tiller.training.losses import bradley_terry_loss

CHOSEN = torch.tensor([1.0, -0.5, 2.0])
REJECTED = torch.tensor([0.0, 0.5, 2.0])


def softplus(x: float) -> float:  # -log sigma(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def test_bradley_terry_matches_hand_values():
    # differences r_c - r_r: 1, -1, 0 -> -log sigma(d) = softplus(-d): log(1+e^-1), log(1+e), log 2
    loss, m = bradley_terry_loss(CHOSEN, REJECTED)
    assert loss.item() == pytest.approx((softplus(-1) + softplus(1) + math.log(2)) / 3, abs=1e-6)
    assert m["accuracy"] == pytest.approx(1 / 3)  # only the first pair is ranked right (a tie is not)
    assert m["margin"] == pytest.approx(0.0)  # (1 - 1 + 0) / 3
    assert m["chosen"] == pytest.approx(2.5 / 3) and m["rejected"] == pytest.approx(2.5 / 3)


def test_a_margin_asks_for_more_than_a_correct_order():
    # margin 1: -log sigma(d - 1) for d = 1, -1, 0: log 2, softplus(2), softplus(1)
    loss, _ = bradley_terry_loss(CHOSEN, REJECTED, margin=1.0)
    assert loss.item() == pytest.approx((math.log(2) + softplus(2) + softplus(1)) / 3, abs=1e-6)


def test_centering_adds_the_squared_sum_of_each_pair():
    # (r_c + r_r)^2 = 1, 0, 16, times 0.01, averaged with the pairwise terms
    loss, _ = bradley_terry_loss(CHOSEN, REJECTED, center_coef=0.01)
    plain = (softplus(-1) + softplus(1) + math.log(2)) / 3
    assert loss.item() == pytest.approx(plain + 0.01 * (1 + 0 + 16) / 3, abs=1e-6)


def test_the_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = CHOSEN.clone().requires_grad_(), REJECTED.clone().requires_grad_()
    bradley_terry_loss(chosen, rejected)[0].backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises r_chosen, lowers r_rejected
    # d/d r_c of mean softplus(-d) = -sigma(-d) / B: for d = 1: -sigma(-1)/3
    assert chosen.grad[0].item() == pytest.approx(-1 / (1 + math.e) / 3, abs=1e-6)
