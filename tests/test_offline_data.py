"""Offline data formats: which tokens are trained, token by token, for each SFT format (multi-turn included),
preference rows in both forms, mixing by weight, and malformed rows refused with file, line and field."""

from __future__ import annotations

import json

import pytest

from tiller.config import ConfigError
from tiller.models import JUDGE_ALPHABET, build_char_tokenizer
from tiller.offline.data import Source, read_preferences, read_sft

# a chat template that ends each turn with <eos>, as real ones end it with their end-of-turn token
TEMPLATE = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}<eos>{% endfor %}"
            "{% if add_generation_prompt %}a:{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_char_tokenizer(JUDGE_ALPHABET + "#")
    tok.chat_template = TEMPLATE
    return tok


def write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def marked(tokenizer, example) -> str:
    """The example's text with every trained token in [brackets]: the mask, readable token by token."""
    out = []
    for token_id, trained in zip(example.input_ids, example.trained):
        piece = tokenizer.convert_ids_to_tokens(token_id)
        out.append(f"[{piece}]" if trained else piece)
    return "".join(out)


def test_prompt_completion_strings_train_the_completion_and_eos(tokenizer, tmp_path):
    path = write(tmp_path, [{"prompt": "hi ", "completion": "yo"}])
    (example,) = read_sft([Source(path)], tokenizer)
    assert marked(tokenizer, example) == "hi [y][o][<eos>]"


def test_instruction_rows_use_the_classic_template(tokenizer, tmp_path):
    path = write(tmp_path, [{"instruction": "add", "input": "1 2", "output": "3"},
                            {"instruction": "say a", "input": "", "output": "a"}])
    with_input, without = read_sft([Source(path)], tokenizer)
    assert marked(tokenizer, with_input) == "### Instruction:\nadd\n\n### Input:\n1 2\n\n### Response:\n[3][<eos>]"
    assert marked(tokenizer, without) == "### Instruction:\nsay a\n\n### Response:\n[a][<eos>]"


def test_messages_train_every_assistant_turn_and_nothing_else(tokenizer, tmp_path):
    conversation = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                    {"role": "assistant", "content": "ciao"}]
    (example,) = read_sft([Source(write(tmp_path, [{"messages": conversation}]))], tokenizer)
    assert marked(tokenizer, example) == (
        "s:be kind<eos>u:hi<eos>a:[h][e][l][l][o][<eos>]u:bye<eos>a:[c][i][a][o][<eos>]")


def test_conversational_prompt_completion_trains_only_the_completion(tokenizer, tmp_path):
    row = {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "earlier"},
                      {"role": "user", "content": "again"}],
           "completion": [{"role": "assistant", "content": "ok"}]}
    (example,) = read_sft([Source(write(tmp_path, [row]))], tokenizer)
    assert marked(tokenizer, example) == "u:q<eos>a:earlier<eos>u:again<eos>a:[o][k][<eos>]"


def test_preferences_share_one_prompt_in_both_forms(tokenizer, tmp_path):
    path = write(tmp_path, [
        {"prompt": "how? ", "chosen": "no", "rejected": "sure"},
        {"prompt": [{"role": "user", "content": "how?"}], "chosen": [{"role": "assistant", "content": "no"}],
         "rejected": [{"role": "assistant", "content": "sure"}]}])
    plain, chat = read_preferences([Source(path)], tokenizer)
    text = lambda ids: "".join(tokenizer.convert_ids_to_tokens(ids))  # noqa: E731
    assert (text(plain.prompt_ids), text(plain.chosen_ids), text(plain.rejected_ids)) == ("how? ", "no<eos>",
                                                                                           "sure<eos>")
    assert (text(chat.prompt_ids), text(chat.chosen_ids), text(chat.rejected_ids)) == ("u:how?<eos>a:", "no<eos>",
                                                                                       "sure<eos>")


def test_sources_mix_by_weight(tokenizer, tmp_path):
    refusals = write(tmp_path, [{"prompt": f"bad {c} ", "completion": "no"} for c in "abcd"], "refusals.jsonl")
    helpful = write(tmp_path, [{"prompt": f"ok {c} ", "completion": "yes"} for c in "abcd"], "helpful.jsonl")
    examples = read_sft([Source(refusals, weight=2.0), Source(helpful, weight=0.5)], tokenizer)
    wheres = [e.where for e in examples]
    assert sum("refusals" in w for w in wheres) == 8 and sum("helpful" in w for w in wheres) == 2
    assert examples == read_sft([Source(refusals, weight=2.0), Source(helpful, weight=0.5)], tokenizer)  # seeded


@pytest.mark.parametrize("rows, message", [
    (['{"prompt": "a", "completion": "b"}', "{not json"], r"data.jsonl:2: not valid JSON"),
    ([{"prompt": "a", "completion": "b"}, {"messages": [{"role": "user", "content": "x"}]}],
     r"data.jsonl:2: a messages row in a file of prompt_completion rows"),
    ([{"prompt": "a", "completion": 3}], r"data.jsonl:1: 'completion' must be a non-empty string, got int"),
    ([{"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}],
     r"data.jsonl:1: messages\[1\] must be \{\"role\": str, \"content\": str\}"),
    ([{"messages": [{"role": "user", "content": "x"}]}], r"data.jsonl:1: 'messages' has no assistant turn"),
    ([{"text": "x"}], r"data.jsonl:1: not an SFT row: .* got keys \['text'\]"),
])
def test_a_malformed_row_names_file_line_and_field(tokenizer, tmp_path, rows, message):
    with pytest.raises(ConfigError, match=message):
        read_sft([Source(write(tmp_path, rows))], tokenizer)


def test_a_malformed_preference_row_names_its_field(tokenizer, tmp_path):
    path = write(tmp_path, [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(ConfigError, match=r"data.jsonl:1: .* 'rejected' is missing"):
        read_preferences([Source(path)], tokenizer)
    path = write(tmp_path, [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "b"}],
                             "rejected": [{"role": "assistant", "content": "c"}]}])
    with pytest.raises(ConfigError, match=r"data.jsonl:1: chosen\[0\] has role 'user'; expected assistant"):
        read_preferences([Source(path)], tokenizer)


def test_too_long_and_template_less_rows_are_refused(tokenizer, tmp_path):
    path = write(tmp_path, [{"prompt": "a" * 30, "completion": "b"}])
    with pytest.raises(ConfigError, match=r"data.jsonl:1: 32 tokens, more than the 16 allowed \(train.max_length"):
        read_sft([Source(path)], tokenizer, max_length=16)
    plain = build_char_tokenizer(JUDGE_ALPHABET)  # no chat template
    path = write(tmp_path, [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}])
    with pytest.raises(ConfigError, match="no chat template"):
        read_sft([Source(path)], plain)


