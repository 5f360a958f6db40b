"""What a user watches to see trouble coming, and the DPO log-prob reduction switch."""

from __future__ import annotations

import math

import pytest
import torch

from tiller.config import DPOConfig
from tiller.learner.dpo import preference_loss
from tiller.learner.metrics import KLWarning, progress_line
from tiller.metric_names import grouped_row

STEP = grouped_row({"step": 7, "policy_version": 7, "reward/mean": 0.5, "loss": 0.6, "samples_per_s": 10.0,
                    "staleness/mean": 1.0, "rewards/margin": 0.1, "rewards/accuracy": 0.75})


def line(m: dict, warning: str = "") -> str:
    return progress_line(m, total_steps=120, elapsed_s=70.0, eta_s=1130.0, warning=warning)


def test_the_progress_line_shows_step_of_total_elapsed_and_eta_and_skipped_steps():
    text = line(STEP)
    assert text.startswith("step   7/120 | 1:10 elapsed, eta 18:50 |")
    assert "SKIPPED" in line({**STEP, "train/skipped": 1.0}) and "SKIPPED" not in text


def test_the_kl_warning_fires_on_crossing_then_only_when_the_kl_has_grown_by_a_quarter():
    warn = KLWarning(20.0)
    said = [warn.check(kl) for kl in (12.0, 21.0, 22.0, 25.0, 26.3, 30.0, 19.0, 40.0)]
    assert [bool(w) for w in said] == [False, True, False, False, True, False, False, True]
    assert "KL to the reference 21.0 nats per response (> metrics.kl_warn_nats 20)" in said[1]
    assert "still growing" in said[4] and "(> metrics.kl_warn_nats" in said[7]  # back under 20, then crossed again
    assert not any(KLWarning(0.0).check(kl) for kl in (170.0, 1e9))  # 0: never
    assert not KLWarning(20.0).check(float("nan")) and not KLWarning(20.0).check(None)


def test_the_dpo_progress_line_shows_pair_accuracy_kl_and_response_length():
    text = line(grouped_row({**STEP, "kl/sequence": 43.2, "response_length/mean": 12.5}))
    assert "acc 0.75" in text and "kl 43.2" in text and "len 12.5" in text
    assert "kl " not in line(STEP)  # SimPO: no reference, no KL shown


def test_dpo_logprob_mean_divides_each_response_by_its_length():
    # policy [chosen, rejected] summed log-probs; the chosen response is 1 token, the rejected 4
    policy, reference = torch.tensor([-1.0, -8.0]), torch.tensor([-2.0, -4.0])
    lengths = torch.tensor([1.0, 4.0])
    summed, _ = preference_loss(policy, reference, lengths, DPOConfig(beta=0.5, logprob="sum"))
    # sum: margin = (-1 + 2) - (-8 + 4) = 5; mean: (-1 + 2) / 1 - (-8 + 4) / 4 = 2
    assert summed.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 5))), abs=1e-6)
    mean, _ = preference_loss(policy, reference, lengths, DPOConfig(beta=0.5, logprob="mean"))
    assert mean.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 2))), abs=1e-6)


def test_offpolicy_pair_weights_are_one_for_fresh_pairs_and_truncated_for_stale_ones():
    from tiller.learner.dpo import offpolicy_log_ratio, offpolicy_weights

    # three pairs of 2 + 3 = 5 tokens: sampled by this policy, by one it has moved away from, and towards
    behaviour = torch.tensor([-9.0, -4.0, -14.0])
    policy = torch.tensor([-3.0, -2.0, -4.0,  # chosen
                           -6.0, -7.0, -5.0])  # rejected
    tokens = torch.tensor([5.0, 5.0, 5.0])
    ratio = offpolicy_log_ratio(policy, behaviour, tokens)
    assert ratio.tolist() == pytest.approx([0.0, -1.0, 1.0])
    assert offpolicy_weights(ratio, cap=1.0).tolist() == pytest.approx([1.0, math.exp(-1.0), 1.0])
    assert offpolicy_weights(ratio, cap=2.0).tolist() == pytest.approx([1.0, math.exp(-1.0), 2.0])
    # a revision was never sampled: its weight is 1, not NaN
    assert offpolicy_weights(torch.tensor([float("nan")]), cap=1.0).tolist() == [1.0]


def test_weighted_pairs_scale_each_pairs_loss_and_its_gradient():
    policy = torch.tensor([-1.0, -2.0, -3.0, -1.5], requires_grad=True)  # two pairs
    reference = torch.tensor([-1.5, -1.5, -2.0, -2.0])
    lengths = torch.ones(4)
    cfg = DPOConfig(beta=0.5)
    per_pair = [preference_loss(policy[[i, 2 + i]], reference[[i, 2 + i]], lengths[:2], cfg)[0] for i in range(2)]
    weighted, _ = preference_loss(policy, reference, lengths, cfg, torch.tensor([1.0, 0.25]))
    assert weighted.item() == pytest.approx((per_pair[0].item() + 0.25 * per_pair[1].item()) / 2)
    weighted.backward()
    grad = policy.grad.clone()
    policy.grad = None
    (preference_loss(policy, reference, lengths, cfg)[0]).backward()
    assert grad[[0, 2]].tolist() == pytest.approx(policy.grad[[0, 2]].tolist())  # weight 1: unchanged
    assert grad[[1, 3]].tolist() == pytest.approx((0.25 * policy.grad[[1, 3]]).tolist())


def test_offpolicy_weighting_needs_the_untempered_sampling_distribution():
    from tiller.config import ConfigError, load_config

    load_config(None, ["learner.dpo.offpolicy_weight=is"])
    with pytest.raises(ConfigError, match="learner.dpo.offpolicy_weight.*temperature 1"):
        load_config(None, ["learner.dpo.offpolicy_weight=is", "rollout.temperature=0.7"])
    with pytest.raises(ConfigError, match="offpolicy_cap"):
        load_config(None, ["learner.dpo.offpolicy_weight=is", "learner.dpo.offpolicy_cap=0.5"])
