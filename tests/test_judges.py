"""Judge kinds and pair selection."""

from __future__ import annotations

import json

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


def _bos_reward_model(model_dir, max_positions: int):
    """A tiny reward model whose tokenizer adds a BOS of its own and whose chat template writes one too
    (as Llama 3's, Gemma's and SmolLM2's do): tokenizing the rendered template with the special tokens
    added would give two."""
    import torch
    from tokenizers import processors
    from transformers import AutoModelForSequenceClassification, Qwen2Config

    from tiller.models import JUDGE_ALPHABET, TINY_CHAT_TEMPLATE, build_char_tokenizer

    tok = build_char_tokenizer(JUDGE_ALPHABET)
    tok.add_special_tokens({"bos_token": "<bos>"})
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.bos_token_id)])
    tok.chat_template = "{{ bos_token }}" + TINY_CHAT_TEMPLATE
    assert tok("ab")["input_ids"][0] == tok.bos_token_id  # the tokenizer itself adds one
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=128, max_position_embeddings=max_positions,
                         pad_token_id=tok.pad_token_id, num_labels=1)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    config_path = model_dir / "tokenizer_config.json"  # load_tokenizer: a char tokenizer, not the Qwen2 class
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "tiller_char_tokenizer": True}))
    return model_dir


def test_a_reward_model_template_with_a_bos_gives_one_bos_and_long_inputs_keep_the_response_end(
        tmp_path, tiny_policy_dir, caplog):
    import logging

    import torch
    from transformers import AutoModelForSequenceClassification

    rm_dir = _bos_reward_model(tmp_path / "rm", max_positions=64)
    policy = load_tokenizer(tiny_policy_dir)
    enc = lambda s: np.asarray(policy(s, add_special_tokens=False)["input_ids"], np.int32)  # noqa: E731
    judge = RewardModelJudge(rm_dir, policy)
    rm_tok = judge.tokenizer
    bos = rm_tok.bos_token_id

    text = rm_tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "abc"}],
                                      tokenize=False)
    expected = rm_tok(text, add_special_tokens=False)["input_ids"]  # <bos>user: hi\nassistant: abc\n
    assert expected.count(bos) == 1 and expected[0] == bos
    rm = AutoModelForSequenceClassification.from_pretrained(str(rm_dir)).eval()
    with torch.no_grad():
        one_bos = rm(input_ids=torch.tensor([expected])).logits[0, 0].item()
    np.testing.assert_allclose(judge.score([enc("hi")], [enc("abc")]), [one_bos], atol=1e-5)  # two BOS: 0.104 vs 0.115
    assert judge.token_ids([enc("hi")], [enc("abc")]) == [expected]
    assert judge.max_length == 64  # from the config: the tokenizer's model_max_length is unset (1e30)

    # <bos> + "user: " 6 + 100 + "\n" 1 + "assistant: " 11 + "the answer" 10 + "\n" 1 = 130 tokens: cut to 64
    # (and "ok": 122), the prompt's start goes
    long_prompt, answer = enc("x" * 100), enc("the answer")
    with caplog.at_level(logging.WARNING, logger="tiller.actors.judges"):
        long, fits = judge.token_ids([long_prompt], [answer, enc("ok")])
    full = rm_tok(rm_tok.apply_chat_template([{"role": "user", "content": "x" * 100},
                                              {"role": "assistant", "content": "the answer"}], tokenize=False),
                  add_special_tokens=False)["input_ids"]
    assert len(full) > 64 and len(long) == 64
    assert long == [bos] + full[len(full) - 63:]  # the BOS, then the last 63: the whole response survives
    assert rm_tok.decode(long[1:]) == "x" * 40 + "\nassistant: the answer\n"
    assert len(fits) == 64 and judge.stats() == {"truncated": 2}
    assert "cut to its context of 64" in caplog.text
    scores = judge.score([long_prompt], [answer, enc("ok")])
    assert np.isfinite(scores).all() and judge.stats() == {"truncated": 4}


def test_context_length_is_the_smaller_real_bound():
    from types import SimpleNamespace as NS

    from tiller.actors.judges import context_length

    assert context_length(NS(max_position_embeddings=64), NS(model_max_length=int(1e30))) == 64
    assert context_length(NS(max_position_embeddings=4096), NS(model_max_length=512)) == 512
    assert context_length(NS(), NS(model_max_length=int(1e30))) is None


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
