"""Online DPO: one optimizer step on (prompt, chosen, rejected) pairs built from judge preferences.

The pairs are cut into micro-batches of whole pairs (`learner.micro_batch_size` sequences, a pair
being two); each micro-batch's loss is weighted by its share of the pairs, so the accumulated
gradient is the full batch's. The reported loss and metrics come from the whole batch's
sequence log-probs, gathered from the micro-batches, through the same pure loss function.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

from tiller.config import Config
from tiller.learner.coordinator import ScoredPrompt
from tiller.training.micro_batches import row_chunks
from tiller.training.pairs import build_pair_batch, pair_logprobs, preference_loss


def offpolicy_log_ratio(policy: torch.Tensor, behaviour: torch.Tensor, pair_tokens: torch.Tensor) -> torch.Tensor:
    """Per pair [B]: the mean over both responses' tokens of log pi(token) - log mu(token), from the
    policy's summed log-probs [2B] (chosen rows, then rejected), the actors' summed sampling log-probs of
    each pair [B] and each pair's token count [B]. 0 for a pair the current policy sampled; NaN where
    the behaviour log-prob is NaN (a revision: no policy sampled it)."""
    b = behaviour.shape[0]
    return (policy[:b] + policy[b:] - behaviour) / pair_tokens


def offpolicy_weights(log_ratio: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights min(cap, exp(log_ratio)) [B]; 1 where the ratio is unknown (NaN)."""
    weights = torch.exp(torch.clamp(log_ratio, max=math.log(cap)))
    return torch.where(torch.isnan(weights), torch.ones_like(weights), weights)


def reference_ahead(pairs: list[tuple[ScoredPrompt, int, int]]) -> torch.Tensor | None:
    """The reference's summed log-probs [2B] (chosen sides, then rejected) from `ScoredPrompt.reference`,
    or None unless every side of every pair has them."""
    if not all(c in p.reference and r in p.reference for p, c, r in pairs):
        return None
    sides = [c for _, c, _ in pairs], [r for _, _, r in pairs]
    return torch.tensor([float(p.reference[i].sum(dtype=np.float64)) for side in sides
                         for (p, _, _), i in zip(pairs, side)])


def dpo_step(trainer, items: list[ScoredPrompt], cfg: Config, pad_id: int) -> dict[str, float]:
    """One optimizer step of the configured DPO variant on every pair of `items` (each has at least one:
    best over worst sample for scoring judges, revision over original for a CAI judge)."""
    pairs = [(p, c, r) for p in items for c, r in p.pairs]
    batch = build_pair_batch([(p.prompt, p.candidate(c), p.candidate(r)) for p, c, r in pairs], pad_id)
    batch = batch.to(trainer.device)
    dpo = cfg.learner.dpo
    b = batch.num_pairs
    # whole pairs per micro-batch: row i (chosen) and row b + i (rejected) go together
    pair_chunks = row_chunks(torch.arange(b, device=trainer.device), cfg.learner.micro_batch_size // 2)
    rows_of = [torch.cat([chunk, chunk + b]) for chunk in pair_chunks]
    ref_logps = torch.zeros(2 * b, device=trainer.device)
    ahead = reference_ahead(pairs) if dpo.variant != "simpo" else None  # SimPO: reference-free
    if ahead is not None:  # computed on lent cores before the batch was taken
        ref_logps = ahead.to(trainer.device)
    elif dpo.variant != "simpo":
        for rows in rows_of:
            ref_logps[rows] = pair_logprobs(trainer.reference_logprobs, batch, rows)
    policy_logps = torch.full((2 * b,), float("nan"), device=trainer.device)  # filled as micro-batches run
    k = len(items[0].responses)
    # What the actors sampled each pair with (summed over both responses); NaN for a revision (never sampled).
    # Comparable with the policy's log-probs only when the actors sampled from the untempered distribution.
    comparable = cfg.rollout.temperature == 1 and cfg.rollout.top_p == 1
    behaviour = torch.tensor([float(p.logprobs[c].sum() + p.logprobs[r].sum()) if c < k and r < k else float("nan")
                              for p, c, r in pairs], device=trainer.device)
    pair_tokens = batch.response_lengths[:b] + batch.response_lengths[b:]
    weigh = dpo.offpolicy_weight == "is"  # the config loader refused it unless `comparable`

    def micro_loss(rows: torch.Tensor) -> torch.Tensor:
        logps = pair_logprobs(lambda *args: trainer.policy_logprobs(*args)[0], batch, rows)
        policy_logps[rows] = logps.detach()
        chunk = rows[:len(rows) // 2]  # the pairs of this micro-batch (rows: their chosen, then their rejected)
        weights = offpolicy_weights(offpolicy_log_ratio(logps.detach(), behaviour[chunk], pair_tokens[chunk]),
                                    dpo.offpolicy_cap) if weigh else None
        loss, _ = preference_loss(logps, ref_logps[rows], batch.response_lengths[rows], dpo, weights)
        return loss * len(chunk) / b  # the batch loss is the mean over pairs

    step = trainer.policy.step([partial(micro_loss, rows) for rows in rows_of])
    with torch.no_grad():  # the whole batch's loss and metrics, from the gathered log-probs
        log_ratio = offpolicy_log_ratio(policy_logps, behaviour, pair_tokens)
        weights = offpolicy_weights(log_ratio, dpo.offpolicy_cap) if weigh else None
        loss, metrics = preference_loss(policy_logps, ref_logps, batch.response_lengths, dpo, weights)
    metrics.update(step)
    sampled = ~torch.isnan(log_ratio)
    if comparable and sampled.any():  # how far the policy has moved from the one that sampled the pairs
        metrics["offpolicy/logratio"] = log_ratio[sampled].mean().item()  # per token; 0 for fresh pairs
        if weigh:
            metrics["offpolicy/weight"] = weights[sampled].mean().item()
    metrics["loss"] = loss.item()
    metrics["logps/chosen"] = policy_logps[:b].detach().mean().item()  # summed over each response's tokens
    metrics["logps/rejected"] = policy_logps[b:].detach().mean().item()
    if dpo.variant != "simpo":  # SimPO has no reference, so no KL to report
        # Sequence-level KL(policy || reference) on the trained responses (k1 estimate).
        metrics["kl/sequence"] = (policy_logps.detach() - ref_logps).mean().item()
    metrics["pairs"] = len(pairs)
    chosen = [p.scores[c] for p, c, _ in pairs if c < k]  # a revision (c >= k) has no judge score
    rejected = [p.scores[r] for p, _, r in pairs if r < k]
    if chosen:
        metrics["reward/chosen"] = float(sum(chosen) / len(chosen))
    if rejected:
        metrics["reward/rejected"] = float(sum(rejected) / len(rejected))
    return metrics
