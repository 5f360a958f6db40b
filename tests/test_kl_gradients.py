"""Each KL form the config loader allows has the gradient it claims, on a toy categorical policy.

A 6-token categorical policy pi = softmax(theta) and a fixed reference. Tokens are sampled from pi
(on-policy) or from another policy mu with importance weights (off-policy), the loss term is
averaged over them and differentiated with autograd, and the result is compared with the analytic
gradient of the divergence it claims: k1 in the reward (REINFORCE on -k1) and k2 as a loss term give
grad KL(pi || ref); k3 as a loss term gives grad KL(ref || pi), which is what it is documented as.
The forms the loader refuses are shown to be wrong in the same way.
"""

from __future__ import annotations

import pytest
import torch

from tiller.config import ConfigError, load_config
from tiller.training import pg_losses as pg

V, N = 6, 400_000


def setup(seed: int):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(V, generator=g, dtype=torch.float64)
    ref = torch.log_softmax(torch.randn(V, generator=g, dtype=torch.float64), -1)
    return theta, ref, g


def analytic(theta: torch.Tensor, ref: torch.Tensor, reverse: bool) -> torch.Tensor:
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    kl = (ref.exp() * (ref - logp)).sum() if reverse else (logp.exp() * (logp - ref)).sum()
    (grad,) = torch.autograd.grad(kl, theta)
    return grad


def sampled_gradient(theta, ref, g, form: str, estimator: str, off_policy: bool = False) -> torch.Tensor:
    theta = theta.clone().requires_grad_(True)
    logp_all = torch.log_softmax(theta, -1)
    behaviour_all = torch.log_softmax(theta.detach() + 0.3 * torch.randn(V, generator=g, dtype=torch.float64), -1) \
        if off_policy else logp_all.detach()
    tokens = torch.multinomial(behaviour_all.exp(), N, replacement=True, generator=g)
    logp, ref_logp, behaviour = logp_all[tokens][None], ref[tokens][None], behaviour_all[tokens][None]
    mask = torch.ones_like(logp)
    if form == "reward":  # REINFORCE on the per-token reward -k1 (one-token episodes), as PPO folds it in
        penalty = pg.kl_estimate(logp.detach(), ref_logp, estimator)
        weight = torch.exp(logp.detach() - behaviour)
        loss = pg.masked_mean(weight * penalty * logp, mask)
    else:
        loss, _ = pg.kl_penalty(logp, ref_logp, behaviour, mask, estimator, is_cap=None)
    (grad,) = torch.autograd.grad(loss, theta)
    return grad


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("off_policy", [False, True])
def test_allowed_kl_forms_follow_the_gradient_they_claim(seed, off_policy):
    theta, ref, g = setup(seed)
    forward, reverse = analytic(theta, ref, reverse=False), analytic(theta, ref, reverse=True)
    for form, estimator, target in (("reward", "k1", forward), ("loss", "k2", forward), ("loss", "k3", reverse)):
        grad = sampled_gradient(theta, ref, g, form, estimator, off_policy)
        assert cosine(grad, target) > 0.98, (form, estimator, cosine(grad, target))
        assert float(grad.norm() / target.norm()) == pytest.approx(1.0, abs=0.1), (form, estimator)


def test_refused_forms_are_wrong_the_way_the_loader_says():
    theta, ref, g = setup(0)
    forward = analytic(theta, ref, reverse=False)
    # k1 as a loss term: zero expected gradient (score-function identity)
    assert sampled_gradient(theta, ref, g, "loss", "k1").norm() < 0.02 * forward.norm()
    # k3 in the reward is not grad KL(pi || ref): over random cases it points elsewhere
    misses = sum(cosine(sampled_gradient(*setup(s), "reward", "k3"), analytic(*setup(s)[:2], reverse=False)) < 0.98
                 for s in range(10))
    assert misses >= 3


@pytest.mark.parametrize("overrides,message", [
    (["learner.algorithm=grpo", "learner.pg.kl_estimator=k1"], "k1 as a loss term has no gradient"),
    (["learner.algorithm=ppo", "learner.pg.kl_estimator=k3", "learner.pg.kl_in_reward=true"], "only k1"),
    (["learner.algorithm=rloo", "learner.pg.kl_in_reward=true"], "no per-token reward"),
])
def test_the_loader_refuses_kl_forms_without_the_gradient_they_promise(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_defaults_resolve_per_algorithm():
    ppo = load_config(None, ["learner.algorithm=ppo"]).learner.pg
    grpo = load_config(None, ["learner.algorithm=grpo"]).learner.pg
    assert (ppo.kl_in_reward, ppo.kl_estimator, ppo.whiten_advantages) == (True, "k1", True)
    assert (grpo.kl_in_reward, grpo.kl_estimator, grpo.whiten_advantages) == (False, "k2", False)
