"""Pure arithmetic of evaluation: checkable answers, rates with their intervals, win rate.

Every rate comes with a 95% interval so that two evaluations can be told apart from noise: a Wilson
score interval for a fraction of yes/no outcomes (right near 0 and 1, where evaluation rates live), and a
normal interval over per-prompt scores for the win rate, where a tie is worth half.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def wilson(successes: float, n: int, z: float = Z95) -> Rate:
    """A fraction and its Wilson score interval (Wilson 1927); n = 0 gives nan."""
    if n == 0:
        return Rate(math.nan, math.nan, math.nan, 0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, not 1e-17 off
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Rate(p, low, high, n)


def fraction(flags: Sequence[bool]) -> Rate:
    return wilson(sum(bool(f) for f in flags), len(flags))


def mean_interval(values: Sequence[float], z: float = Z95) -> Rate:
    """A mean and its normal-approximation interval (clipped to 0..1 for scores in that range)."""
    n = len(values)
    if n == 0:
        return Rate(math.nan, math.nan, math.nan, 0)
    mean = sum(values) / n
    if n == 1:
        return Rate(mean, mean, mean, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return Rate(mean, mean - half, mean + half, n)


# A verdict on (model's answer, baseline's answer), already debiased over both orders.
def win_points(verdicts: Sequence[str | None]) -> list[float]:
    """Each decided comparison's worth to the model: 1 a win ("A"), 0 a loss ("B"), 0.5 a tie. Unreadable
    verdicts (None) are left out: they say nothing about either model."""
    worth = {"A": 1.0, "B": 0.0, "tie": 0.5}
    return [worth[v] for v in verdicts if v is not None]


def win_rate(verdicts: Sequence[str | None]) -> Rate:
    """The model's win rate against the baseline, ties as half, with a 95% interval."""
    points = win_points(verdicts)
    rate = mean_interval(points)
    return Rate(rate.value, max(0.0, rate.low), min(1.0, rate.high), rate.n)


def reward_verdicts(model: Sequence[float], baseline: Sequence[float], tie_margin: float = 1e-6) -> list[str]:
    """A reward model as the pairwise judge: the higher score wins, scores within `tie_margin` tie."""
    return ["tie" if abs(a - b) <= tie_margin else ("A" if a > b else "B") for a, b in zip(model, baseline)]


_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text.casefold().replace(",", "")).strip()


def answer_found(response: str, answers: Sequence[str]) -> bool:
    """A checkable answer passes when any accepted answer appears in the response (case-insensitive,
    whitespace collapsed, thousands separators ignored). A short or numeric answer must stand as a whole
    word or number, so that "4" is not found in "14" and "cat" not in "category"."""
    text = normalise(response)
    for answer in answers:
        wanted = normalise(answer)
        if not wanted:
            continue
        if len(wanted) <= 4 or wanted.replace(".", "").isdigit():
            if re.search(rf"(?<![\w.]){re.escape(wanted)}(?![\w]|\.\d)", text):
                return True
        elif wanted in text:
            return True
    return False
