"""PPO, GRPO and RLOO updates on judged samples: all k samples of each prompt, with their scores.

One call of `pg_step` is one learner step: `ppo_epochs` passes over the batch in
`minibatches`, each an optimizer step, stopped early once approx-KL passes 1.5 x target_kl.
The recipe, following cleanrl's ppo.py:

  1. no grad: per-token log-probs of the learner's policy at the start of the update
     (pi_prox), the reference's, and (PPO) the critic's values;
  2. advantages: PPO folds the score into the last response token (minus a per-token k1
     penalty when kl_in_reward) and runs GAE over the critic's values; GRPO and RLOO compare
     each sample's score with the other samples of its prompt;
  3. clipped surrogate with a truncated importance weight for the behaviour-vs-learner gap,
     KL as a loss term when not in the reward, an entropy bonus, and (PPO) a clipped value loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from tiller.config import Config, resolve_pg
from tiller.learner.coordinator import ScoredPrompt
from tiller.training import pg_losses as pg
from tiller.training.micro_batches import row_chunks, trimmed


@dataclass
class SampleBatch:
    """N = n*k sequences, right-padded to T tokens. Token-level tensors are [N, T-1]: entry j is
    about token j+1, predicted from position j."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T-1], 1 where token j+1 is a response token
    behaviour_logp: torch.Tensor  # [N, T-1], the actors' log-prob of each response token
    scores: torch.Tensor  # [N]
    truncated: torch.Tensor  # [N] bool
    k: int

    def to(self, device: torch.device) -> "SampleBatch":
        moved = {f: getattr(self, f).to(device) for f in ("input_ids", "attention_mask", "mask", "behaviour_logp",
                                                           "scores", "truncated")}
        return SampleBatch(**moved, k=self.k)


def build_sample_batch(items: list[ScoredPrompt], pad_id: int) -> SampleBatch:
    rows = [(p.prompt, r, lp) for p in items for r, lp in zip(p.responses, p.logprobs)]
    width = max(len(prompt) + len(resp) for prompt, resp, _ in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width - 1))
    behaviour = torch.zeros((n, width - 1))
    for i, (prompt, resp, logp) in enumerate(rows):
        p, r = len(prompt), len(resp)
        input_ids[i, :p] = torch.as_tensor(prompt, dtype=torch.long)
        input_ids[i, p:p + r] = torch.as_tensor(resp, dtype=torch.long)
        attention[i, :p + r] = 1
        mask[i, p - 1:p + r - 1] = 1  # position p-1 predicts the first response token
        behaviour[i, p - 1:p + r - 1] = torch.as_tensor(logp, dtype=torch.float32)
    scores = torch.as_tensor([float(s) for p in items for s in p.scores])
    flags = torch.as_tensor([bool(t) for p in items for t in p.truncated], dtype=torch.bool)
    return SampleBatch(input_ids, attention, mask, behaviour, scores, flags, k=len(items[0].responses))


def reference_ahead(items: list[ScoredPrompt], batch: SampleBatch) -> torch.Tensor | None:
    """[N, T-1] reference log-probs from `ScoredPrompt.reference`, laid out as the batch's behaviour
    log-probs, or None unless every sample has them."""
    k = batch.k
    if not all(c in p.reference for p in items for c in range(k)):
        return None
    out = torch.zeros_like(batch.mask)
    for i, (p, c) in enumerate((p, c) for p in items for c in range(k)):
        start, logp = len(p.prompt) - 1, p.reference[c]
        out[i, start:start + len(logp)] = torch.as_tensor(logp, dtype=torch.float32, device=out.device)
    return out


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[N, T, V] logits over [N, T] ids -> [N, T-1] log-prob of each next token under the sampling
    distribution softmax(logits / temperature): the one vLLM sampled from and reports log-probs of
    (its processed log-probs), so fresh samples get importance weight 1 at any temperature. The plain
    computation, kept as the reference the tests hold `logprobs.taken_logprobs` (what training uses) to."""
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def _last_token_index(mask: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask).argmax(dim=1)


def advantages_and_returns(algorithm: str, batch: SampleBatch, scores: torch.Tensor, kl: torch.Tensor | None,
                           values: torch.Tensor | None, cfg: Config) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages [N, T-1] (and PPO's returns) before whitening; `kl` given: fold it into
    the per-token reward."""
    pc = cfg.learner.pg
    if algorithm == "ppo":
        rewards = torch.zeros_like(batch.mask)
        if kl is not None:
            rewards = rewards - pc.kl_coef * kl * batch.mask
        rows = torch.arange(len(scores), device=scores.device)
        rewards[rows, _last_token_index(batch.mask)] += scores  # the judge's score lands on the last token
        return pg.gae(rewards, values, batch.mask, pc.gamma, pc.lam)
    grouped = scores.view(-1, batch.k)
    if algorithm == "grpo":
        sequence = pg.group_advantages(grouped, normalise_std=pc.group_std)
    else:
        sequence = pg.leave_one_out_advantages(grouped)
    return sequence.reshape(-1, 1) * batch.mask, None


