"""Log lines a peer can trigger on purpose, rationed: the first few of each kind, then every Nth.

A stranger can make the learner refuse a frame or declare a made-up name dead as often as it
likes; without a budget each would cost a log line (20,000 names once cost 5.5 MB of log).
"""

from __future__ import annotations


class LogBudget:
    def __init__(self, first: int = 20, every: int = 1000):
        self.first, self.every = first, every
        self.counts: dict[str, int] = {}

    def allow(self, kind: str) -> bool:
        """Count one event of `kind`; True when it should be logged."""
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        return n <= self.first or n % self.every == 0

    def note(self, kind: str) -> str:
        """A suffix that tells the reader how many of this kind there were so far."""
        n = self.counts.get(kind, 0)
        return f" ({n} so far; logging the first {self.first}, then every {self.every}th)" if n >= self.first else ""
