"""Pairwise verdicts: parsing real-looking judge outputs, position-swap debiasing, scores from verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from tiller.actors.pairwise import comparisons, debiased, parse_verdict, tournament_scores, wins_to_scores


@pytest.mark.parametrize("text,verdict", [
    ("A", "A"),
    ("B", "B"),
    ("Response B", "B"),
    ("**A**", "A"),
    ("Answer: B", "B"),
    ("(A)", "A"),
    ("I prefer Response A. It is more accurate than B.", None),  # both letters on the deciding line
    ("I prefer Response A.\nResponse B misses the point.", "A"),  # only the first line decides
    ("Neither", "tie"),
    ("It's a tie.", "tie"),
    ("Both are equally helpful.", "tie"),
    ("", None),
    ("   \n  ", None),
    ("Both A and B are wrong in different ways", None),
    ("The first one is better", None),
    ("Verdict: [[B]]", "B"),
    ("a response is better", None),  # a lowercase article is not a verdict
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_position_swap_keeps_only_consistent_preferences():
    assert debiased("A", "B") == "A"  # x wins in both orders
    assert debiased("B", "A") == "B"
    assert debiased("A", "A") == "tie"  # always the first position: position bias, no preference
    assert debiased("tie", "tie") == "tie"
    assert debiased("A", None) is None


def test_position_bias_of_a_deterministic_judge_is_cancelled():
    """A judge that always prefers the first position yields no preferences at all after the swap;
    a judge that prefers the longer response keeps its preference in both orders."""
    responses = ["aaaa", "bb", "ccc"]
    first_always = lambda x, y: "A"  # noqa: E731
    longer = lambda x, y: "A" if len(x) > len(y) else "B"  # noqa: E731
    for judge, expected in ((first_always, [0.5, 0.5, 0.5]), (longer, [1.0, 0.0, 0.5])):
        results = [(i, j, debiased(judge(responses[i], responses[j]), judge(responses[j], responses[i])))
                   for i, j in comparisons(3, "all_pairs")]
        assert wins_to_scores(3, results).tolist() == expected


def test_comparisons_and_tournament():
    assert comparisons(4, "all_pairs") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert comparisons(4, "tournament") == [(0, 1), (2, 3)]
    strength = [0.1, 0.9, 0.5, 0.3]
    seen = []

    def judge(matches):
        seen.append(matches)
        return ["A" if strength[i] > strength[j] else "B" for i, j in matches]

    scores = tournament_scores(4, judge)
    assert seen == [[(0, 1), (2, 3)], [(1, 2)]]  # one batch per round
    assert scores.tolist() == [0.0, 1.0, 0.5, 0.0]
    assert np.argmax(scores) == 1


def test_unreadable_verdicts_score_nothing():
    assert wins_to_scores(2, [(0, 1, None)]).tolist() == [0.5, 0.5]


class ScriptedEngine:
    """Stands in for vLLM in the batching and caching tests: answers by a rule on the decoded
    question, so the judge's own logic is what is tested (the real engine is tested below)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.batches = tokenizer, []

    def complete(self, prompts, max_new_tokens, temperature=0.0, seeds=None, allowed_token_ids=None, timeout_s=None):
        self.batches.append(len(prompts))
        answers = []
        for ids in prompts:
            text = self.tokenizer.decode([int(t) for t in ids])
            a = text.split("Response A: ")[1].split("\n")[0]
            b = text.split("Response B: ")[1].split("\n")[0]
            answers.append(self.tokenizer(" A" if a.count("e") > b.count("e") else " B")["input_ids"])
        return answers


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    from tiller.models import JUDGE_ALPHABET, TinyShape, ensure_tiny_policy

    return ensure_tiny_policy(tmp_path_factory.mktemp("models") / "judge", seed=2, alphabet=JUDGE_ALPHABET,
                              shape=TinyShape(max_positions=1024))


def test_llm_judge_batches_debiases_and_caches(tiny_policy_dir, tiny_judge_dir):
    from tiller.actors.llm_judge import LLMPairwiseJudge
    from tiller.config import JudgeConfig
    from tiller.models import load_tokenizer

    tok = load_tokenizer(tiny_policy_dir)
    engine = ScriptedEngine(load_tokenizer(tiny_judge_dir))
    judge = LLMPairwiseJudge(JudgeConfig(kind="llm_pairwise", model_path=str(tiny_judge_dir)), tok, engine=engine)
    enc = lambda s: np.asarray(tok(s, add_special_tokens=False)["input_ids"], np.int32)  # noqa: E731
    prompts = [enc("say e")]
    responses = [enc("eee"), enc("x"), enc("ee")]
    scores = judge.score(prompts, responses)
    assert engine.batches == [6]  # 3 pairs x 2 orders, one vLLM call
    assert scores.tolist() == [1.0, 0.0, 0.5]
    judge.score(prompts, responses)  # redelivered work
    assert engine.batches == [6] and judge.stats()["cache_hits"] == 6
    assert judge.stats()["preferences"] == 6 and judge.stats()["inconsistent"] == 0


