"""Constitutional-AI judge: constitution files, critique -> revision rounds, pairs with the revision
as chosen; the guarded engine calls (timeouts, retries with back-off) every LLM judge uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tiller.actors.cai_judge import ConstitutionalJudge
from tiller.actors.constitution import DEFAULT_PRINCIPLES, load_constitution, pick_principles
from tiller.actors.guarded import GuardedEngine, RetryPolicy
from tiller.config import ConfigError, JudgeConfig, load_config
from tiller.models import load_tokenizer


# ----------------------------------------------------------------------------- constitution files

def test_the_shipped_constitution_file_is_the_default():
    assert load_constitution(Path(__file__).parents[1] / "configs/constitutions/default.yaml") == DEFAULT_PRINCIPLES
    assert load_constitution(None) == DEFAULT_PRINCIPLES and len(DEFAULT_PRINCIPLES) == 4


def test_constitution_from_yaml_strings_and_mappings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("principles:\n  - Do not swear.\n  - name: brief\n    critique: Is it long?\n"
                    "    revision: Make it short.\n")
    swear, brief = load_constitution(path)
    assert "Do not swear." in swear.critique and "Do not swear." in swear.revision
    assert (brief.name, brief.critique, brief.revision) == ("brief", "Is it long?", "Make it short.")


def test_constitution_from_text_one_principle_per_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# my rules\nBe kind.\n\nBe right.\n")
    assert [p.name for p in load_constitution(path)] == ["principle-2", "principle-4"]


@pytest.mark.parametrize("text,where,what", [
    ("- ok\n- name: x\n  critique: c\n", ":2", "needs a non-empty `revision`"),
    ("- critique: c\n  revision: r\n  weight: 2\n", ":1", "unknown key"),
    ("- 3\n", ":1", "a principle is a text"),
    ("rules: []\n", "c.yaml", "needs a `principles:` list"),
    ("[]\n", "c.yaml", "no principles"),
])
def test_bad_constitution_names_file_and_line(tmp_path, text, where, what):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_constitution(path)
    assert where in str(err.value) and what in str(err.value)


def test_principles_are_drawn_alike_for_the_same_sample():
    first = pick_principles(DEFAULT_PRINCIPLES, 2, "p", "r")
    assert first == pick_principles(DEFAULT_PRINCIPLES, 2, "p", "r") and first[0] != first[1]
    draws = {pick_principles(DEFAULT_PRINCIPLES, 1, "p", f"r{i}")[0].name for i in range(40)}
    assert draws == {p.name for p in DEFAULT_PRINCIPLES}  # every principle gets used
    assert len(pick_principles(DEFAULT_PRINCIPLES, 9, "p", "r")) == 4


def test_cai_with_a_scores_algorithm_is_a_config_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learner:\n  algorithm: grpo\njudge:\n  kind: cai\n")
    with pytest.raises(ConfigError, match=r"run.yaml:4: judge.kind: cai .* grpo needs on-policy scores"):
        load_config(path)


# ----------------------------------------------------------------------------- guarded engine calls

class FlakyEngine:
    """Answers [len(prompt)]; `script` says per call what goes wrong: "raise", or a set of
    request positions that time out (None)."""

    def __init__(self, script):
        self.script, self.calls = list(script), []

    def complete(self, prompts, max_new_tokens, temperature=0.0, seeds=None, allowed_token_ids=None, timeout_s=None):
        self.calls.append([len(p) for p in prompts])
        trouble = self.script.pop(0) if self.script else set()
        if trouble == "raise":
            raise RuntimeError("engine hiccup")
        return [None if i in trouble else [len(p)] for i, p in enumerate(prompts)]


def prompts(*lengths):
    return [np.zeros(n, np.int32) for n in lengths]


def test_timed_out_requests_are_retried_alone_after_a_growing_back_off():
    engine, slept = FlakyEngine([{1}, {0}, set()]), []
    guard = GuardedEngine(engine, RetryPolicy(timeout_s=1.0, retries=2, backoff_s=1.0), sleep=slept.append)
    assert guard.complete(prompts(3, 4, 5), 8) == [[3], [4], [5]]
    assert engine.calls == [[3, 4, 5], [4], [4]]  # only what timed out goes again
    assert guard.stats.retries == 2 and guard.stats.timeouts == 0
    assert 0.5 <= slept[0] <= 1.0 and 1.0 <= slept[1] <= 2.0  # doubling, with jitter


def test_requests_out_of_tries_come_back_empty_and_are_counted():
    engine = FlakyEngine([{0}, {0}])
    guard = GuardedEngine(engine, RetryPolicy(timeout_s=1.0, retries=1, backoff_s=0.0), sleep=lambda s: None)
    assert guard.complete(prompts(3, 4), 8) == [None, [4]]
    assert guard.stats.timeouts == 1 and guard.stats.requests == 2


def test_engine_errors_are_retried_then_raised():
    guard = GuardedEngine(FlakyEngine(["raise", set()]), RetryPolicy(retries=1, backoff_s=0.0), sleep=lambda s: None)
    assert guard.complete(prompts(2), 8) == [[2]] and guard.stats.errors == 1
    guard = GuardedEngine(FlakyEngine(["raise"] * 3), RetryPolicy(retries=2, backoff_s=0.0), sleep=lambda s: None)
    with pytest.raises(RuntimeError, match="hiccup"):
        guard.complete(prompts(2), 8)
    assert guard.stats.errors == 3


def test_prompts_that_leave_no_room_for_an_answer_are_not_sent():
    engine = FlakyEngine([])
    guard = GuardedEngine(engine, RetryPolicy(), max_model_len=10)
    assert guard.complete(prompts(2, 3), 8) == [[2], None]
    assert engine.calls == [[2]] and guard.stats.too_long == 1


# ----------------------------------------------------------------------------- the CAI judge

class ScriptedReviser:
    """Stands in for vLLM: its critique names the letter z, its revision drops every z. Samples
    without a z come back unchanged, so they give no pair."""

    def __init__(self, tokenizer):
        self.tokenizer, self.batches = tokenizer, []

    def complete(self, prompts, max_new_tokens, temperature=0.0, seeds=None, allowed_token_ids=None, timeout_s=None):
        self.batches.append(len(prompts))
        out = []
        for ids in prompts:
            text = self.tokenizer.decode([int(t) for t in ids])
            response = text.split("Response: ")[1].split("\n")[0]
            if text.endswith("Critique:"):
                answer = " it says z" if "z" in response else " nothing to fix"
            else:
                answer = " " + response.replace("z", "")
            out.append(self.tokenizer(answer, add_special_tokens=False)["input_ids"][:max_new_tokens])
        return out


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    from tiller.models import JUDGE_ALPHABET, TinyShape, ensure_tiny_policy

    return ensure_tiny_policy(tmp_path_factory.mktemp("models") / "judge", seed=2, alphabet=JUDGE_ALPHABET,
                              shape=TinyShape(max_positions=1024))


def test_a_cai_round_prefers_each_revision_that_changed_its_sample(tiny_policy_dir, tiny_judge_dir, tmp_path):
    tok = load_tokenizer(tiny_policy_dir)
    enc = lambda s: np.asarray(tok(s, add_special_tokens=False)["input_ids"], np.int32)  # noqa: E731
    engine = ScriptedReviser(load_tokenizer(tiny_judge_dir))
    cfg = JudgeConfig(kind="cai", model_path=str(tiny_judge_dir), keep_transcripts=True)
    judge = ConstitutionalJudge(cfg, tok, engine=engine, transcript_path=tmp_path / "judges" / "j.jsonl")
    prompts = [enc("say hi"), enc("say bye")]
    responses = [enc("hiz"), enc("hi"), enc("bye"), enc("zzbye")]
    judgement = judge.judge(prompts, responses, k=2, max_new_tokens=16)
    assert engine.batches == [4, 4]  # one critique batch, one revision batch
    assert list(zip(judgement.pair_prompts, judgement.chosen, judgement.rejected)) == [(0, 2, 0), (1, 3, 1)]
    eos = tok.eos_token_id
    assert judgement.revisions[0].tolist() == enc("hi").tolist() + [eos]  # ends like a finished sample
    assert judgement.revisions[3].tolist() == enc("bye").tolist() + [eos]
    assert judgement.revisions[1] is None and judgement.revisions[2] is None  # unchanged: no candidate
    assert judgement.scores[1] == 1.0 and judgement.scores[0] < 1.0  # how much of the sample survived
    stats = judge.stats()
    assert (stats["revisions"], stats["revisions_differ"], stats["unrevised"]) == (4, 2, 0)
    rows = [json.loads(line) for line in (tmp_path / "judges" / "j.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["critiques"] == ["it says z"] and rows[0]["revision"] == "hi"
    judge.judge(prompts, responses, k=2, max_new_tokens=16)  # redelivered work
    assert engine.batches == [4, 4] and judge.stats()["cache_hits"] == 4


def test_cai_revisions_respect_the_response_bound_and_chain_principles(tiny_policy_dir, tiny_judge_dir):
    tok = load_tokenizer(tiny_policy_dir)
    enc = lambda s: np.asarray(tok(s, add_special_tokens=False)["input_ids"], np.int32)  # noqa: E731
    engine = ScriptedReviser(load_tokenizer(tiny_judge_dir))
    judge = ConstitutionalJudge(JudgeConfig(kind="cai", model_path=str(tiny_judge_dir), principles_per_sample=2),
                                tok, engine=engine)
    judgement = judge.judge([enc("p")], [enc("abcdefgzzz"), enc("ab")], k=2, max_new_tokens=4)
    assert engine.batches == [2, 2, 2, 2]  # two principles: critique, revision, critique, revision
    assert judgement.revisions[0].tolist() == enc("abc").tolist()  # " abc": cut at 4 judge tokens, so no EOS
    assert judgement.num_pairs == 1


def test_a_timed_out_revision_gives_no_pair_and_a_neutral_score(tiny_policy_dir, tiny_judge_dir):
    tok = load_tokenizer(tiny_policy_dir)
    enc = lambda s: np.asarray(tok(s, add_special_tokens=False)["input_ids"], np.int32)  # noqa: E731

    class SlowOnFirst(ScriptedReviser):
        def complete(self, prompts, max_new_tokens, temperature=0.0, seeds=None, allowed_token_ids=None, timeout_s=None):
            out = super().complete(prompts, max_new_tokens)
            return [None if "zz" in self.tokenizer.decode([int(t) for t in p]) else o for p, o in zip(prompts, out)]

    cfg = JudgeConfig(kind="cai", model_path=str(tiny_judge_dir), retries=1, retry_backoff_s=0.0)
    judge = ConstitutionalJudge(cfg, tok, engine=SlowOnFirst(load_tokenizer(tiny_judge_dir)))
    judgement = judge.judge([enc("p")], [enc("zz"), enc("az")], k=2, max_new_tokens=8)
    assert judgement.revisions[0] is None and judgement.scores[0] == 0.5
    assert list(zip(judgement.chosen, judgement.rejected)) == [(3, 1)]
    assert judge.stats()["unrevised"] == 1 and judge.stats()["timeouts"] == 1


@pytest.mark.slow
@pytest.mark.vllm_inprocess
def test_a_cai_round_on_a_real_vllm_engine_gives_pairs_the_learner_accepts(tiny_policy_dir, tmp_path):
    """The tiny random judge writes gibberish; what is tested is the real path: critiques and
    revisions from vLLM, revisions in the policy's vocabulary and length bound, the revision as
    chosen, and a `Scores` message the learner's coordinator accepts."""
    pytest.importorskip("vllm")
    from tiller.actors.judge import judge_task, to_scores
    from tiller.config import LearnerConfig, RolloutConfig
    from tiller.learner.coordinator import Coordinator
    from tiller.learner.prompts import PromptStream
    from tiller.protocol import Decoder, REGISTRY, encode
    from tiller.protocol.messages import LeaseRequest, Rollout

    tok = load_tokenizer(tiny_policy_dir)
    enc = lambda s: np.asarray(tok(s, add_special_tokens=False)["input_ids"], np.int32)  # noqa: E731
    k, max_new = 2, 12
    stream = PromptStream([enc("tell me a joke"), enc("how do i cook rice?")], ["", ""])
    coordinator = Coordinator(stream, LearnerConfig(lease_prompts=2), RolloutConfig(samples_per_prompt=k,
                              max_new_tokens=max_new), vocab_size=len(tok))
    lease = coordinator.on_lease_request(LeaseRequest("a", 1, 0))
    responses = [enc(r) for r in ("no.", "a cat sat", "boil it", "add water")]
    lengths = np.array([len(r) for r in responses], np.int32)
    assert coordinator.on_rollout(Rollout("a", 1, lease.lease_id, 0, 0, np.concatenate(responses), lengths,
                                          np.zeros(int(lengths.sum()), np.float32), np.zeros(4, bool), 0.1))
    task = coordinator.next_score_task("judge#1")
    # sampled: a tiny random model's greedy text is one character over and over, often none the policy knows
    judge = ConstitutionalJudge(JudgeConfig(kind="cai", model_path=str(tmp_path / "judge"), build_tiny=True,
                                            max_model_len=1024, critique_max_tokens=16, temperature=1.0), tok)
    judgement = judge_task(judge, task, 0.0)
    stats = judge.stats()
    assert stats["revisions"] + stats["unrevised"] == 4 and stats["timeouts"] == 0
    for j, revision in enumerate(judgement.revisions):
        if revision is not None:
            assert 0 < len(revision) <= max_new and revision.max() < len(tok)
            assert revision.tolist() != responses[j].tolist()
    assert judgement.num_pairs == stats["revisions_differ"] > 0, stats
    for p, c, r in zip(judgement.pair_prompts, judgement.chosen, judgement.rejected):
        assert c == k + r and judgement.revisions[p * k + r] is not None
    message = Decoder(REGISTRY).decode(encode(to_scores(judgement, "judge", 1, task.lease_id, 0.5, stats)))
    scored = coordinator.on_scores(message)
    assert scored is not None and sum(len(s.pairs) for s in scored) == judgement.num_pairs
    assert coordinator.counters.pairs_invalid == 0
