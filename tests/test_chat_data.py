"""Chat-formatted data: conversations through the policy's chat template, files the `datasets` library
reads, and judges that read the conversation from its messages (a reward model through its own template)."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from tiller.actors.judge import judge_task
from tiller.actors.judges import RewardModelJudge, RuleJudge
from tiller.config import ConfigError, DataConfig, LearnerConfig, RolloutConfig
from tiller.learner.coordinator import Coordinator
from tiller.learner.prompts import load_prompts
from tiller.models import JUDGE_ALPHABET, TINY_CHAT_TEMPLATE, ensure_tiny_policy, ensure_tiny_reward_model, load_tokenizer
from tiller.protocol.messages import LeaseRequest, Rollout, ScoreTask

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hi"}]


@pytest.fixture(scope="module")
def chat_policy(tmp_path_factory):
    return ensure_tiny_policy(tmp_path_factory.mktemp("models") / "chat-policy", alphabet=JUDGE_ALPHABET,
                              chat_template=TINY_CHAT_TEMPLATE)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_conversations_go_through_the_chat_template_and_strings_stay_as_they_are(tmp_path, chat_policy):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": CHAT}, {"prompt": "plain text"}])
    tokenizer = load_tokenizer(chat_policy)
    stream = load_prompts(DataConfig(source="jsonl", path=str(data)), tokenizer, 200)
    assert stream.texts[0] == "system: be brief\nuser: say hi\nassistant: "  # the generation prompt is open
    assert stream.get(0).tolist() == tokenizer(stream.texts[0], add_special_tokens=False)["input_ids"]
    assert stream.conversation(0) == CHAT and stream.conversation(1) is None
    assert stream.texts[1] == "plain text"


def test_templating_off_joins_the_messages_for_base_models(tmp_path, chat_policy):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": CHAT}])
    stream = load_prompts(DataConfig(source="jsonl", path=str(data), chat_template=False),
                          load_tokenizer(chat_policy), 200)
    assert stream.texts == ["be brief\n\nsay hi"]


@pytest.mark.parametrize("row,message", [
    ({"prompt": [{"role": "user"}]}, r"chat.jsonl:2: prompt\[0\] must be \{\"role\": str, \"content\": str\}"),
    ({"prompt": []}, r"chat.jsonl:2: 'prompt' must be a string or a non-empty list"),
    ({"prompt": 7}, r"chat.jsonl:2: 'prompt' must be a string or a non-empty list .* got int"),
])
def test_a_malformed_conversation_names_file_line_and_message(tmp_path, chat_policy, row, message):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": CHAT}, row])
    with pytest.raises(ConfigError, match=message):
        load_prompts(DataConfig(source="jsonl", path=str(data)), load_tokenizer(chat_policy), 200)


def test_a_conversation_for_a_model_without_a_chat_template_is_refused(tmp_path, tiny_policy_dir):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ConfigError, match=r"chat.jsonl:1: a conversation, but the policy's tokenizer has no chat "
                                          r"template .*data.chat_template: false"):
        load_prompts(DataConfig(source="jsonl", path=str(data)), load_tokenizer(tiny_policy_dir), 200)


def test_parquet_json_and_save_to_disk_folders_load_through_datasets(tmp_path, chat_policy):
    datasets = pytest.importorskip("datasets")
    rows = {"question": [CHAT, [{"role": "user", "content": "and you?"}]]}
    table = datasets.Dataset.from_dict(rows)
    table.to_parquet(str(tmp_path / "p.parquet"))
    table.to_json(str(tmp_path / "p.json"))
    datasets.DatasetDict({"train": table, "test": table.select([1])}).save_to_disk(str(tmp_path / "folder"))
    tokenizer = load_tokenizer(chat_policy)
    loaded = [load_prompts(DataConfig(source="dataset", path=str(tmp_path / name), prompt_field="question"),
                           tokenizer, 200) for name in ("p.parquet", "p.json", "folder")]
    assert all(s.conversations == rows["question"] for s in loaded)
    test_split = load_prompts(DataConfig(source="dataset", path=str(tmp_path / "folder"), prompt_field="question",
                                         split="test"), tokenizer, 200)
    assert test_split.conversations == rows["question"][1:]
    with pytest.raises(ConfigError, match=r"data.split: .* has splits \['test', 'train'\], not 'valid'"):
        load_prompts(DataConfig(source="dataset", path=str(tmp_path / "folder"), prompt_field="question",
                                split="valid"), tokenizer, 200)
    with pytest.raises(ConfigError, match=r"p.parquet: no column 'prompt' \(columns: \['question'\]"):
        load_prompts(DataConfig(source="dataset", path=str(tmp_path / "p.parquet")), tokenizer, 200)


def score_task_for(stream, k=2) -> ScoreTask:
    """A scoring task for every prompt of `stream`, as the coordinator hands it to a judge."""
    c = Coordinator(stream, LearnerConfig(lease_prompts=len(stream), max_inflight_prompts=len(stream)),
                    RolloutConfig(samples_per_prompt=k, max_new_tokens=3))
    lease = c.on_lease_request(LeaseRequest("a", 1, 0))
    n = len(lease.prompt_ids) * k
    tokens = np.full(n * 2, 5, np.int32)  # every response: two copies of token 5
    c.on_rollout(Rollout("a", 1, lease.lease_id, 1, 0, tokens, np.full(n, 2, np.int32), np.zeros(n * 2, np.float32),
                         np.zeros(n, bool), 0.1))
    return c.next_score_task("j")


def test_judges_read_the_conversation_from_its_messages(tmp_path, chat_policy):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": CHAT}, {"prompt": "plain"}])
    tokenizer = load_tokenizer(chat_policy)
    task = score_task_for(load_prompts(DataConfig(source="jsonl", path=str(data)), tokenizer, 200))
    assert [json.loads(c) if c else None for c in task.conversations] == [CHAT, None]
    seen = []
    judge_task(RuleJudge(lambda prompt, response: seen.append(prompt) or 1.0, tokenizer), task, 0.0)
    assert seen[0] == "system: be brief\nuser: say hi" and seen[2] == "plain"


def test_a_malformed_conversation_on_the_wire_falls_back_to_the_tokens(tmp_path, chat_policy, caplog):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": CHAT}])
    tokenizer = load_tokenizer(chat_policy)
    task = score_task_for(load_prompts(DataConfig(source="jsonl", path=str(data)), tokenizer, 200))
    task = dataclasses.replace(task, conversations=['[{"role": 1}]'])
    seen = []
    with caplog.at_level(logging.WARNING):
        judge_task(RuleJudge(lambda prompt, response: seen.append(prompt) or 1.0, tokenizer), task, 0.0)
    assert seen[0] == "system: be brief\nuser: say hi\nassistant: " and "reading its tokens instead" in caplog.text


def test_a_reward_model_scores_through_its_own_chat_template(tmp_path, chat_policy):
    rm_dir = ensure_tiny_reward_model(tmp_path / "rm", chat_template="{% for m in messages %}[{{ m['role'] }}] "
                                                                     "{{ m['content'] }}\n{% endfor %}")
    tokenizer = load_tokenizer(chat_policy)
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": CHAT}, {"prompt": "plain"}])
    task = score_task_for(load_prompts(DataConfig(source="jsonl", path=str(data)), tokenizer, 200))
    judge = RewardModelJudge(rm_dir, tokenizer)
    prompts = [task.prompt_tokens[:task.prompt_lengths[0]], task.prompt_tokens[task.prompt_lengths[0]:]]
    responses = [np.array([5, 5], np.int32)] * 4
    answer = tokenizer.decode([5, 5])
    texts = judge.texts(prompts, responses, [CHAT, None])
    assert texts[0] == f"[system] be brief\n[user] say hi\n[assistant] {answer}\n"
    assert texts[2] == f"[user] plain\n[assistant] {answer}\n"  # a plain prompt is one user message
    scores = judge_task(judge, task, 0.0).scores
    assert scores.shape == (4,) and np.isfinite(scores).all()
