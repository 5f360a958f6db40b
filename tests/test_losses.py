"""Preference losses against values worked out by hand from the papers' equations."""

from __future__ import annotations

import math

import pytest
import torch

from tiller.training import losses

PC = torch.tensor([-1.0, -3.0])  # policy log p(chosen), summed over response tokens
PR = torch.tensor([-2.0, -1.0])
RC = torch.tensor([-1.5, -2.0])
RR = torch.tensor([-1.5, -2.0])
LC = torch.tensor([2.0, 4.0])  # response lengths
LR = torch.tensor([1.0, 2.0])


def softplus(x: float) -> float:  # -log sigma(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def test_dpo_sigmoid_matches_hand_values():
    # pair 1: h = (−1+1.5) − (−2+1.5) = 1, beta*h = 0.5 -> −log σ(0.5)
    # pair 2: h = (−3+2) − (−1+2) = −2, beta*h = −1 -> −log σ(−1)
    loss, m = losses.dpo_sigmoid_loss(PC, PR, RC, RR, beta=0.5)
    assert loss.item() == pytest.approx((softplus(-0.5) + softplus(1.0)) / 2, abs=1e-6)
    assert m["rewards/chosen"] == pytest.approx((0.25 + -0.5) / 2)
    assert m["rewards/rejected"] == pytest.approx((-0.25 + 0.5) / 2)
    assert m["rewards/accuracy"] == pytest.approx(0.5)


def test_conservative_dpo_label_smoothing():
    loss, _ = losses.dpo_sigmoid_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    pair1 = 0.9 * softplus(-0.5) + 0.1 * softplus(0.5)
    pair2 = 0.9 * softplus(1.0) + 0.1 * softplus(-1.0)
    assert loss.item() == pytest.approx((pair1 + pair2) / 2, abs=1e-6)


def test_ipo_matches_hand_values():
    # per-token log ratios: pair 1 h = 0.5/2 − (−0.5/1) = 0.75; pair 2 h = −1/4 − 1/2 = −0.75
    # target 1/(2·0.5) = 1: losses (0.75−1)² = 0.0625 and (−1.75)² = 3.0625
    loss, _ = losses.ipo_loss(PC, PR, RC, RR, LC, LR, beta=0.5)
    assert loss.item() == pytest.approx((0.0625 + 3.0625) / 2, abs=1e-6)


def test_simpo_matches_hand_values():
    # pair 1: 2·(−1)/2 − 2·(−2)/1 − 0.5 = 2.5 ; pair 2: 2·(−3)/4 − 2·(−1)/2 − 0.5 = −1
    loss, m = losses.simpo_loss(PC, PR, LC, LR, beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx((softplus(-2.5) + softplus(1.0)) / 2, abs=1e-6)
    assert m["rewards/margin"] == pytest.approx(((-1 + 4) + (-1.5 + 1)) / 2)


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    loss, _ = losses.dpo_sigmoid_loss(pc, pr, RC, RR, beta=0.5)
    loss.backward()
    assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0)


def test_sequence_logprobs_sums_only_response_tokens():
    # vocab 3, one sequence of 4 tokens; the response is tokens 2 and 3
    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([2.0, 0.0, 0.0])  # predicts token 2 (id 0)
    input_ids = torch.tensor([[1, 2, 0, 1]])
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    expected = (2 - math.log(math.exp(2) + 2)) + (-math.log(3))  # token 2 under row 1, token 3 uniform
    assert losses.sequence_logprobs(logits, input_ids, mask).item() == pytest.approx(expected, abs=1e-6)
