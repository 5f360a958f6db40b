"""The metric names the docs list are the names the learner logs: README's table, docs/metrics.md and
tiller/metric_names.py agree (a real run's names are checked against the groups in test_e2e.py)."""

from __future__ import annotations

import re
from pathlib import Path

from tiller.metric_names import GROUPS, LIVE_EVAL, RENAMED

ROOT = Path(__file__).parents[1]
JUDGE_SCORES = {"reward/mean", "reward/std", "reward/chosen", "reward/rejected"}  # already grouped at the source
VARYING = {"train/staleness/lag_<N>", "perf/judge/<id>/judgements_per_s", "perf/judge/<id>/latency_s",
           "perf/judge/<id>/tasks"}


def logged_names() -> set[str]:
    return {"step"} | set(RENAMED.values()) | JUDGE_SCORES | VARYING | set(LIVE_EVAL)


def docs_names() -> set[str]:
    names = set()
    for line in (ROOT / "docs/metrics.md").read_text().splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([^`]+)`", line.split(" | ")[0]))
    return names


def readme_names() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Metrics"):]
    section = section[:section.index("\n## ", 1)]
    names = {"step"} if "`step`" in section else set()
    for group, keys in re.findall(r"^\| `([a-z]+)/` \| (.+) \|$", section, re.M):
        names |= {f"{group}/{k.strip()}" for k in keys.split(",")}
    return names


def test_docs_metrics_lists_every_logged_name_and_no_other():
    assert docs_names() == logged_names(), (docs_names() ^ logged_names())


def test_the_readme_table_lists_every_logged_name_by_group():
    assert readme_names() == logged_names(), (readme_names() ^ logged_names())
    assert all(name == "step" or name.split("/")[0] in GROUPS for name in readme_names())


def test_live_evaluation_logs_exactly_the_names_documented():
    import re

    source = "".join((ROOT / f).read_text() for f in ("tiller/learner/live_eval.py", "tiller/eval/live.py"))
    assert set(re.findall(r'"(eval/[a-z_]+)"', source)) == set(LIVE_EVAL)
