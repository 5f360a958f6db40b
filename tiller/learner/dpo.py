"""Online DPO: one optimizer step on (prompt, chosen, rejected) pairs built from judge preferences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tiller.config import Config, DPOConfig
from tiller.learner import losses
from tiller.learner.coordinator import ScoredPrompt


@dataclass
class PairBatch:
    """Chosen rows first, then rejected rows: one forward pass for both. Shapes [2B, T] / [2B]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    response_lengths: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2


def build_pair_batch(pairs: list[tuple], pad_id: int) -> PairBatch:
    """pairs: (prompt, chosen, rejected) int arrays. Right-padded to the longest sequence."""
    rows = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (prompt, resp) in enumerate(rows):
        n_p, n_r = len(prompt), len(resp)
        # np.array copies: token arrays are read-only views of received frames, which torch warns about
        input_ids[i, :n_p] = torch.from_numpy(np.array(prompt, dtype=np.int64))
        input_ids[i, n_p:n_p + n_r] = torch.from_numpy(np.array(resp, dtype=np.int64))
        attention[i, :n_p + n_r] = 1
        response[i, n_p:n_p + n_r] = 1
    lengths = response.sum(-1).clamp(min=1)
    return PairBatch(input_ids, attention, response, lengths)


def preference_loss(policy: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, cfg: DPOConfig):
    """Split [2B] sequence log-probs into chosen/rejected halves and apply the configured variant."""
    b = policy.shape[0] // 2
    pc, pr, rc, rr, lc, lr = policy[:b], policy[b:], reference[:b], reference[b:], lengths[:b], lengths[b:]
    if cfg.variant == "sigmoid":
        if cfg.logprob == "mean":  # per-token averages instead of sums (dpo.logprob)
            pc, pr, rc, rr = pc / lc, pr / lr, rc / lc, rr / lr
        return losses.dpo_sigmoid_loss(pc, pr, rc, rr, cfg.beta, cfg.label_smoothing)
    if cfg.variant == "ipo":
        return losses.ipo_loss(pc, pr, rc, rr, lc, lr, cfg.beta)
    return losses.simpo_loss(pc, pr, lc, lr, cfg.beta, cfg.simpo_gamma)


def dpo_step(trainer, items: list[ScoredPrompt], cfg: Config, pad_id: int) -> dict[str, float]:
    """One optimizer step of the configured DPO variant on every pair of `items` (each has at least one:
    best over worst sample for scoring judges, revision over original for a CAI judge)."""
    pairs = [(p, c, r) for p in items for c, r in p.pairs]
    batch = build_pair_batch([(p.prompt, p.candidate(c), p.candidate(r)) for p, c, r in pairs], pad_id)
    dpo = cfg.learner.dpo
    logits = trainer.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    policy_logps = losses.sequence_logprobs(logits, batch.input_ids, batch.response_mask)
    with torch.no_grad():
        if dpo.variant == "simpo":  # reference-free: skip the reference forward
            ref_logps = torch.zeros_like(policy_logps)
        else:
            ref_logits = trainer.reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            ref_logps = losses.sequence_logprobs(ref_logits, batch.input_ids, batch.response_mask)
    loss, metrics = preference_loss(policy_logps, ref_logps, batch.response_lengths, dpo)
    metrics.update(trainer.guard.step(trainer.engine, loss))  # skipped when loss or gradient is not finite
    metrics["loss"] = loss.item()
    b = batch.num_pairs
    metrics["logps/chosen"] = policy_logps[:b].detach().mean().item()  # summed over each response's tokens
    metrics["logps/rejected"] = policy_logps[b:].detach().mean().item()
    if dpo.variant != "simpo":  # SimPO has no reference, so no KL to report
        # Sequence-level KL(policy || reference) on the trained responses (k1 estimate).
        metrics["kl/sequence"] = (policy_logps.detach() - ref_logps).mean().item()
    metrics["pairs"] = len(pairs)
    k = len(items[0].responses)
    chosen = [p.scores[c] for p, c, _ in pairs if c < k]  # a revision (c >= k) has no judge score
    rejected = [p.scores[r] for p, _, r in pairs if r < k]
    if chosen:
        metrics["reward/chosen"] = float(sum(chosen) / len(chosen))
    if rejected:
        metrics["reward/rejected"] = float(sum(rejected) / len(rejected))
    return metrics
