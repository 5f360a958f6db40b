"""PPO / GRPO / RLOO pieces against values computed independently here, from the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from tiller.training import pg_losses as pg


def test_gae_matches_a_loop_written_from_the_formula():
    rewards = torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.2, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.4, 0.5, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = pg.gae(rewards, values, mask, gamma, lam)
    for b in range(2):
        n = int(mask[b].sum())
        expected = [0.0] * n
        for t in range(n):  # A_t = sum_l (gamma lam)^l delta_{t+l}, V beyond the end = 0
            total = 0.0
            for l in range(n - t):
                v_next = values[b, t + l + 1].item() if t + l + 1 < n else 0.0
                delta = rewards[b, t + l].item() + gamma * v_next - values[b, t + l].item()
                total += (gamma * lam) ** l * delta
            expected[t] = total
        assert adv[b, :n].tolist() == pytest.approx(expected, abs=1e-6)
        assert ret[b, :n].tolist() == pytest.approx([e + values[b, t].item() for t, e in enumerate(expected)], abs=1e-6)
        assert adv[b, n:].abs().sum() == 0


def test_whiten_over_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = pg.masked_whiten(x, mask)
    assert out[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4)  # mean 2, unbiased std 1
    assert pg.masked_whiten(x, mask, shift_mean=False)[0, :3].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-4)


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert pg.kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    k3 = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]  # r - 1 - log r, r = pi_ref / pi
    assert pg.kl_estimate(logp, ref, "k3").tolist() == pytest.approx(k3, abs=1e-6)
    k2 = [0.5 * 0.5 ** 2, 0.5 * 1.0 ** 2]  # 1/2 (log pi - log pi_ref)^2
    assert pg.kl_estimate(logp, ref, "k2").tolist() == pytest.approx(k2)
    with pytest.raises(ValueError):
        pg.kl_estimate(logp, ref, "k4")


def test_grpo_and_rloo_advantages():
    scores = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.4, 0.6, 0.8]])
    grpo = pg.group_advantages(scores)
    std0 = math.sqrt(sum((s - 0.5) ** 2 for s in [1, 0, 0, 1]) / 3)
    assert grpo[0].tolist() == pytest.approx([0.5 / std0, -0.5 / std0, -0.5 / std0, 0.5 / std0], abs=1e-4)
    assert pg.group_advantages(scores, normalise_std=False)[1].tolist() == pytest.approx([-0.3, -0.1, 0.1, 0.3])
    rloo = pg.leave_one_out_advantages(scores)
    for i in range(4):
        others = [scores[1, j].item() for j in range(4) if j != i]
        assert rloo[1, i].item() == pytest.approx(scores[1, i].item() - sum(others) / 3, abs=1e-6)


def test_clipped_policy_loss_by_hand():
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0]])  # ratios 1.5, 0.5 against prox logp 0
    prox = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = pg.clipped_policy_loss(logp, prox, prox, adv, mask, clip_eps=0.2, is_cap=None)
    # token 1: min(1.5, 1.2) = 1.2 ; token 2: min(0.5, 0.8) = 0.5 ; token 3 masked
    assert loss.item() == pytest.approx(-(1.2 + 0.5) / 2, abs=1e-6)
    assert m["policy/clipfrac"] == pytest.approx(1.0)


def test_truncated_importance_weight():
    prox = torch.tensor([[0.0, 0.0]])
    behaviour = torch.tensor([[math.log(0.25), math.log(2.0)]])  # pi_prox / pi_behaviour = 4 and 0.5
    adv, mask = torch.ones(1, 2), torch.ones(1, 2)
    loss, m = pg.clipped_policy_loss(prox, prox, behaviour, adv, mask, clip_eps=0.2, is_cap=2.0)
    assert loss.item() == pytest.approx(-(2.0 + 0.5) / 2, abs=1e-6)  # weight 4 capped at 2
    assert m["is/truncated_frac"] == pytest.approx(0.5)


def test_first_epoch_on_policy_ratio_is_one():
    torch.manual_seed(0)
    logp = -torch.rand(3, 5)
    loss, m = pg.clipped_policy_loss(logp, logp.clone(), logp.clone(), torch.randn(3, 5), torch.ones(3, 5), 0.2, 2.0)
    assert m["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert m["policy/approx_kl"] == pytest.approx(0.0, abs=1e-6) and m["policy/clipfrac"] == 0.0


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.3]])
    mask = torch.ones(1, 2)
    loss, m = pg.clipped_value_loss(values, old, returns, mask, clip=0.2)
    # token 1: unclipped (1-2)^2 = 1, clipped V = 0.7 -> (0.7-2)^2 = 1.69 -> max 1.69 ; token 2: 0.09
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09) / 2, abs=1e-6)
    assert m["value/clipfrac"] == pytest.approx(0.5)


def test_token_entropy_uniform():
    assert pg.token_entropy(torch.zeros(1, 2, 4)).flatten().tolist() == pytest.approx([math.log(4)] * 2)
