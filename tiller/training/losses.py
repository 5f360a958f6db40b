"""Pure preference-optimisation losses: tensors in, `(loss, metrics)` out. No state, no config.

Shapes: B = number of preference pairs. Every log-probability argument is the *sum* over
the response tokens of one sequence, shape [B]; `*_lengths` are response token counts [B];
`weights` (optional, [B]) scales each pair's loss before the mean (off-policy pair weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Metrics = dict[str, float]


def _reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> Metrics:
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
    }


def dpo_sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290, eq. 7), all args [B].

    With label_smoothing = eps > 0 this is conservative DPO (Mitchell 2023,
    https://ericmitchell.ai/cdpo.pdf): the preference label is trusted with probability 1 - eps.
    """
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    logits = beta * (chosen_logratio - rejected_logratio)
    # -(1-eps) log sigma(beta*h) - eps log sigma(-beta*h)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    metrics = _reward_metrics(beta * chosen_logratio.detach(), beta * rejected_logratio.detach())
    return _weighted_mean(losses, weights), metrics


def _weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return losses.mean() if weights is None else (weights * losses).mean()


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2023, https://arxiv.org/abs/2310.12036, eq. 17), all args [B].

    `beta` is the paper's tau. Log-probabilities are averaged per token, as TRL and OpenRLHF
    do, so the 1/(2 tau) target does not depend on response length.
    """
    chosen_logratio = (policy_chosen - ref_chosen) / chosen_lengths
    rejected_logratio = (policy_rejected - ref_rejected) / rejected_lengths
    h = chosen_logratio - rejected_logratio
    losses = (h - 1 / (2 * beta)) ** 2  # (h - 1/(2 tau))^2
    metrics = _reward_metrics(beta * chosen_logratio.detach(), beta * rejected_logratio.detach())
    return _weighted_mean(losses, weights), metrics


def simpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    gamma: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """SimPO (Meng et al. 2024, https://arxiv.org/abs/2405.14734, eq. 6), all args [B].

    Reference-free: the implicit reward is the length-normalised policy log-probability,
    and gamma is the target margin between chosen and rejected rewards.
    """
    chosen_rewards = beta * policy_chosen / chosen_lengths
    rejected_rewards = beta * policy_rejected / rejected_lengths
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return _weighted_mean(losses, weights), _reward_metrics(chosen_rewards.detach(), rejected_rewards.detach())


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: float = 0.0,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Reward-model loss on scalar rewards [B]: -log sigmoid(r_chosen - r_rejected - margin), the
    Bradley-Terry likelihood of the preference (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155, eq. 1),
    with an optional margin (Llama 2, Touvron et al. 2023, https://arxiv.org/abs/2307.09288, eq. 2) and
    optional reward centering, + center_coef * (r_chosen + r_rejected)^2, which pins the rewards' level that
    the pairwise loss leaves free (Eisenstein et al. 2023, https://arxiv.org/abs/2312.09244; TRL's
    `center_rewards_coefficient`)."""
    losses = -F.logsigmoid(chosen - rejected - margin)
    if center_coef:
        losses = losses + center_coef * (chosen + rejected) ** 2
    chosen, rejected = chosen.detach(), rejected.detach()
    metrics = {"accuracy": (chosen > rejected).float().mean().item(), "margin": (chosen - rejected).mean().item(),
               "chosen": chosen.mean().item(), "rejected": rejected.mean().item()}
    return losses.mean(), metrics


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over the response tokens of each sequence.

    logits [N, T, V] from a causal LM over input_ids [N, T]; response_mask [N, T] is 1 on
    response tokens. Position t's logits predict token t+1, hence the shift.
    """
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logprobs = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token_logprobs * response_mask[:, 1:]).sum(-1)


def token_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || policy) of each position's next-token distribution, logits [M, V] -> [M], float32:
    sum_v p_ref(v) (log p_ref(v) - log p_policy(v)). Forward KL: it is large wherever the policy takes mass
    from tokens the reference expects (a refusal's "I" where the reference answers), and its gradient is
    p_policy - p_ref on every token, not only on the one the data wrote."""
    ref = torch.log_softmax(reference_logits.float(), dim=-1)
    return (ref.exp() * (ref - torch.log_softmax(policy_logits.float(), dim=-1))).sum(-1)
