"""The algorithm registry: each entry says what it needs from judges and which step it runs.

An algorithm is a small record, not a trainer subclass. `needs` decides which judged
prompts a step can use: "pairs" takes only prompts where the judge named a chosen and a
rejected sample; "scores" takes every judged prompt with all k scored samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from tiller.learner.dpo import dpo_step
from tiller.learner.pg import pg_step


@dataclass(frozen=True)
class Algorithm:
    name: str
    needs: Literal["pairs", "scores"]
    critic: bool  # build a value model beside the policy
    step: Callable[..., dict[str, float]]  # (trainer, items, cfg, pad_id) -> metrics


ALGORITHMS = {
    "online_dpo": Algorithm("online_dpo", needs="pairs", critic=False, step=dpo_step),
    "ppo": Algorithm("ppo", needs="scores", critic=True, step=pg_step),
    "grpo": Algorithm("grpo", needs="scores", critic=False, step=pg_step),
    "rloo": Algorithm("rloo", needs="scores", critic=False, step=pg_step),
}
