"""Judge kinds and pair selection."""

from __future__ import annotations

import numpy as np
import pytest

from tiller.actors.judge import judge_task
from tiller.actors.judges import RewardModelJudge, RuleJudge, build_judge, load_rule, pick_pairs
from tiller.config import ConfigError, JudgeConfig
from tiller.models import load_tokenizer
from tiller.protocol.messages import ScoreTask
from tiller.tasks import vowel_reward


def test_pick_pairs_best_and_worst_of_k():
    scores = np.array([0.1, 0.9, 0.5, 0.2,   0.3, 0.3, 0.3, 0.3,   1.0, 0.0, 1.0, 0.0], np.float32)
    chosen, rejected = pick_pairs(scores, k=4)
    assert chosen.tolist() == [1, -1, 0]
    assert rejected.tolist() == [0, -1, 1]


def test_pick_pairs_min_margin():
    chosen, _ = pick_pairs(np.array([0.5, 0.55, 0.0, 1.0], np.float32), k=2, min_margin=0.1)
    assert chosen.tolist() == [-1, 1]


def test_vowel_reward_reads_the_first_16_characters():
    assert vowel_reward("x", "") == 0.0
    assert vowel_reward("x", "aeiou") == 5 / 16
    assert vowel_reward("x", "a" * 40) == 1.0


def test_rule_judge_scores_decoded_text(tiny_policy_dir):
    tok = load_tokenizer(tiny_policy_dir)
    enc = lambda s: np.asarray(tok(s, add_special_tokens=False)["input_ids"], np.int32)  # noqa: E731
    judge = RuleJudge(vowel_reward, tok)
    scores = judge.score([enc("hello")], [enc("aaaa"), enc("bbbb"), np.append(enc("ae"), tok.eos_token_id)])
    assert scores.tolist() == [4 / 16, 0.0, 2 / 16]


def test_char_tokenizer_round_trips_text_with_spaces(tiny_policy_dir):
    tok = load_tokenizer(tiny_policy_dir)
    text = "hello world, how are you?"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text


def test_judge_task_returns_scores_and_pairs(tiny_policy_dir):
    tok = load_tokenizer(tiny_policy_dir)
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ("ab", "cd")]
    responses = [tok(r, add_special_tokens=False)["input_ids"] for r in ("aa", "bb", "zz", "ee")]
    task = ScoreTask(1, 2, np.concatenate(prompts).astype(np.int32), np.array([2, 2], np.int32),
                     np.concatenate(responses).astype(np.int32), np.array([2, 2, 2, 2], np.int32),
                     np.zeros(4, bool), 16, ["", ""])
    judge = build_judge(JudgeConfig(kind="rule", rule="tiller.tasks:vowel_reward"), tiny_policy_dir)
    judgement = judge_task(judge, task, 0.0)
    assert judgement.scores.tolist() == [2 / 16, 0, 0, 2 / 16]
    assert judgement.pair_prompts.tolist() == [0, 1]
    assert judgement.chosen.tolist() == [0, 1] and judgement.rejected.tolist() == [1, 0]
    assert judgement.revisions is None


def test_reward_model_judge_scores_with_the_classifier(tiny_policy_dir, tiny_reward_dir):
    import torch
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(tiny_policy_dir)
    judge = RewardModelJudge(tiny_reward_dir, tok, batch_size=2)
    prompt = np.asarray(tok("abc", add_special_tokens=False)["input_ids"], np.int32)
    responses = [np.asarray(tok(r, add_special_tokens=False)["input_ids"], np.int32) for r in ("aaa", "zzzzz", "q")]
    scores = judge.score([prompt], responses)
    rm = AutoModelForSequenceClassification.from_pretrained(str(tiny_reward_dir)).eval()
    with torch.no_grad():
        expected = [rm(**tok("abc" + r, return_tensors="pt")).logits[0, 0].item() for r in ("aaa", "zzzzz", "q")]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert len(set(np.round(scores, 6))) == 3


def test_bad_rule_specs_are_clear_errors():
    for spec in ("no_colon", "tiller.tasks:missing_function", "no_such_module_xyz:f"):
        with pytest.raises(ConfigError, match="judge.rule"):
            load_rule(spec)
    with pytest.raises(ConfigError, match="reward_model_path"):
        build_judge(JudgeConfig(kind="reward_model"), "unused")


def test_composed_judge_weights_scorers_and_gates(tiny_policy_dir, tmp_path):
    from tiller.config import load_config

    config = tmp_path / "composed.yaml"
    config.write_text(
        "judge:\n  kind: composed\n  scorers:\n"
        "    - {kind: rule, rule: 'tiller.tasks:vowel_reward', weight: 2.0}\n"
        "    - {kind: rule, rule: 'tiller.tasks:length_reward', weight: 0.5}\n"
        "  gate_rule: 'tiller.tasks:contains_z'\n  gate_mode: penalty\n  gate_penalty: -1.0\n")
    cfg = load_config(config)
    tok = load_tokenizer(tiny_policy_dir)
    enc = lambda s: np.asarray(tok(s, add_special_tokens=False)["input_ids"], np.int32)  # noqa: E731
    judge = build_judge(cfg.judge, tiny_policy_dir)
    scores = judge.score([enc("p")], [enc("aaaa"), enc("bbbbbbbb"), enc("az")])
    expected = [2 * 4 / 16 + 0.5 * 4 / 16, 0.5 * 8 / 16, 2 * 1 / 16 + 0.5 * 2 / 16 - 1.0]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert judge.gate_fired == 1
    zeroing = build_judge(load_config(config, ["judge.gate_mode=zero"]).judge, tiny_policy_dir)
    assert zeroing.score([enc("p")], [enc("az")]).tolist() == [0.0]


def test_composed_judge_config_errors():
    from tiller.config import load_config

    with pytest.raises(ConfigError, match="judge.scorers"):
        build_judge(load_config(None, ["judge.kind=composed"]).judge, "unused")
    with pytest.raises(ConfigError, match="judge.scorers\\[0\\].kind"):
        load_config(None, ["judge.kind=composed", "judge.scorers=[{kind: telepathy}]"])


def test_a_judge_gives_back_a_task_it_fails_on_and_stops_when_it_keeps_failing(tiny_policy_dir, tmp_path):
    from tiller.actors.judge import JudgeActor
    from tiller.config import Config, ModelConfig
    from tiller.protocol.messages import JudgeFailed, Scores

    cfg = Config(output_dir=str(tmp_path), model=ModelConfig(path=str(tiny_policy_dir)),
                 judge=JudgeConfig(kind="rule", max_failures_in_a_row=1))
    actor = JudgeActor(cfg, "tcp://127.0.0.1:9", judge_id="j")  # never sends: answer() is called directly
    task = ScoreTask(7, 2, np.array([3, 4], np.int32), np.array([2], np.int32), np.array([5, 6, 7], np.int32),
                     np.array([2, 1], np.int32), np.zeros(2, bool), 16, [""])
    working = actor.judge

    class Broken:
        def score(self, prompts, responses, conversations=None):
            raise RuntimeError("engine on fire")

    actor.judge = Broken()
    failed = actor.answer(task)
    assert isinstance(failed, JudgeFailed) and failed.lease_id == 7 and "engine on fire" in failed.reason
    actor.judge = working
    assert isinstance(actor.answer(task), Scores) and actor.failures_in_a_row == 0  # a success resets the count
    actor.judge = Broken()
    assert isinstance(actor.answer(task), JudgeFailed)
    with pytest.raises(RuntimeError, match="on fire"):  # the second failure in a row: this judge is broken
        actor.answer(task)
    actor.client.socket.close()
