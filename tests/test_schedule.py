"""Learning-rate schedules: hand-worked multipliers at warmup, middle and end, and LambdaLR driving them."""

from __future__ import annotations

import math

import pytest
import torch

from tiller.training.schedule import lr_schedule


def test_warmup_rises_linearly_from_zero_for_every_kind():
    for kind in ("constant", "linear", "cosine"):
        factor = lr_schedule(kind, warmup_steps=4, total_steps=12)
        assert [factor(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]  # s / 4, then the peak at s = 4


def test_constant_stays_at_one_after_warmup():
    factor = lr_schedule("constant", warmup_steps=2)
    assert [factor(s) for s in (2, 3, 100, 10_000)] == [1.0] * 4
    assert [lr_schedule("constant")(s) for s in (0, 1, 5)] == [1.0] * 3  # no warmup: 1 from the first step


def test_linear_falls_to_zero_at_the_last_step_and_stays():
    factor = lr_schedule("linear", warmup_steps=2, total_steps=10)  # decays over 10 - 2 = 8 steps
    assert factor(2) == 1.0
    assert factor(4) == pytest.approx(0.75)  # 1 - (4 - 2) / 8
    assert factor(6) == pytest.approx(0.5)  # 1 - 4 / 8
    assert factor(9) == pytest.approx(0.125)  # 1 - 7 / 8
    assert factor(10) == 0.0 and factor(15) == 0.0


def test_cosine_follows_half_a_period_down_to_zero():
    factor = lr_schedule("cosine", warmup_steps=0, total_steps=8)
    assert factor(0) == 1.0
    assert factor(2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # 0.8536
    assert factor(4) == pytest.approx(0.5)  # half way: cos(pi / 2) = 0
    assert factor(6) == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 4)))  # 0.1464
    assert factor(8) == pytest.approx(0.0, abs=1e-12) and factor(20) == pytest.approx(0.0, abs=1e-12)
    warm = lr_schedule("cosine", warmup_steps=2, total_steps=10)
    assert warm(1) == 0.5 and warm(2) == 1.0 and warm(6) == pytest.approx(0.5)  # the middle of 2..10


def test_lambda_lr_steps_the_optimizer_through_the_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule("linear", warmup_steps=2, total_steps=6))
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.0, 0.05, 0.1, 0.075, 0.05, 0.025, 0.0])  # 0.1 x (0, 1/2, 1, 3/4, 1/2, 1/4, 0)


@pytest.mark.parametrize("kind, warmup, total, says", [
    ("step", 0, 10, "expected one of constant, linear, cosine"),
    ("linear", -1, 10, "cannot be negative"),
    ("cosine", 10, 10, "above warmup_steps"),
    ("linear", 0, 0, "above warmup_steps"),
])
def test_a_schedule_that_cannot_run_is_refused(kind, warmup, total, says):
    with pytest.raises(ValueError, match=says):
        lr_schedule(kind, warmup, total)


def test_the_online_learner_sets_both_engines_learning_rates(tiny_policy_dir):
    from tiller.config import Config, LearnerConfig, ModelConfig
    from tiller.learner.trainer import PolicyTrainer

    trainer = PolicyTrainer(Config(model=ModelConfig(path=str(tiny_policy_dir)), learner=LearnerConfig(algorithm="ppo")),
                            tiny_policy_dir, with_critic=True)
    trainer.set_lr(3e-4, 2e-5)
    assert {g["lr"] for g in trainer.engine.optimizer.param_groups} == {3e-4}
    assert {g["lr"] for g in trainer.critic.optimizer.param_groups} == {2e-5}
