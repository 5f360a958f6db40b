"""PPO / GRPO / RLOO learner steps on a real DeepSpeed engine with a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiller.config import Config, LearnerConfig, ModelConfig, PGConfig
from tiller.learner.coordinator import ScoredPrompt
from tiller.learner.trainer import PolicyTrainer
from tiller.learner.pg import build_sample_batch, pg_step, token_logprobs

pytestmark = pytest.mark.slow
K = 4


def make_trainer(model_dir, algorithm: str, **pg):
    cfg = Config(model=ModelConfig(path=str(model_dir)),
                 learner=LearnerConfig(algorithm=algorithm, lr=1e-3, batch_size=3, pg=PGConfig(critic_lr=1e-3, **pg)))
    return cfg, PolicyTrainer(cfg, model_dir, with_critic=algorithm == "ppo")


def on_policy_items(trainer, n=3, seed=0) -> list[ScoredPrompt]:
    """Judged prompts whose behaviour log-probs are the learner policy's own (fresh, on-policy)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        prompt = rng.integers(3, 34, 4).astype(np.int32)
        responses = [rng.integers(3, 34, int(rng.integers(2, 7))).astype(np.int32) for _ in range(K)]
        items.append(ScoredPrompt(i, 1, 0, prompt, responses, [np.zeros(len(r), np.float32) for r in responses],
                                  rng.random(K).astype(np.float32), np.zeros(K, bool), -1, -1))
    batch = build_sample_batch(items, pad_id=0)
    with torch.no_grad():
        logp = token_logprobs(trainer.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                              batch.input_ids)
    rows = iter(range(len(items) * K))
    for item in items:
        for j in range(K):
            row = next(rows)
            item.logprobs[j][:] = logp[row][batch.mask[row] == 1].numpy()
    return items


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_first_epoch_on_fresh_rollouts_has_unit_ratio(tiny_policy_dir, algorithm):
    cfg, trainer = make_trainer(tiny_policy_dir, algorithm, ppo_epochs=1, minibatches=1)
    metrics = pg_step(trainer, on_policy_items(trainer), cfg, pad_id=0)
    assert metrics["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["policy/approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["policy/clipfrac"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["is/behaviour_logp_gap"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["kl/mean"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the update


@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "rloo"])
def test_one_update_changes_every_parameter_of_policy_and_critic(tiny_policy_dir, algorithm):
    cfg, trainer = make_trainer(tiny_policy_dir, algorithm, ppo_epochs=2, minibatches=2, target_kl=0.0)
    policy_before = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}
    critic_before = ({n: p.detach().clone() for n, p in trainer.critic.module.named_parameters()}
                     if trainer.critic else {})
    reference_before = {n: p.detach().clone() for n, p in trainer.reference.named_parameters()}
    metrics = pg_step(trainer, on_policy_items(trainer), cfg, pad_id=0)
    assert metrics["ppo/updates"] == 4
    stuck = [n for n, p in trainer.engine.module.named_parameters() if torch.equal(p, policy_before[n])]
    assert not stuck, f"policy parameters not updated: {stuck}"
    if trainer.critic:
        stuck = [n for n, p in trainer.critic.module.named_parameters() if torch.equal(p, critic_before[n])]
        assert not stuck, f"critic parameters not updated: {stuck}"
        assert "value/explained_variance" in metrics and "loss/value" in metrics
    for n, p in trainer.reference.named_parameters():
        assert torch.equal(p, reference_before[n])


def test_target_kl_stops_the_epochs_early(tiny_policy_dir):
    cfg, trainer = make_trainer(tiny_policy_dir, "grpo", ppo_epochs=8, minibatches=1, target_kl=1e-9)
    metrics = pg_step(trainer, on_policy_items(trainer), cfg, pad_id=0)
    assert metrics["ppo/updates"] < 8


def test_ppo_score_lands_on_the_last_response_token(tiny_policy_dir):
    from tiller.learner.pg import advantages_and_returns

    cfg, trainer = make_trainer(tiny_policy_dir, "ppo", gamma=1.0, lam=1.0)
    items = on_policy_items(trainer, n=1)
    batch = build_sample_batch(items, pad_id=0)
    values = torch.zeros_like(batch.mask)
    adv, returns = advantages_and_returns("ppo", batch, batch.scores, None, values, cfg)
    # gamma = lam = 1, V = 0, no KL: every response token's advantage is the sequence's score
    for row in range(K):
        assert torch.allclose(adv[row][batch.mask[row] == 1], batch.scores[row].expand(int(batch.mask[row].sum())))


def test_critic_can_start_from_a_reward_model(tiny_policy_dir, tiny_reward_dir):
    from transformers import AutoModelForSequenceClassification

    cfg, trainer = make_trainer(tiny_policy_dir, "ppo", critic_path=str(tiny_reward_dir))
    reward_model = AutoModelForSequenceClassification.from_pretrained(str(tiny_reward_dir))
    assert torch.equal(trainer.critic.module.score.weight, reward_model.score.weight)
    assert torch.equal(trainer.critic.module.model.embed_tokens.weight, reward_model.model.embed_tokens.weight)


@pytest.mark.parametrize("n,minibatches", [(8, 3), (5, 5), (16, 2)])
def test_every_sample_is_used_once_per_epoch(monkeypatch, n, minibatches):
    """8 samples in 3 minibatches used to train on 2+2+2 and drop 2 every epoch."""
    from tiller.learner import pg

    seen: list[list[int]] = []
    monkeypatch.setattr(pg, "_minibatch", lambda trainer, batch, mb, *rest: seen.append(mb.tolist()) or
                        {"policy/approx_kl": 0.0})
    cfg = Config(learner=LearnerConfig(pg=PGConfig(ppo_epochs=2, minibatches=minibatches, target_kl=0.0)))
    batch = type("Batch", (), {"input_ids": torch.zeros(n, 4), "mask": torch.zeros(n, 3)})()
    pg._epochs(None, batch, None, cfg)
    assert len(seen) == 2 * minibatches
    for epoch in (seen[:minibatches], seen[minibatches:]):
        assert sorted(i for mb in epoch for i in mb) == list(range(n))
        assert max(map(len, epoch)) - min(map(len, epoch)) <= 1


def test_more_minibatches_than_samples_is_a_config_error():
    from tiller.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="learner.pg.minibatches: 40 for 32 samples"):
        load_config(None, ["learner.algorithm=grpo", "learner.batch_size=8", "rollout.samples_per_prompt=4",
                           "learner.pg.minibatches=40"])
