"""A judge's calls to its generation engine, with a per-request timeout and retries with back-off.

An LLM judge asks its engine for many continuations at once (verdicts, critiques, revisions).
Two things can go wrong, and neither may stall the run:
  - a request runs past `timeout_s`: the engine aborts it, the judge tries it again after a
    back-off, and after the last try it comes back as None (no verdict, no revision; counted);
  - the engine call raises (a transient failure: memory pressure, a device hiccup): the
    unfinished requests are tried again after a back-off; after the last try the error is
    raised, the judge process stops, and the learner hands its task to another judge once the
    heartbeats stop.
Back-off doubles from `backoff_s`, with jitter so that several judges do not retry in step.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

log = logging.getLogger(__name__)


class CompletionEngine(Protocol):
    def complete(self, prompts: list[np.ndarray], max_new_tokens: int, temperature: float = 0.0,
                 seeds: list[int] | None = None, allowed_token_ids: list[int] | None = None,
                 timeout_s: float | None = None) -> list[list[int] | None]: ...


@dataclass
class GuardStats:
    requests: int = 0  # continuations asked for (before retries)
    retries: int = 0  # engine calls repeated after a timeout or an error
    timeouts: int = 0  # requests that ran out of tries on the clock: no output
    too_long: int = 0  # requests whose prompt leaves no room for the answer in the judge's context: not sent
    errors: int = 0  # engine calls that raised


@dataclass(frozen=True)
class RetryPolicy:
    timeout_s: float | None = 60.0  # per engine call; None waits for ever
    retries: int = 2  # tries after the first
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Exponential back-off with full jitter (attempt 1 waits up to backoff_s, then doubles)."""
        return rng.uniform(0.5, 1.0) * min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


class GuardedEngine:
    def __init__(self, engine: CompletionEngine, policy: RetryPolicy, max_model_len: int | None = None,
                 sleep: Callable[[float], None] = time.sleep, seed: int = 0):
        self.engine, self.policy, self.max_model_len, self.sleep = engine, policy, max_model_len, sleep
        self.stats = GuardStats()
        self._rng = random.Random(seed)

    def close(self) -> None:
        """Stop the engine inside, if it has anything to stop (a VLLMEngine does)."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    def complete(self, prompts: list[np.ndarray], max_new_tokens: int, temperature: float = 0.0,
                 seeds: list[int] | None = None, allowed_token_ids: list[int] | None = None) -> list[list[int] | None]:
        """One continuation per prompt (see the engine's `complete`); None for a request that timed
        out on every try or did not fit."""
        self.stats.requests += len(prompts)
        results: list[list[int] | None] = [None] * len(prompts)
        room = None if self.max_model_len is None else self.max_model_len - max_new_tokens
        pending = [i for i, p in enumerate(prompts) if room is None or len(p) <= room]
        self.stats.too_long += len(prompts) - len(pending)
        if not pending:
            return results
        for attempt in range(self.policy.retries + 1):
            if attempt:
                self.stats.retries += 1
                self.sleep(self.policy.delay(attempt, self._rng))
            try:
                outputs = self.engine.complete([prompts[i] for i in pending], max_new_tokens, temperature,
                                               [seeds[i] for i in pending] if seeds else None, allowed_token_ids,
                                               self.policy.timeout_s)
            except Exception as exc:  # noqa: BLE001 - any engine failure gets the same retry treatment
                self.stats.errors += 1
                if attempt == self.policy.retries:
                    raise
                log.warning("judge engine call failed (%s: %s); retry %d of %d", type(exc).__name__, exc,
                            attempt + 1, self.policy.retries)
                continue
            for i, out in zip(pending, outputs):
                results[i] = out
            pending = [i for i in pending if results[i] is None]
            if not pending:
                return results
            log.warning("%d judge requests ran past %.1f s (try %d of %d)", len(pending), self.policy.timeout_s,
                        attempt + 1, self.policy.retries + 1)
        self.stats.timeouts += len(pending)
        return results