@pytest.mark.slow
@pytest.mark.vllm_inprocess
def test_llm_judge_on_a_real_vllm_engine(tiny_policy_dir, tiny_judge_dir):
    """A tiny random judge model says nothing sensible; what is tested is the real path: one vLLM
    batch, every verdict accounted for (readable or counted unparseable), scores well-formed."""
    pytest.importorskip("vllm")
    from tiller.actors.judge import judge_task
    from tiller.actors.llm_judge import LLMPairwiseJudge
    from tiller.config import JudgeConfig
    from tiller.models import load_tokenizer
    from tiller.protocol.messages import ScoreTask

    tok = load_tokenizer(tiny_policy_dir)
    judge = LLMPairwiseJudge(JudgeConfig(kind="llm_pairwise", model_path=str(tiny_judge_dir), max_model_len=512),
                             tok)
    enc = lambda s: np.asarray(tok(s, add_special_tokens=False)["input_ids"], np.int32)  # noqa: E731
    responses = [enc(r) for r in ("hello", "hi", "hey there", "yo")]
    task = ScoreTask(1, 2, np.concatenate([enc("greet"), enc("wave")]), np.array([5, 4], np.int32),
                     np.concatenate(responses), np.array([len(r) for r in responses], np.int32), np.zeros(4, bool), 16,
                     ["", ""])
    judgement = judge_task(judge, task, 0.0)
    assert judgement.scores.shape == (4,) and np.all((judgement.scores >= 0) & (judgement.scores <= 1))
    assert judge.stats()["comparisons"] == 4  # 2 prompts x 1 pair x 2 orders
    assert judge.stats()["preferences"] + judge.stats()["unparseable"] + judge.stats()["ties"] == 2  # each pair once
    assert judgement.num_pairs <= 2 and set(judgement.pair_prompts.tolist()) <= {0, 1}
    assert all({c, r} == {0, 1} for c, r in zip(judgement.chosen, judgement.rejected))


@pytest.mark.slow
@pytest.mark.vllm_inprocess
def test_letter_verdicts_always_name_a_letter(tiny_policy_dir, tiny_judge_dir):
    """verdict: letter restricts the judge's next token to A or B: nothing is ever unparseable."""
    pytest.importorskip("vllm")
    from tiller.actors.llm_judge import LLMPairwiseJudge
    from tiller.config import JudgeConfig
    from tiller.models import load_tokenizer

    tok = load_tokenizer(tiny_policy_dir)
    judge = LLMPairwiseJudge(JudgeConfig(kind="llm_pairwise", model_path=str(tiny_judge_dir), max_model_len=512,
                                         verdict="letter"), tok)
    enc = lambda s: np.asarray(tok(s, add_special_tokens=False)["input_ids"], np.int32)  # noqa: E731
    judge.score([enc("greet"), enc("wave")], [enc(r) for r in ("hello", "hi", "hey there", "yo", "aaa", "b")])
    assert judge.stats()["unparseable"] == 0 and judge.stats()["comparisons"] == 12  # 2 prompts x 3 pairs x 2 orders
    assert judge.stats()["preferences"] + judge.stats()["ties"] == 6


def test_without_swapping_a_position_biased_judge_decides_every_pair(tiny_policy_dir, tiny_judge_dir):
    from tiller.actors.llm_judge import LLMPairwiseJudge
    from tiller.config import JudgeConfig
    from tiller.models import load_tokenizer

    class FirstPosition(ScriptedEngine):
        def complete(self, prompts, max_new_tokens, temperature=0.0, seeds=None, allowed_token_ids=None, timeout_s=None):
            self.batches.append(len(prompts))
            return [self.tokenizer("A")["input_ids"] for _ in prompts]

    tok = load_tokenizer(tiny_policy_dir)
    responses = [np.asarray(tok(r, add_special_tokens=False)["input_ids"], np.int32) for r in ("x", "y", "z")]
    prompt = [np.asarray(tok("p", add_special_tokens=False)["input_ids"], np.int32)]
    for swap, expected, batch in ((True, [0.5, 0.5, 0.5], 6), (False, [1.0, 0.5, 0.0], 3)):
        engine = FirstPosition(load_tokenizer(tiny_judge_dir))
        judge = LLMPairwiseJudge(JudgeConfig(kind="llm_pairwise", model_path=str(tiny_judge_dir),
                                             swap_positions=swap), tok, engine=engine)
        assert judge.score(prompt, responses).tolist() == expected and engine.batches == [batch]
