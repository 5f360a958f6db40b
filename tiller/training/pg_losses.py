"""Pure policy-gradient pieces for PPO, GRPO and RLOO: tensors in, tensors (and metrics) out.

Shapes: B sequences, T response positions; `mask` [B, T] is 1 on real response tokens.
Per-token log-probabilities are of the sampled token. Nothing here holds state or reads config.
"""

from __future__ import annotations

import torch

Metrics = dict[str, float]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (std unbiased); with shift_mean=False the mean is kept."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimates of KL(pi || pi_ref) from samples of pi (http://joschu.net/blog/kl-approx.html).

    k1 = log pi - log pi_ref (unbiased, high variance, can be negative);
    k2 = 1/2 (log pi - log pi_ref)^2 (biased, low variance, >= 0);
    k3 = (r - 1) - log r with r = pi_ref / pi (unbiased, low variance, >= 0).
    As values they all estimate KL(pi || pi_ref); as loss terms their gradients differ: see kl_penalty.
    """
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2 or k3)")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor,
               estimator: str, is_cap: float | None) -> tuple[torch.Tensor, Metrics]:
    """KL to the reference as a loss term, on tokens the actors sampled from their behaviour policy mu.

    Differentiated through log pi (the samples are fixed), each estimator has its own gradient:
      k2: (log pi - log pi_ref) grad log pi, whose expectation under pi is grad KL(pi || pi_ref);
      k3: (1 - pi_ref / pi) grad log pi, whose expectation under pi is grad KL(pi_ref || pi), the
          reverse KL (what GRPO's k3 loss term optimises, Shao et al. 2024, eq. 4);
      k1: grad log pi, expectation 0 (the score-function identity): no penalty at all, which is
          why the config loader refuses k1 as a loss term.
    The tokens come from mu, not pi, so each is weighted by pi / mu (detached, truncated at is_cap as
    in the surrogate), which turns the expectation under mu into one under pi.
    """
    per_token = kl_estimate(logp, ref_logp, estimator)
    weight = torch.exp(logp.detach() - behaviour_logp)
    if is_cap is not None:
        weight = torch.clamp(weight, max=is_cap)
    loss = masked_mean(weight * per_token, mask)
    return loss, {"kl/loss_term": loss.item(), "kl/weight_mean": masked_mean(weight, mask).item()}


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016, https://arxiv.org/abs/1506.02438, eq. 16).

    delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1}; V after the last real
    token is 0 (the episode ends there). Returns (advantages, returns = A + V), both [B, T].
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, advantages + values


def group_advantages(scores: torch.Tensor, normalise_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, https://arxiv.org/abs/2402.03300, sec. 4.1.2): scores [n, k] of k
    samples per prompt -> (r - mean_group) / std_group (std optional, as in Dr. GRPO)."""
    centred = scores - scores.mean(dim=1, keepdim=True)
    if not normalise_std:
        return centred
    return centred / (scores.std(dim=1, keepdim=True) + eps)


def leave_one_out_advantages(scores: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740, eq. 5): scores [n, k] ->
    r_i - mean_{j != i} r_j, i.e. k/(k-1) * (r_i - mean)."""
    k = scores.shape[1]
    return (scores - scores.mean(dim=1, keepdim=True)) * k / (k - 1)


def clipped_policy_loss(
    logp: torch.Tensor,
    proximal_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    is_cap: float | None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017, https://arxiv.org/abs/1707.06347, eq. 7), decoupled.

    ratio r_t = pi_theta / pi_prox, where pi_prox is the learner's policy at the start of this update,
    so the first epoch has r = 1 exactly. The gap between pi_prox and the actors' behaviour policy
    (asynchrony, bf16 sampling) is corrected by a truncated importance weight
    w_t = min(pi_prox / pi_behaviour, is_cap) (Hilton et al. 2021, https://arxiv.org/abs/2110.00641;
    truncated IS as in Yao et al. 2025, https://fengyao.notion.site/off-policy-rl). is_cap=None: no weight.
    """
    log_ratio = logp - proximal_logp
    ratio = torch.exp(log_ratio)
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    is_log_ratio = (proximal_logp - behaviour_logp).detach()
    weight = torch.ones_like(ratio)
    if is_cap is not None:
        weight = torch.clamp(torch.exp(is_log_ratio), max=is_cap)
    loss = -masked_mean(weight * surrogate, mask)
    with torch.no_grad():
        metrics = {
            "policy/clipfrac": masked_mean(((ratio - 1).abs() > clip_eps).float(), mask).item(),
            # (r - 1) - log r: non-negative, unbiased (same k3 estimator as above)
            "policy/approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask).item(),
            "policy/ratio_mean": masked_mean(ratio, mask).item(),
            "is/weight_mean": masked_mean(weight, mask).item(),
            "is/truncated_frac": masked_mean((torch.exp(is_log_ratio) > (is_cap or float("inf"))).float(), mask).item(),
            "is/behaviour_logp_gap": masked_mean(is_log_ratio.abs(), mask).item(),
        }
    return loss, metrics


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, Metrics]:
    """0.5 * max((V - R)^2, (clip(V, V_old +- c) - R)^2), the PPO value clip (as in cleanrl's ppo.py)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        residual_var = masked_mean((returns - values) ** 2, mask) - masked_mean(returns - values, mask) ** 2
        returns_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
        metrics = {
            "value/clipfrac": masked_mean(((values - old_values).abs() > clip).float(), mask).item(),
            "value/explained_variance": (1 - residual_var / returns_var.clamp(min=1e-8)).item(),
        }
    return loss, metrics


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: logits [B, T, V] -> [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
