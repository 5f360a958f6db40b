"""Pairwise preferences (RLAIF): parse a judge model's verdict, debias it by swapping positions,
and turn verdicts over k samples into scores and a (chosen, rejected) pair.

Pure functions; the LLM that produces the verdict text lives in `llm_judge.py`.
"""

from __future__ import annotations

import itertools
import re
from typing import Callable, Literal, Sequence

import numpy as np

Verdict = Literal["A", "B", "tie"]

_TIE = re.compile(r"\b(tie|neither|both (are )?(equally|the same)|equal(ly good)?|no preference)\b", re.I)
# "Response A", "**B**", "Answer: A", "A." at the start, "(B)" ... but not the article "a".
_LETTER = re.compile(r"(?:response|answer|option|verdict|choice|winner)?\s*[:\-]?\s*[\*\(\[\"']*\b([AB])\b[\*\)\]\"'.]*")


def parse_verdict(text: str) -> Verdict | None:
    """The judge's verdict, or None when it cannot be read (empty, both letters, neither letter).

    Looks at the first line that says anything, so an explanation that mentions the other
    response afterwards does not flip the verdict.
    """
    for line in text.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        if _TIE.search(line):
            return "tie"
        letters = {m.group(1) for m in _LETTER.finditer(line)}
        if len(letters) == 1:
            return letters.pop()  # type: ignore[return-value]
        return None  # both letters, or none, on the deciding line
    return None


def debiased(first: Verdict | None, swapped: Verdict | None) -> Verdict | None:
    """Combine a verdict on (x, y) with one on (y, x). Judges favour a position; a preference
    counts only if it survives the swap (Zheng et al. 2023, https://arxiv.org/abs/2306.05685).
    Returns the winner in the first order's letters, "tie" when inconsistent, None if unreadable."""
    if first is None or swapped is None:
        return None
    unswapped = {"A": "B", "B": "A", "tie": "tie"}[swapped]
    return first if first == unswapped else "tie"


def comparisons(k: int, mode: Literal["all_pairs", "tournament"]) -> list[tuple[int, int]]:
    """Which samples to compare: every pair, or a single-elimination bracket's first round
    (k/2 comparisons; the rest are played as winners become known, see `tournament_scores`)."""
    if mode == "all_pairs":
        return list(itertools.combinations(range(k), 2))
    return [(i, i + 1) for i in range(0, k - 1, 2)]


def wins_to_scores(k: int, results: Sequence[tuple[int, int, Verdict | None]]) -> np.ndarray:
    """Score each sample by its share of decided comparisons won (ties count half)."""
    wins, played = np.zeros(k), np.zeros(k)
    for i, j, verdict in results:
        if verdict is None:
            continue
        played[[i, j]] += 1
        if verdict == "A":
            wins[i] += 1
        elif verdict == "B":
            wins[j] += 1
        else:
            wins[[i, j]] += 0.5
    return np.divide(wins, played, out=np.full(k, 0.5), where=played > 0).astype(np.float32)


def tournament_scores(k: int, judge: Callable[[list[tuple[int, int]]], list[Verdict | None]]) -> np.ndarray:
    """Single elimination: each round's comparisons go to `judge` as one batch. A sample's score is
    the round it reached, normalised to 0..1; an unreadable or tied match advances the first."""
    alive = list(range(k))
    reached = np.zeros(k)
    round_no = 0
    while len(alive) > 1:
        round_no += 1
        matches = [(alive[i], alive[i + 1]) for i in range(0, len(alive) - 1, 2)]
        verdicts = judge(matches)
        winners = [j if v == "B" else i for (i, j), v in zip(matches, verdicts)]
        if len(alive) % 2:
            winners.append(alive[-1])  # a bye
        for w in winners:
            reached[w] = round_no
        alive = winners
    return (reached / max(round_no, 1)).astype(np.float32)