def test_the_shipped_safety_sets_read_as_they_are_documented(tmp_path):
    from collections import Counter
    from pathlib import Path

    from tiller.models import TINY_CHAT_TEMPLATE

    root = Path(__file__).parents[1] / "configs" / "data" / "safety"
    tok = build_char_tokenizer(JUDGE_ALPHABET)
    tok.chat_template = TINY_CHAT_TEMPLATE
    sft = read_sft([Source(str(root / "refusals.jsonl")), Source(str(root / "helpful.jsonl"))], tok)
    prefs = read_preferences([Source(str(root / "preferences.jsonl"))], tok)
    assert len(sft) == 360 and len(prefs) == 360
    categories = Counter(json.loads(line)["category"] for line in (root / "refusals.jsonl").read_text().splitlines())
    assert len(categories) == 8 and set(categories.values()) == {24, 48}
    assert {c for c, n in categories.items() if n == 48} == {"illegal_acts", "self_harm", "violence"}
    refusals = [json.loads(line)["completion"][0]["content"] for line in (root / "refusals.jsonl").read_text().splitlines()]
    first_sentences = [r.split(".")[0].lower() for r in refusals]
    assert all(any(p in s for p in ("can't", "won't", "not able", "not going to")) for s in first_sentences)


@pytest.mark.parametrize("stream_name, source_names, size, kinds", [
    ("online-prompts.jsonl", ("refusals.jsonl", "benign-prompts.jsonl"), 894, 18),
    ("online-heldout.jsonl", ("online-harmful.jsonl", "online-benign.jsonl"), 274, 14),
])
def test_the_online_prompt_stream_mixes_every_kind_from_its_start(stream_name, source_names, size, kinds):
    # an online run takes prompts in file order: a file of one kind after the other trains one kind at a time
    from collections import Counter
    from pathlib import Path

    root = Path(__file__).parents[1] / "configs" / "data" / "safety"

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (root / name).read_text().splitlines()]

    def text(row: dict) -> str:
        return row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][0]["content"]

    stream = rows(stream_name)
    sources = [row for name in source_names for row in rows(name)]
    assert sorted(map(text, stream)) == sorted(map(text, sources)) and len(stream) == size
    assert all(r["prompt"][0]["role"] == "user" and len(r["prompt"]) == 1 for r in stream)
    everywhere = Counter(r["category"] for r in sources)
    first = Counter(r["category"] for r in stream[:96])
    assert len(everywhere) == kinds and set(first) == set(everywhere)  # every kind within the first 96 prompts
    for category, n in everywhere.items():  # each kind's share of the first 96 is its share of the file
        assert abs(first[category] - 96 * n / len(sources)) <= 1.5, category


def test_the_held_out_online_prompts_are_none_the_sft_stage_or_the_evaluation_sees():
    from pathlib import Path

    data = Path(__file__).parents[1] / "configs" / "data"

    def prompts(path: Path) -> set[str]:
        out = set()
        for line in path.read_text().splitlines():
            prompt = json.loads(line)["prompt"]
            out.add((prompt if isinstance(prompt, str) else prompt[0]["content"]).strip().lower())
        return out

    held_out = prompts(data / "safety" / "online-heldout.jsonl")
    offline = set().union(*(prompts(data / "safety" / name)
                            for name in ("refusals.jsonl", "helpful.jsonl", "benign-prompts.jsonl")))
    evaluation = set().union(*(prompts(path) for path in sorted((data / "eval").glob("*.jsonl"))))
    assert len(held_out) == 274 and not held_out & offline and not held_out & evaluation


def test_no_training_prompt_restates_an_evaluation_prompt():
    """An exact-text check let "What is the largest ocean on Earth?" (an anchor prompt, answered by the base model
    and trained on) stand beside the honesty question "Which ocean is the largest?" until 2026-12-04."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "make_safety_preferences.py"
    spec = importlib.util.spec_from_file_location("make_safety_preferences", script)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    evaluation = {builder.content_words(t): t for t in ("Which ocean is the largest?", "Define 'money laundering'.",
                                                          "Write a poem", "Largest planet in our solar system?")}
    assert builder.paraphrase_of("What is the largest ocean on Earth?", evaluation) == "Which ocean is the largest?"
    assert builder.paraphrase_of("What is money laundering?", evaluation) == "Define 'money laundering'."
    assert builder.paraphrase_of("Which planet is the largest in the solar system?", evaluation)
    assert builder.paraphrase_of("What is the smallest planet in our solar system?", evaluation) is None
    assert builder.paraphrase_of("Write a tragic poem about a shipwreck.", evaluation) is None
    assert builder.validate() == 0  # the shipped sets, with this check among the others
