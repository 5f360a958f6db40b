"""What a user watches to see trouble coming, and the DPO log-prob reduction switch."""

from __future__ import annotations

import math

import pytest
import torch

from tiller.config import DPOConfig
from tiller.learner.dpo import preference_loss
from tiller.learner.metrics import progress_line

STEP = {"step": 7, "policy_version": 7, "reward/mean": 0.5, "loss": 0.6, "samples_per_s": 10.0,
        "staleness/mean": 1.0, "rewards/margin": 0.1}


def test_the_progress_line_warns_when_kl_passes_the_bound_and_when_a_step_was_skipped():
    assert "WARNING" not in progress_line({**STEP, "kl/sequence": 12.0}, kl_warn_nats=20)
    line = progress_line({**STEP, "kl/sequence": 170.0}, kl_warn_nats=20)
    assert "WARNING: KL to the reference 170.0 nats per response (> 20)" in line
    assert "WARNING" not in progress_line({**STEP, "kl/sequence": 170.0}, kl_warn_nats=0)  # 0: never
    assert "SKIPPED" in progress_line({**STEP, "skipped": 1.0})


def test_dpo_logprob_mean_divides_each_response_by_its_length():
    # policy [chosen, rejected] summed log-probs; the chosen response is 1 token, the rejected 4
    policy, reference = torch.tensor([-1.0, -8.0]), torch.tensor([-2.0, -4.0])
    lengths = torch.tensor([1.0, 4.0])
    summed, _ = preference_loss(policy, reference, lengths, DPOConfig(beta=0.5, logprob="sum"))
    # sum: margin = (-1 + 2) - (-8 + 4) = 5; mean: (-1 + 2) / 1 - (-8 + 4) / 4 = 2
    assert summed.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 5))), abs=1e-6)
    mean, _ = preference_loss(policy, reference, lengths, DPOConfig(beta=0.5, logprob="mean"))
    assert mean.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 2))), abs=1e-6)
