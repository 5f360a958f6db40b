"""What the judges did, as the learner's metrics: throughput and latency per judge, and the
rates that tell whether a judge can be trusted (ties, unreadable verdicts, position flips,
revisions that changed nothing).

The socket thread records every accepted `Scores`; the training loop reads `metrics()` once
per step. Each `Scores` carries its judge's running counters; only the names listed here are
kept (a peer cannot invent metric names) and only finite values.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

# Counters a judge may report (see JudgeActor.stats and the judge kinds' stats()).
KNOWN_STATS = (
    "tasks", "samples", "pairs", "busy_seconds",  # every judge
    "comparisons", "preferences", "ties", "unparseable", "inconsistent",  # llm_pairwise
    "revisions", "revisions_differ", "revisions_empty", "unrevised", "unknown_tokens_dropped",  # cai
    "requests", "retries", "timeouts", "errors", "too_long", "cache_hits",  # LLM judges' engine calls
    "gate_fired",  # composed
    "truncated",  # reward model: inputs cut to its context
)


@dataclass
class _Judge:
    name: str  # judge_id, for metric names
    stats: dict[str, float] = field(default_factory=dict)  # its latest running counters
    tasks: int = 0  # accepted by the learner, all time
    interval_samples: int = 0  # since the last metrics() call
    interval_seconds: float = 0.0  # judge_seconds summed over the interval's tasks
    interval_tasks: int = 0


class JudgeBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._judges: dict[str, _Judge] = {}  # "judge_id#incarnation" ->
        self._interval_prompts = 0
        self._interval_pairs = 0

    def record(self, judge_id: str, incarnation: int, prompts: int, samples: int, pairs: int, seconds: float,
               stats: dict[str, float]) -> None:
        """One accepted judgement of `prompts` prompts (`samples` samples) giving `pairs` valid pairs."""
        kept = {k: float(v) for k, v in stats.items() if k in KNOWN_STATS and math.isfinite(v)}
        with self._lock:
            judge = self._judges.setdefault(f"{judge_id}#{incarnation}", _Judge(judge_id))
            judge.stats = kept
            judge.tasks += 1
            judge.interval_tasks += 1
            judge.interval_samples += samples
            judge.interval_seconds += max(0.0, seconds) if math.isfinite(seconds) else 0.0
            self._interval_prompts += prompts
            self._interval_pairs += pairs

    def metrics(self, elapsed_s: float) -> dict[str, float]:
        """Per-judge rates over the `elapsed_s` since the last call, and the judges' pooled rates."""
        out: dict[str, float] = {}
        with self._lock:
            for judge in self._judges.values():
                if judge.interval_tasks:
                    out[f"judge/{judge.name}/judgements_per_s"] = judge.interval_samples / max(elapsed_s, 1e-6)
                    out[f"judge/{judge.name}/latency_s"] = judge.interval_seconds / judge.interval_tasks
                out[f"judge/{judge.name}/tasks"] = judge.tasks
                judge.interval_samples, judge.interval_seconds, judge.interval_tasks = 0, 0.0, 0
            if self._interval_prompts:
                out["judge/pairs_per_prompt"] = self._interval_pairs / self._interval_prompts
            self._interval_prompts = self._interval_pairs = 0
            total = {name: sum(j.stats.get(name, 0.0) for j in self._judges.values()) for name in KNOWN_STATS}
        out.update(pooled_rates(total))
        return out

    def summary(self) -> dict[str, dict]:
        """Every judge's latest counters and the tasks the learner accepted from it (for summary.json)."""
        with self._lock:
            return {key: {**j.stats, "accepted_tasks": j.tasks} for key, j in self._judges.items()}


def pooled_rates(total: dict[str, float]) -> dict[str, float]:
    """Rates over all judges' counters; only those whose denominator is non-zero."""
    out: dict[str, float] = {}
    verdicts = total["preferences"] + total["ties"] + total["unparseable"]  # debiased comparisons
    if verdicts:
        out["judge/tie_rate"] = total["ties"] / verdicts
        out["judge/unparseable_rate"] = total["unparseable"] / verdicts
        out["judge/inconsistent_rate"] = total["inconsistent"] / verdicts
    if total["revisions"]:
        out["judge/revision_differs"] = total["revisions_differ"] / total["revisions"]
    if total["revisions"] + total["unrevised"]:
        out["judge/unrevised_rate"] = total["unrevised"] / (total["revisions"] + total["unrevised"])
    if total["requests"]:
        out["judge/timeout_rate"] = total["timeouts"] / total["requests"]
        out["judge/retries"] = total["retries"]
    return out
