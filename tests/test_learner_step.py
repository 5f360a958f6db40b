"""One DeepSpeed online-DPO step: every trainable parameter moves, the reference never does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tiller.config import Config, DPOConfig, LearnerConfig, ModelConfig
from tiller.learner.dpo import build_pair_batch, dpo_step
from tiller.learner.trainer import PolicyTrainer
from tiller.learner.coordinator import ScoredPrompt

pytestmark = pytest.mark.slow


def judged(n=4, k=2, seed=0) -> list[ScoredPrompt]:
    """n judged prompts with k random responses each; sample 0 chosen over sample 1."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        responses = [rng.integers(3, 34, int(rng.integers(3, 8))).astype(np.int32) for _ in range(k)]
        logprobs = [-rng.random(len(r)).astype(np.float32) for r in responses]
        items.append(ScoredPrompt(i, 1, 0, rng.integers(3, 34, 5).astype(np.int32), responses, logprobs,
                                  rng.random(k).astype(np.float32), np.zeros(k, bool), pairs=((0, 1),)))
    return items


def test_pair_batch_layout():
    batch = build_pair_batch([(np.array([5, 6]), np.array([7, 8, 9]), np.array([10]))], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 10, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.response_mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 0, 0]]
    assert batch.response_lengths.tolist() == [3, 1] and batch.num_pairs == 1


@pytest.mark.parametrize("zero_stage,variant", [(0, "sigmoid"), (2, "ipo"), (3, "sigmoid"), (0, "simpo")])
def test_one_step_changes_every_parameter_and_not_the_reference(tiny_policy_dir, tmp_path, zero_stage, variant):
    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir)),
                 learner=LearnerConfig(lr=1e-3, zero_stage=zero_stage, batch_size=4, dpo=DPOConfig(variant=variant)))
    trainer = PolicyTrainer(cfg, tiny_policy_dir)
    before = {n: t.clone() for b in trainer.weight_buckets(1 << 16) for n, t in b}
    reference = {n: p.detach().clone() for n, p in trainer.reference.named_parameters()}
    metrics = dpo_step(trainer, judged(), cfg, pad_id=0)
    if variant == "sigmoid":
        assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 0
    after = {n: t for b in trainer.weight_buckets(1 << 16) for n, t in b}
    assert after.keys() == before.keys() and len(after) > 10
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    for n, p in trainer.reference.named_parameters():
        assert torch.equal(p, reference[n]) and not p.requires_grad
    # the published weights are the full, gathered tensors (ZeRO-3 partitions them in the engine)
    assert after["model.embed_tokens.weight"].shape == reference["model.embed_tokens.weight"].shape


def test_a_learner_with_its_lower_blocks_frozen_moves_only_the_top_block(tiny_policy_dir):
    # learner.unfrozen_layers: the online stage drifts only where SFT trained (safety pipeline); the actors still
    # get every weight, the frozen ones unchanged
    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir)),
                 learner=LearnerConfig(lr=1e-3, batch_size=4, unfrozen_layers=1))
    trainer = PolicyTrainer(cfg, tiny_policy_dir)
    before = {n: t.clone() for b in trainer.weight_buckets(1 << 16) for n, t in b}
    dpo_step(trainer, judged(), cfg, pad_id=0)
    after = {n: t for b in trainer.weight_buckets(1 << 16) for n, t in b}
    assert after.keys() == before.keys()
    frozen = [n for n in before if ".layers.0." in n or "embed_tokens" in n]
    trained = [n for n in before if ".layers.1." in n and n.endswith("weight") and "norm" not in n]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert trained and all(not torch.equal(before[n], after[n]) for n in trained)


def test_saved_checkpoint_loads_with_transformers(tiny_policy_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir)), learner=LearnerConfig(lr=1e-3, batch_size=4))
    trainer = PolicyTrainer(cfg, tiny_policy_dir)
    dpo_step(trainer, judged(), cfg, pad_id=0)
    trainer.save(tmp_path / "final", tokenizer_dir=tiny_policy_dir)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "final"))
    for name, param in trainer.module.named_parameters():
        assert torch.equal(loaded.state_dict()[name], param.detach())
    assert (tmp_path / "final" / "tokenizer.json").exists()


def revision_logprob(trainer, item: ScoredPrompt, candidate: int) -> float:
    from tiller.training import losses

    batch = build_pair_batch([(item.prompt, item.candidate(candidate), item.candidate(candidate))], pad_id=0)
    with torch.no_grad():
        logits = trainer.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return losses.sequence_logprobs(logits, batch.input_ids, batch.response_mask)[0].item()


def test_revisions_are_trained_as_chosen_over_their_originals(tiny_policy_dir):
    """A CAI judgement: candidate k+j is the revision of sample j. Several pairs per prompt all train,
    and the step raises the revision's likelihood, not the original's."""
    k = 2
    items = []
    for item in judged(n=2, k=k, seed=3):
        revisions = (np.array([5, 6, 7, 1], np.int32), np.array([8, 9, 1], np.int32))
        items.append(ScoredPrompt(item.prompt_id, 1, 0, item.prompt, item.responses, item.logprobs, item.scores,
                                  item.truncated, pairs=((k, 0), (k + 1, 1)), revisions=revisions))
    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir)), learner=LearnerConfig(lr=1e-3, batch_size=2))
    trainer = PolicyTrainer(cfg, tiny_policy_dir)
    before = [revision_logprob(trainer, items[0], c) for c in (k, 0)]
    for _ in range(3):
        metrics = dpo_step(trainer, items, cfg, pad_id=0)
    after = [revision_logprob(trainer, items[0], c) for c in (k, 0)]
    assert metrics["pairs"] == 4
    assert "reward/chosen" not in metrics  # a revision has no judge score
    assert after[0] > before[0] and after[1] < before[1]
