"""The names the online learner's metrics are logged under, grouped the way dashboards sort panels.

The code that computes a number names it for what it is where it is computed (a DPO loss returns
`rewards/margin`, the lease book counts `leases/expired`); this table alone decides where it is shown:

    train/      what the optimizer did: loss, gradient norm, learning rate, skipped steps, staleness
    objective/  the terms the loss is made of: KL to the reference, DPO's implicit rewards, log-probs,
                advantages, ratios, importance weights
    reward/     what the judges said: scores of the samples, pairs per prompt, LLM-judge quality rates
    eval/       held-out evaluation (the offline stages' held-out split)
    perf/       speed: samples and tokens per second, phase times, each judge's rate, weight publishing
    system/     the machinery: leases, queues, protocol and security counters, workers, checkpoints

`grouped(key)` maps a name to its logged name and is idempotent, so `tiller plot` reads runs written
before the grouping (their rows pass through it) and new ones alike; names it does not know (the
offline stages' `train/...`, `eval/...`, `epoch`) pass unchanged.
"""

from __future__ import annotations

import re
from typing import Any

GROUPS = ("train", "objective", "reward", "eval", "perf", "system")

RENAMED: dict[str, str] = {
    # train/
    "loss": "train/loss",
    "loss/policy": "train/loss_policy",
    "loss/value": "train/loss_value",
    "grad_norm": "train/grad_norm",
    "lr": "train/lr",
    "skipped": "train/skipped",
    "ppo/updates": "train/updates",
    "critic/grad_norm": "train/critic_grad_norm",
    "critic/skipped": "train/critic_skipped",
    "pairs": "train/pairs",
    "policy_version": "train/policy_version",
    "staleness/mean": "train/staleness/mean",
    "staleness/max": "train/staleness/max",
    "response_length/mean": "train/response_length",
    # objective/
    "kl/sequence": "objective/kl/sequence",
    "kl/mean": "objective/kl/token",
    "kl/loss_term": "objective/kl/loss_term",
    "kl/weight_mean": "objective/kl/weight_mean",
    "rewards/chosen": "objective/implicit_reward/chosen",  # DPO's beta * log(pi / pi_ref), not the judge's
    "rewards/rejected": "objective/implicit_reward/rejected",
    "rewards/margin": "objective/implicit_reward/margin",
    "rewards/accuracy": "objective/pair_accuracy",
    "logps/chosen": "objective/logps/chosen",
    "logps/rejected": "objective/logps/rejected",
    "offpolicy/logratio": "objective/offpolicy/logratio",
    "offpolicy/weight": "objective/offpolicy/weight",
    "advantage/mean": "objective/advantage/mean",
    "advantage/std": "objective/advantage/std",
    "entropy": "objective/entropy",
    "policy/clipfrac": "objective/policy/clipfrac",
    "policy/approx_kl": "objective/policy/approx_kl",
    "policy/ratio_mean": "objective/policy/ratio_mean",
    "is/weight_mean": "objective/is/weight_mean",
    "is/truncated_frac": "objective/is/truncated_frac",
    "is/behaviour_logp_gap": "objective/is/behaviour_logp_gap",
    "value/clipfrac": "objective/value/clipfrac",
    "value/explained_variance": "objective/value/explained_variance",
    # reward/ (reward/mean, reward/std, reward/chosen, reward/rejected keep their names: judge scores)
    "judge/pairs_per_prompt": "reward/pairs_per_prompt",
    "judge/tie_rate": "reward/judge/tie_rate",
    "judge/unparseable_rate": "reward/judge/unparseable_rate",
    "judge/inconsistent_rate": "reward/judge/inconsistent_rate",
    "judge/revision_differs": "reward/judge/revision_differs",
    "judge/unrevised_rate": "reward/judge/unrevised_rate",
    "judge/timeout_rate": "reward/judge/timeout_rate",
    "judge/retries": "reward/judge/retries",
    # perf/
    "samples_per_s": "perf/samples_per_s",
    "tokens/generated_per_s": "perf/tokens_generated_per_s",
    "tokens/trained_per_s": "perf/tokens_trained_per_s",
    "time/wait_s": "perf/time/wait_s",
    "time/train_s": "perf/time/train_s",
    "time/publish_s": "perf/time/publish_s",
    "time/step_s": "perf/time/step_s",
    "time/first_step_s": "perf/time/first_step_s",
    "learner/idle_frac": "perf/learner_idle_frac",
    "learner/threads": "perf/learner_threads",
    "learner/thread_switches": "perf/learner_thread_switches",
    "reference_ahead/on": "perf/reference_ahead",
    "reference_ahead/busy_s": "perf/reference_ahead_s",
    "reference_ahead/prompts": "perf/reference_ahead_prompts",
    "actors/generate_s": "perf/actors/generate_s",
    "actors/load_s": "perf/actors/load_s",
    "actors/idle_s": "perf/actors/idle_s",
    "actors/idle_frac": "perf/actors/idle_frac",
    "weights/publish_s": "perf/weights/publish_s",
    "weights/publish_gbps": "perf/weights/publish_gbps",
    # system/
    "leases/issued": "system/leases/issued",
    "leases/expired": "system/leases/expired",
    "leases/duplicates_dropped": "system/leases/duplicates_dropped",
    "leases/wrong_sender": "system/leases/wrong_sender",
    "leases/rollouts_invalid": "system/leases/rollouts_invalid",
    "leases/scores_invalid": "system/leases/scores_invalid",
    "leases/waits_peer_credit": "system/leases/waits_peer_credit",
    "prompts/released": "system/prompts_released",
    "queue/awaiting_judges": "system/queue/awaiting_judges",
    "queue/inflight_prompts": "system/queue/inflight_prompts",
    "actors/oldest_version": "system/actors_oldest_version",
    "judge/failures": "system/judge_failures",
    "judge/pairs_invalid": "system/judge_pairs_invalid",
    "weights/buffer_sets": "system/weights/buffer_sets",
    "weights/readers_cut": "system/weights/readers_cut",
    "weights/superseded_held": "system/weights/superseded_held",
    "weights/unpooled_versions": "system/weights/unpooled_versions",
    "protocol/rejected": "system/protocol/rejected",
    "protocol/handler_errors": "system/protocol/handler_errors",
    "protocol/handshakes_failed": "system/protocol/handshakes_failed",
    "protocol/peers_refused": "system/protocol/peers_refused",
    "protocol/send_dropped": "system/protocol/send_dropped",
    "protocol/unregistered_refused": "system/protocol/unregistered_refused",
    "security/impersonations": "system/security/impersonations",
    "workers/exited": "system/workers/exited",
    "workers/stuck": "system/workers/stuck",
    "checkpoint/failed_saves": "system/checkpoint_failed_saves",
}

# live evaluation's (tiller/learner/live_eval.py), logged as they are, on the step a round completes
LIVE_EVAL = ("eval/harmful_refusal", "eval/over_refusal", "eval/win_rate", "eval/reward", "eval/response_length",
             "eval/length_ratio", "eval/prompts", "eval/version", "eval/round_step", "eval/reference_version",
             "eval/rounds_dropped", "eval/reward_hacking")

# names with a part that varies: a judge's own id, a lag in policy versions
_PATTERNS = [
    (re.compile(r"^judge/([^/]+)/(judgements_per_s|latency_s|tasks)$"), r"perf/judge/\1/\2"),
    (re.compile(r"^staleness/lag_(\d+)$"), r"train/staleness/lag_\1"),
]


def grouped(key: str) -> str:
    """The logged name of a metric (unchanged if it is one already, or unknown)."""
    if key in RENAMED:
        return RENAMED[key]
    for pattern, replacement in _PATTERNS:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return key


def grouped_row(row: dict[str, Any]) -> dict[str, Any]:
    return {grouped(k): v for k, v in row.items()}