def _no_grad_per_row(batch: SampleBatch, micro: int, fn) -> torch.Tensor:
    """[N, T-1] from `fn(ids, attn, mask) -> [n, t-1]` run over micro-batches of rows (zero past each's width)."""
    out = torch.zeros_like(batch.mask)
    with torch.no_grad():
        for rows in row_chunks(torch.arange(len(out), device=out.device), micro):
            ids, attn, mask = trimmed(batch.input_ids[rows], batch.attention_mask[rows], batch.mask[rows])
            part = fn(ids, attn, mask)
            out[rows, :part.shape[1]] = part.float()
    return out


def pg_step(trainer, items: list[ScoredPrompt], cfg: Config, pad_id: int) -> dict[str, float]:
    """One learner step of cfg.learner.algorithm (ppo, grpo or rloo) on all samples of `items`."""
    cfg = resolve_pg(cfg)
    pc = cfg.learner.pg
    algorithm = cfg.learner.algorithm
    kl_in_reward = algorithm == "ppo" and pc.kl_in_reward
    batch = build_sample_batch(items, pad_id).to(trainer.device)
    mask = batch.mask
    temperature, micro = cfg.rollout.temperature, cfg.learner.micro_batch_size
    prox_logp = _no_grad_per_row(batch, micro, lambda i, a, m: trainer.policy_logprobs(i, a, m, temperature)[0])
    ref_logp = reference_ahead(items, batch)  # computed on lent cores before the batch was taken, if so
    if ref_logp is None:
        ref_logp = _no_grad_per_row(batch, micro, lambda i, a, m: trainer.reference_logprobs(i, a, m, temperature))
    values = None
    if trainer.critic is not None:
        values = _no_grad_per_row(
            batch, micro, lambda i, a, m: trainer.critic(input_ids=i, attention_mask=a).logits[:, :-1, 0] * m)
    with torch.no_grad():
        kl = pg.kl_estimate(prox_logp, ref_logp, "k1" if kl_in_reward else pc.kl_estimator)
        scores = batch.scores - pc.truncation_penalty * batch.truncated.float()
        advantages, returns = advantages_and_returns(algorithm, batch, scores, kl if kl_in_reward else None,
                                                     values, cfg)
        if pc.whiten_advantages:
            advantages = pg.masked_whiten(advantages, mask) * mask
    metrics = {
        "kl/mean": pg.masked_mean(kl, mask).item(),
        # KL to the reference per response: the k1 sum over its tokens, averaged over responses
        "kl/sequence": ((prox_logp - ref_logp) * mask).sum(-1).mean().item(),
        "advantage/mean": pg.masked_mean(advantages, mask).item(),
        "advantage/std": pg.masked_mean((advantages - pg.masked_mean(advantages, mask)) ** 2, mask).sqrt().item(),
    }
    targets = Targets(prox_logp, None if kl_in_reward else ref_logp, advantages, values, returns)
    history = _epochs(trainer, batch, targets, cfg)
    metrics.update({key: sum(h[key] for h in history) / len(history) for key in history[0]})
    metrics["ppo/updates"] = len(history)
    return metrics


@dataclass
class Targets:
    """What an update's epochs are measured against, all [N, T-1], fixed at the start of the update."""

    prox_logp: torch.Tensor  # the learner's own policy before the update
    ref_logp: torch.Tensor | None  # None: no KL loss term (PPO with the KL in the reward)
    advantages: torch.Tensor
    values: torch.Tensor | None  # the critic's (PPO)
    returns: torch.Tensor | None


def _epochs(trainer, batch: SampleBatch, targets: Targets, cfg: Config):
    """The clipped-surrogate epochs; returns each minibatch's metrics."""
    pc = cfg.learner.pg
    n = batch.input_ids.shape[0]
    history: list[dict[str, float]] = []
    for _ in range(pc.ppo_epochs):
        epoch = []
        # every sample once per epoch: minibatch sizes differ by at most one (the loader keeps minibatches <= n)
        for mb in torch.tensor_split(torch.randperm(n).to(batch.mask.device), min(pc.minibatches, n)):
            epoch.append(_minibatch(trainer, batch, mb, targets, cfg))
        history += epoch
        # early stop, as in OpenAI baselines / cleanrl (https://github.com/vwxyzjn/cleanrl)
        if pc.target_kl > 0 and sum(m["policy/approx_kl"] for m in epoch) / len(epoch) > 1.5 * pc.target_kl:
            break
    return history


