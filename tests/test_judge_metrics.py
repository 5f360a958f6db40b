"""The learner's view of its judges: per-judge throughput and latency, pooled trust rates."""

from __future__ import annotations

import math

import pytest

from tiller.learner.judge_metrics import JudgeBook


def test_each_judge_gets_its_own_rate_and_latency_per_interval():
    book = JudgeBook()
    book.record("fast", 1, prompts=2, samples=8, pairs=2, seconds=0.5, stats={"tasks": 1})
    book.record("fast", 1, prompts=2, samples=8, pairs=1, seconds=1.5, stats={"tasks": 2})
    book.record("slow", 7, prompts=2, samples=8, pairs=0, seconds=4.0, stats={"tasks": 1})
    m = book.metrics(elapsed_s=4.0)
    assert m["judge/fast/judgements_per_s"] == 4.0 and m["judge/slow/judgements_per_s"] == 2.0
    assert m["judge/fast/latency_s"] == 1.0 and m["judge/slow/latency_s"] == 4.0
    assert m["judge/fast/tasks"] == 2 and m["judge/pairs_per_prompt"] == pytest.approx(3 / 6)
    quiet = book.metrics(elapsed_s=4.0)  # nothing judged since: no rates, the task counts stay
    assert "judge/fast/judgements_per_s" not in quiet and quiet["judge/slow/tasks"] == 1
    assert "judge/pairs_per_prompt" not in quiet


def test_pooled_rates_come_from_the_latest_counters_of_every_judge():
    book = JudgeBook()
    book.record("a", 1, 1, 4, 1, 0.1, {"preferences": 6, "ties": 2, "unparseable": 2, "inconsistent": 1,
                                        "requests": 20, "timeouts": 1, "retries": 3})
    book.record("a", 1, 1, 4, 1, 0.1, {"preferences": 8, "ties": 2, "unparseable": 2, "inconsistent": 1,
                                        "requests": 24, "timeouts": 1, "retries": 3})  # running totals
    book.record("b", 1, 1, 4, 2, 0.1, {"revisions": 8, "revisions_differ": 6, "unrevised": 2})
    m = book.metrics(1.0)
    assert m["judge/tie_rate"] == m["judge/unparseable_rate"] == pytest.approx(2 / 12)
    assert m["judge/inconsistent_rate"] == pytest.approx(1 / 12)
    assert m["judge/revision_differs"] == 0.75 and m["judge/unrevised_rate"] == 0.2
    assert m["judge/timeout_rate"] == pytest.approx(1 / 24) and m["judge/retries"] == 3


def test_a_peer_cannot_invent_metric_names_or_send_non_numbers():
    book = JudgeBook()
    book.record("x", 1, 1, 2, 0, math.nan, {"ties": math.inf, "evil/key": 1.0, "preferences": 2})
    m = book.metrics(1.0)
    assert not any("evil" in key for key in m)
    assert m["judge/tie_rate"] == 0.0 and m["judge/x/latency_s"] == 0.0
    assert book.summary() == {"x#1": {"preferences": 2.0, "accepted_tasks": 1}}
