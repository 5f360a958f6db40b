"""completions.jsonl: what the model wrote, decoded, marked and scored, and the metric names it sits beside."""

from __future__ import annotations

import json

import numpy as np

from tiller.learner.completions import CompletionLog, marks
from tiller.learner.coordinator import ScoredPrompt
from tiller.metric_names import GROUPS, RENAMED, grouped, grouped_row


class Letters:
    """A tokenizer whose ids are letters: 0 -> 'a', 1 -> 'b', ... (special ids: none)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i) for i in ids)


def item(prompt_id: int, pairs=((1, 0),), revisions=()) -> ScoredPrompt:
    return ScoredPrompt(prompt_id=prompt_id, lease_id=7, policy_version=3, prompt=np.array([7, 4, 11], np.int32),
                        responses=[np.array([0, 1], np.int32), np.array([4, 4, 4], np.int32)],
                        logprobs=[np.zeros(2, np.float32), np.zeros(3, np.float32)],
                        scores=np.array([0.25, 0.75], np.float32), truncated=np.array([False, True]),
                        pairs=pairs, revisions=revisions)


def test_rows_are_decoded_marked_and_scored_and_only_on_due_steps(tmp_path):
    log = CompletionLog(tmp_path / "completions.jsonl", Letters(), every=5, per_log=1)
    assert [s for s in range(1, 16) if log.due(s)] == [1, 5, 10, 15]
    log.log(1, 4, [item(11), item(12)])
    log.log(5, 6, [item(13, pairs=(), revisions=(np.array([2, 2], np.int32), None))])
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in rows] == [11, 13]  # per_log prompts each time
    first = rows[0]
    assert (first["step"], first["policy_version"], first["behaviour_version"], first["prompt"]) == (1, 4, 3, "hel")
    assert [(r["text"], r["score"], r["mark"], r["truncated"]) for r in first["responses"]] == [
        ("ab", 0.25, "rejected", False), ("eee", 0.75, "chosen", True)]
    revision = rows[1]["responses"][2]
    assert (revision["text"], revision["score"], revision["revision_of"]) == ("cc", None, 0)
    assert len(log.table) == 5 and log.table[0] == [1, 4, "hel", "ab", 0.25, "rejected"]
    ba = log.before_after()
    assert ba["first"][0]["best"] == "eee" and ba["last"][0]["step"] == 5


def test_a_response_chosen_in_one_pair_and_rejected_in_another_is_marked_chosen():
    assert marks(item(1, pairs=((0, 1), (1, 2)))) == {0: "chosen", 1: "chosen", 2: "rejected"}


def test_a_resumed_log_keeps_rows_up_to_the_checkpoint_and_drops_the_rest(tmp_path):
    path = tmp_path / "completions.jsonl"
    log = CompletionLog(path, Letters(), every=1, per_log=1)
    for step in (1, 2, 3):
        log.log(step, step, [item(step)])
    log.close()
    again = CompletionLog(path, Letters(), every=1, per_log=1, resume_step=2)
    again.log(3, 3, [item(30)])
    again.close()
    assert [json.loads(line)["prompt_id"] for line in path.read_text().splitlines()] == [1, 2, 30]
    assert again.before_after()["first"][0]["step"] == 1  # the run's first logged step, from before the resume


def test_every_name_lands_in_a_group_and_grouping_twice_changes_nothing():
    for old, new in RENAMED.items():
        assert new.split("/")[0] in GROUPS, new
        assert grouped(new) == new and grouped(old) == new
    assert grouped("judge/judge0/tasks") == "perf/judge/judge0/tasks"
    assert grouped("staleness/lag_3") == "train/staleness/lag_3"
    assert grouped("reward/mean") == "reward/mean" and grouped("train/loss") == "train/loss"  # already grouped
    assert len(set(RENAMED.values())) == len(RENAMED)  # no two metrics share a name
    # the look-alikes are apart: the judge's scores under reward/, DPO's implicit reward under objective/
    assert grouped("rewards/chosen").startswith("objective/") and grouped("reward/chosen") == "reward/chosen"
    assert grouped_row({"step": 1, "loss": 0.5}) == {"step": 1, "train/loss": 0.5}
