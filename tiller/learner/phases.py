"""Where a run's time goes, step by step: the learner's own phases and the actors' reported ones.

    clock = StepClock(server.public)
    with clock.phase("wait"): ...          # taking a batch
    with clock.phase("train"): ...         # the algorithm's step
    metrics.update(clock.finish(server.public, lags, lag_bound, trained_tokens))

Learner phases are timed here; actor phases (generating, loading weights, idle) arrive with each
rollout (`Rollout.generate_seconds`, `load_seconds`, `idle_seconds`), are summed by the coordinator,
and enter a step's metrics as the difference since the previous step. `time/first_step_s` is the
time from the start of `tiller run` (or of this process, when started alone) to the end of the
first trained step.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from tiller.timeline import since_start


class StepClock:
    def __init__(self, public: dict):
        self._phases = dict(public.get("phases", {}))
        self._start = time.monotonic()
        self._seconds: dict[str, float] = {}
        self._first = True

    @contextmanager
    def phase(self, name: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.monotonic() - started

    def finish(self, public: dict, lags: list[int], lag_bound: int, trained_tokens: int) -> dict[str, float]:
        """This step's phase metrics; starts the next step's clock."""
        now = time.monotonic()
        wall = max(now - self._start, 1e-9)
        seconds, self._seconds, self._start = self._seconds, {}, now
        metrics = {f"time/{name}_s": value for name, value in seconds.items()}
        metrics["time/step_s"] = wall
        metrics["learner/idle_frac"] = seconds.get("wait", 0.0) / wall
        phases = public.get("phases", {})
        delta = {key: phases.get(key, 0) - self._phases.get(key, 0) for key in phases}
        self._phases = dict(phases)
        busy = delta.get("generate_s", 0.0) + delta.get("load_s", 0.0)
        metrics.update({
            "actors/generate_s": delta.get("generate_s", 0.0),
            "actors/load_s": delta.get("load_s", 0.0),
            "actors/idle_s": delta.get("idle_s", 0.0),
            "actors/idle_frac": delta.get("idle_s", 0.0) / max(busy + delta.get("idle_s", 0.0), 1e-9),
            "tokens/generated_per_s": delta.get("tokens_generated", 0) / wall,
            "tokens/trained_per_s": trained_tokens / wall,
        })
        queues = public.get("queues", {})
        metrics["queue/awaiting_judges"] = queues.get("awaiting_judges", 0)
        metrics["queue/inflight_prompts"] = queues.get("inflight_prompts", 0)
        for lag in range(lag_bound + 1):  # the staleness histogram: share of the batch at each lag
            metrics[f"staleness/lag_{lag}"] = sum(1 for x in lags if x == lag) / max(len(lags), 1)
        if self._first:
            metrics["time/first_step_s"] = since_start()
            self._first = False
        return metrics
