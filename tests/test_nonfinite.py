"""Nothing non-finite trains: NaN losses and gradients are skipped, a run of them stops the learner,
and NaN weights are never published or saved. Real DeepSpeed engines on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tiller.config import Config, LearnerConfig, ModelConfig, PGConfig
from tiller.learner.coordinator import ScoredPrompt
from tiller.learner.dpo import dpo_step
from tiller.learner.trainer import PolicyTrainer
from tiller.learner.publish import WeightPublisher
from tiller.learner.pg import pg_step
from tiller.training.guard import NonFiniteTraining

pytestmark = pytest.mark.slow


def judged(n=4, k=2, seed=0, logprob_fill: float | None = None) -> list[ScoredPrompt]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        responses = [rng.integers(3, 34, int(rng.integers(3, 8))).astype(np.int32) for _ in range(k)]
        logprobs = [-rng.random(len(r)).astype(np.float32) for r in responses]
        if logprob_fill is not None:
            logprobs = [np.full(len(r), logprob_fill, np.float32) for r in responses]
        items.append(ScoredPrompt(i, 1, 0, rng.integers(3, 34, 5).astype(np.int32), responses, logprobs,
                                  np.array([1.0, 0.0], np.float32), np.zeros(k, bool), pairs=((0, 1),)))
    return items


def weights(trainer) -> dict[str, torch.Tensor]:
    return {n: t for b in trainer.weight_buckets(1 << 20) for n, t in b}


def test_grpo_with_nan_behaviour_logprobs_skips_every_step_then_stops(tiny_policy_dir):
    """What a NaN-returning actor did before the door checked: GRPO's loss was NaN on every step."""
    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir)),
                 learner=LearnerConfig(algorithm="grpo", lr=1e-3, batch_size=4, max_nonfinite_steps=3,
                                       pg=PGConfig(ppo_epochs=1)))
    trainer = PolicyTrainer(cfg, tiny_policy_dir)
    before = weights(trainer)
    for _ in range(2):
        metrics = pg_step(trainer, judged(logprob_fill=math.nan), cfg, pad_id=0)
        assert metrics["skipped"] == 1.0 and math.isnan(metrics["loss"])
    after = weights(trainer)
    assert all(torch.equal(before[n], after[n]) for n in before), "a NaN loss moved the weights"
    with pytest.raises(NonFiniteTraining, match="3 optimizer steps in a row"):
        pg_step(trainer, judged(logprob_fill=math.nan), cfg, pad_id=0)
    assert trainer.guard.skipped == 3
    metrics = pg_step(trainer, judged(), cfg, pad_id=0)  # finite data trains again and resets the count
    assert metrics["skipped"] == 0.0 and trainer.guard.in_a_row == 0


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_a_nan_gradient_from_a_finite_loss_is_not_applied(tiny_policy_dir, zero_stage):
    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir)),
                 learner=LearnerConfig(lr=1e-3, batch_size=4, zero_stage=zero_stage))
    trainer = PolicyTrainer(cfg, tiny_policy_dir)
    first = next(trainer.module.parameters())
    hook = first.register_hook(lambda grad: grad * math.nan)  # poisons one gradient, not the loss
    before = weights(trainer)
    metrics = dpo_step(trainer, judged(), cfg, pad_id=0)
    assert math.isfinite(metrics["loss"]) and metrics["skipped"] == 1.0
    assert all(torch.equal(before[n], after) for n, after in weights(trainer).items())
    hook.remove()
    metrics = dpo_step(trainer, judged(), cfg, pad_id=0)
    assert metrics["skipped"] == 0.0 and math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
    assert any(not torch.equal(before[n], after) for n, after in weights(trainer).items())


def test_nan_weights_are_never_published_or_saved(tiny_policy_dir, tmp_path):
    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir)), learner=LearnerConfig(batch_size=4))
    trainer = PolicyTrainer(cfg, tiny_policy_dir)
    publisher = WeightPublisher(trainer, torch.float32, 1 << 20)
    assert publisher.snapshot(1)[0].version == 1
    with torch.no_grad():
        trainer.module.model.norm.weight[0] = math.nan
    with pytest.raises(NonFiniteTraining, match="publish policy version 2: weight model.norm.weight"):
        publisher.snapshot(2)
    with pytest.raises(NonFiniteTraining, match="save"):
        trainer.save(tmp_path / "final")
    assert not (tmp_path / "final" / "config.json").exists()


def ppo_trainer(model_dir, max_nonfinite_steps=3):
    """PPO with one optimizer step per engine per learner step, so step counts are guard counts."""
    cfg = Config(model=ModelConfig(path=str(model_dir)),
                 learner=LearnerConfig(algorithm="ppo", lr=1e-3, batch_size=4, max_nonfinite_steps=max_nonfinite_steps,
                                       pg=PGConfig(ppo_epochs=1, minibatches=1, target_kl=0.0, critic_lr=1e-3)))
    return cfg, PolicyTrainer(cfg, model_dir, with_critic=True)


def steps_until_stopped(trainer, cfg, items, limit: int) -> tuple[int, str]:
    """(learner steps taken until NonFiniteTraining, counting the one that raised; its message)."""
    for taken in range(1, limit + 1):
        try:
            pg_step(trainer, items, cfg, pad_id=0)
        except NonFiniteTraining as e:
            return taken, str(e)
    pytest.fail(f"{limit} learner steps with a non-finite engine and no NonFiniteTraining")


def test_a_nan_policy_stops_even_while_the_critic_trains(tiny_policy_dir):
    """One guard was shared: each good critic step reset the policy's count, so a policy whose every
    step was skipped never stopped the run (50 minibatches: skipped == 50, no error)."""
    cfg, trainer = ppo_trainer(tiny_policy_dir)
    critic_before = {n: p.detach().clone() for n, p in trainer.critic.module.named_parameters()}
    # NaN behaviour log-probs poison the policy's importance weight only: values, returns and the
    # critic's loss stay finite
    taken, why = steps_until_stopped(trainer, cfg, judged(logprob_fill=math.nan), limit=10)
    assert taken == 3 and "of the policy" in why
    assert trainer.skipped_steps == {"policy": 3, "critic": 0}
    moved = [n for n, p in trainer.critic.module.named_parameters() if not torch.equal(p, critic_before[n])]
    assert moved, "the critic's finite steps should have trained"


def test_a_nan_critic_stops_even_while_the_policy_trains(tiny_policy_dir):
    cfg, trainer = ppo_trainer(tiny_policy_dir)
    # NaN values only in the critic's training forward (grad on); the no-grad pass that feeds GAE, and
    # with it the advantages and the policy's loss, stays finite
    hook = trainer.critic.module.score.register_forward_hook(
        lambda module, args, out: out * math.nan if torch.is_grad_enabled() else out)
    policy_before = weights(trainer)
    try:
        taken, why = steps_until_stopped(trainer, cfg, judged(), limit=10)
    finally:
        hook.remove()
    assert taken == 3 and "of the critic" in why
    assert trainer.skipped_steps == {"policy": 0, "critic": 3}
    assert any(not torch.equal(policy_before[n], after) for n, after in weights(trainer).items())