def _policy_objective(logp, entropy, rows, mask, batch: SampleBatch, targets: Targets, cfg: Config):
    """The policy's loss on `rows` (their first mask.shape[1] token columns): clipped surrogate, KL loss
    term, entropy bonus; token means over `mask`. Returns (loss, metrics)."""
    pc, w = cfg.learner.pg, mask.shape[1]
    behaviour = batch.behaviour_logp[rows, :w]
    loss, m = pg.clipped_policy_loss(logp, targets.prox_logp[rows, :w], behaviour, targets.advantages[rows, :w],
                                     mask, pc.clip_eps, pc.is_cap)
    m["loss/policy"] = loss.item()
    if targets.ref_logp is not None:  # KL as a loss term (GRPO, RLOO, or PPO with kl_in_reward: false)
        kl_term, km = pg.kl_penalty(logp, targets.ref_logp[rows, :w], behaviour, mask, pc.kl_estimator, pc.is_cap)
        loss = loss + pc.kl_coef * kl_term
        m.update(km)
    mean_entropy = pg.masked_mean(entropy, mask)
    m["entropy"] = mean_entropy.item()
    return loss - pc.ent_coef * mean_entropy, m


def _minibatch(trainer, batch: SampleBatch, mb: torch.Tensor, targets: Targets, cfg: Config):
    """One optimizer step (policy, then critic) on the samples `mb`, accumulated over micro-batches: each
    micro-batch's token-mean loss is weighted by its share of the minibatch's tokens, so the sum is the
    minibatch's token-mean loss. Metrics come from the whole minibatch's gathered outputs."""
    temperature = cfg.rollout.temperature
    tokens = batch.mask[mb].sum().clamp(min=1)
    chunks = row_chunks(mb, cfg.learner.micro_batch_size)
    logp_all, entropy_all = torch.zeros_like(batch.mask[mb]), torch.zeros_like(batch.mask[mb])
    offsets = [0]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))

    def policy_loss(i: int) -> torch.Tensor:
        rows = chunks[i]
        ids, attn, mask = trimmed(batch.input_ids[rows], batch.attention_mask[rows], batch.mask[rows])
        logp, entropy = trainer.policy_logprobs(ids, attn, mask, temperature, with_entropy=True)
        logp_all[offsets[i]:offsets[i + 1], :mask.shape[1]] = logp.detach()
        entropy_all[offsets[i]:offsets[i + 1], :mask.shape[1]] = entropy.detach()
        loss, _ = _policy_objective(logp, entropy, rows, mask, batch, targets, cfg)
        return loss * mask.sum() / tokens

    step = trainer.policy.step([partial(policy_loss, i) for i in range(len(chunks))])
    with torch.no_grad():
        loss, m = _policy_objective(logp_all, entropy_all, mb, batch.mask[mb], batch, targets, cfg)
    m.update(step)
    m["loss"] = loss.item()
    if trainer.critic is not None:
        m.update(_critic_step(trainer, batch, mb, chunks, offsets, tokens, targets, cfg))
    return m


def _critic_step(trainer, batch: SampleBatch, mb, chunks, offsets, tokens, targets: Targets,
                 cfg: Config) -> dict[str, float]:
    """The critic's optimizer step on the same micro-batches, weighted the same way."""
    pc = cfg.learner.pg
    new_values = torch.zeros_like(batch.mask[mb])

    def value_loss(i: int) -> torch.Tensor:
        rows = chunks[i]
        ids, attn, mask = trimmed(batch.input_ids[rows], batch.attention_mask[rows], batch.mask[rows])
        values = trainer.critic(input_ids=ids, attention_mask=attn).logits[:, :-1, 0].float()
        new_values[offsets[i]:offsets[i + 1], :mask.shape[1]] = values.detach()
        w = mask.shape[1]
        loss, _ = pg.clipped_value_loss(values, targets.values[rows, :w], targets.returns[rows, :w], mask,
                                        pc.cliprange_value)
        return pc.vf_coef * loss * mask.sum() / tokens

    step = trainer.value.step([partial(value_loss, i) for i in range(len(chunks))])
    with torch.no_grad():
        loss, m = pg.clipped_value_loss(new_values, targets.values[mb], targets.returns[mb], batch.mask[mb],
                                        pc.cliprange_value)
    m.update({"critic/grad_norm": step["grad_norm"], "critic/skipped": step["skipped"], "loss/value": loss.item()})
    return m
