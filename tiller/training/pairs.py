"""Preference pairs as one batch, their sequence log-probs, and the configured preference loss: what online
DPO (learner/dpo.py) and offline DPO (offline/dpo.py) both step with, so the two cannot drift apart.

    batch = build_pair_batch([(prompt_ids, chosen_ids, rejected_ids), ...], pad_id)   # chosen rows, then rejected
    logps = pair_logprobs(model_logprobs(engine), batch)      # [2B] summed response log-probs
    loss, metrics = preference_loss(logps, reference_logps, batch.response_lengths, dpo_config)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tiller.config import DPOConfig
from tiller.training import losses
from tiller.training.logprobs import taken_logprobs
from tiller.training.micro_batches import trimmed


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

    def to(self, device: torch.device) -> "PairBatch":
        return PairBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.response_mask,
                                                 self.response_lengths)))


def build_pair_batch(pairs: list[tuple], pad_id: int) -> PairBatch:
    """pairs: (prompt, chosen, rejected) token sequences (int arrays or lists). Right-padded to the longest."""
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


def pair_logprobs(logprob_fn, batch: PairBatch, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Summed response log-probs [len(rows)] (every row by default), from `logprob_fn(ids, attn, mask)`, which
    gives [n, T-1] token log-probs (`model_logprobs(model)`, or a trainer's own), the rows trimmed to their
    longest sequence."""
    ids, attn, mask = batch.input_ids, batch.attention_mask, batch.response_mask[:, 1:]
    if rows is not None:
        ids, attn, mask = ids[rows], attn[rows], mask[rows]
    return logprob_fn(*trimmed(ids, attn, mask)).sum(-1)


def model_logprobs(model, chunk_bytes: int = 256 << 20):
    """The `logprob_fn` of a causal LM (a module, or an engine called as one)."""
    def logprob_fn(ids: torch.Tensor, attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids, attention_mask=attn).logits
        return taken_logprobs(logits, ids, mask, chunk_bytes=chunk_bytes)[0]
    return logprob_fn


def preference_loss(policy: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, cfg: DPOConfig,
                    weights: torch.Tensor | None = None):
    """Split [2B] sequence log-probs into chosen/rejected halves and apply the configured variant
    (each pair's loss scaled by `weights` [B], if given)."""
    b = policy.shape[0] // 2
    pc, pr, rc, rr, lc, lr = policy[:b], policy[b:], reference[:b], reference[b:], lengths[:b], lengths[b:]
    if cfg.variant == "sigmoid":
        if cfg.logprob == "mean":  # per-token averages instead of sums (dpo.logprob)
            pc, pr, rc, rr = pc / lc, pr / lr, rc / lc, rr / lr
        return losses.dpo_sigmoid_loss(pc, pr, rc, rr, cfg.beta, cfg.label_smoothing, weights)
    if cfg.variant == "ipo":
        return losses.ipo_loss(pc, pr, rc, rr, lc, lr, cfg.beta, weights)
    return losses.simpo_loss(pc, pr, lc, lr, cfg.beta, cfg.simpo_gamma, weights)
