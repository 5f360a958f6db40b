"""`tiller rlaif-data`, `tiller cai-data` and `tiller self-data`: which pairs are judged and which answers
become rows (pure, fixed verdicts), that the rows are what the offline readers take as is, and each command
end to end on tiny models (a subprocess each, so vLLM never starts inside pytest), the rlaif rows then
trained on by `tiller dpo` and `tiller rm` for a step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiller.actors.cai_judge import Revision
from tiller.config import ConfigError, load_config
from tiller.eval.datagen import (
    Prompt,
    cai_row,
    pairs_to_judge,
    preference_rows,
    read_prompts,
)
from tiller.eval.self_data import answer_row, last_whole_sentences
from tiller.offline.data import (
    Source,
    check_sources,
    read_preferences,
    read_sft,
    sft_format,
)

REPO = Path(__file__).resolve().parents[1]


def user(text: str) -> Prompt:
    return Prompt("t:1", [{"role": "user", "content": text}], text)


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    from tiller.models import (
        JUDGE_ALPHABET,
        TINY_CHAT_TEMPLATE,
        TinyShape,
        ensure_tiny_policy,
    )

    return ensure_tiny_policy(tmp_path_factory.mktemp("models") / "chat", seed=0, alphabet=JUDGE_ALPHABET,
                              chat_template=TINY_CHAT_TEMPLATE, shape=TinyShape(max_positions=1024))


# ----------------------------------------------------------------------------- pure: prompts, pairs, rows


def test_prompts_are_strings_or_conversations_ending_with_a_user_turn(tmp_path):
    convo = [{"role": "system", "content": "be brief."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    path = write(tmp_path / "p.jsonl", [{"prompt": "tell me"}, {"prompt": convo}, {"prompt": "third"}])
    prompts = read_prompts(path, max_prompts=2)
    assert [p.text for p in prompts] == ["tell me", "more"]
    assert prompts[0].judged == "tell me" and prompts[1].judged.startswith("system: be brief.\nuser: hi")
    assert prompts[1].messages == convo and prompts[1].source == convo
    bad = write(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"prompt": convo[:3]}])
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: .*last message is 'assistant'"):
        read_prompts(bad)
    with pytest.raises(ConfigError, match="bad2.jsonl:1: 'prompt' must be"):
        read_prompts(write(tmp_path / "bad2.jsonl", [{"text": "no prompt"}]))


def test_only_distinct_non_empty_answers_are_paired_each_pair_once():
    k = 4
    texts = ["a", "b", "a ", "c",   # prompt 0: answers 0 and 2 are the same (once stripped)
             "x", "x", "x", "x",   # prompt 1: one distinct answer, nothing to compare
             "p", "", "q", "q"]    # prompt 2: an empty answer, two the same
    plan, counts = pairs_to_judge(texts, k)
    assert plan == [[(0, 1), (0, 3), (1, 3)], [], [(0, 2)]]
    assert counts["identical"] == 1 + 6 + 1 and counts["empty"] == 1


def test_decided_pairs_become_rows_and_ties_inconsistent_and_unreadable_do_not():
    k = 3
    prompts = [user("q0"), user("q1")]
    texts = ["a", "b", "c", "x", "y", "z"]
    plan = [[(0, 1), (0, 2), (1, 2)], [(0, 1), (0, 2), (1, 2)]]
    # compare() reports an inconsistent pair (the winner flipped with the order) as "tie", like a tie
    verdicts = ["A", "tie", "B", None, "B", "tie"]
    rows, counts = preference_rows(prompts, texts, k, plan, verdicts, judge="judge-dir")
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("a", "b"), ("c", "b"),
                                                                                       ("z", "x")]
    assert rows[0]["prompt"] == [{"role": "user", "content": "q0"}] and rows[0]["judge"] == "judge-dir"
    assert rows[1]["votes"] == {"orders": 2, "chosen_wins": 1, "rejected_wins": 0}
    assert (counts["A"], counts["B"], counts["tie"], counts["unreadable"]) == (1, 2, 2, 1)
    # the same pair twice (either order), or a "pair" of one text, is written once / never
    rows, counts = preference_rows([user("q")], ["a", "b", "a"], 3, [[(0, 1), (1, 0), (0, 2)]], ["A", "B", "A"],
                                   judge="j", conversational=False, orders=1)
    assert rows == [{"prompt": "q", "chosen": "a", "rejected": "b", "judge": "j",
                     "votes": {"orders": 1, "chosen_wins": 3, "rejected_wins": 0}}]
    assert counts["duplicate"] == 2
    with pytest.raises(ValueError):
        preference_rows([user("q")], ["a", "b"], 2, [[(0, 1)]], [], judge="j")


def test_a_revision_that_failed_was_cut_or_changed_nothing_gives_no_row():
    p = user("q")
    done = Revision("better", False, ("harmless",), ("it is rude",))
    assert cai_row(p, "bad", None) == (None, "failed")
    assert cai_row(p, "bad", Revision("bet", True, ("harmless",), ("c",))) == (None, "cut")
    assert cai_row(p, "bad", Revision("  ", False, ("harmless",), ("c",))) == (None, "empty")
    assert cai_row(p, "same ", Revision("same", False, ("harmless",), ("c",))) == (None, "unchanged")
    row, why = cai_row(p, "bad", done)
    assert why == "written" and row == {
        "prompt": [{"role": "user", "content": "q"}], "initial": "bad", "critique": "it is rude", "revision": "better",
        "principle": "harmless", "completion": [{"role": "assistant", "content": "better"}],
        "chosen": [{"role": "assistant", "content": "better"}], "rejected": [{"role": "assistant", "content": "bad"}]}
    plain, _ = cai_row(p, " bad", done, conversational=False)
    assert (plain["prompt"], plain["completion"], plain["rejected"]) == ("q", " better", " bad")


def test_own_answers_become_rows_cut_back_to_whole_sentences_and_refusals_are_left_out():
    p = user("What is a botnet?")
    row, why = answer_row(p, "A botnet is a network of hijacked computers.", False, True, None, "definition")
    assert why == "written" and row == {"prompt": [{"role": "user", "content": "What is a botnet?"}],
                                        "completion": [{"role": "assistant", "content": "A botnet is a network "
                                                        "of hijacked computers."}], "category": "definition"}
    cut = "A botnet is a network of computers. Its owner sends them orders. The orders are"
    row, why = answer_row(p, cut, True, True, None, None)
    assert why == "trimmed"
    assert row["completion"][0]["content"] == "A botnet is a network of computers. Its owner sends them orders."
    assert "category" not in row
    assert answer_row(p, "A botnet is a network of computers that all", True, True, None, None) == (None, "cut")
    assert answer_row(p, "I can't help with that. Try a search engine.", False, True, None, None) == (None, "refusal")
    assert answer_row(p, "  ", False, True, None, None) == (None, "empty")
    plain, _ = answer_row(user("Q: botnet?"), " A network.", False, False, None, None)
    assert plain == {"prompt": "Q: botnet?", "completion": " A network."}
    # a list number is not a sentence end; a quoted sentence end is; too little left is no answer
    assert last_whole_sentences("1. Mix the flour.\n2. Add") == "1. Mix the flour."
    assert last_whole_sentences('He said "stop." Then he') == 'He said "stop."'
    assert last_whole_sentences("Short. " + "x" * 40) is None


def test_the_rows_are_read_as_they_are_by_the_sft_and_preference_readers(tmp_path, chat_dir, tiny_policy_dir):
    from tiller.models import load_tokenizer

    convo = Prompt("t:1", [{"role": "system", "content": "be brief."}, {"role": "user", "content": "hi"}], None)
    done = Revision("hello there.", False, ("helpful",), ("too short",))
    prefs, _ = preference_rows([convo], ["one", "two"], 2, [[(0, 1)]], ["B"], judge="j")
    cai = [cai_row(convo, "hey", done)[0]]
    tok = load_tokenizer(chat_dir)
    for path in (write(tmp_path / "rlaif.jsonl", prefs), write(tmp_path / "cai.jsonl", cai)):
        check_sources([Source(path)], "dpo")
        (pair,) = read_preferences([Source(path)], tok)
        assert tok.decode(pair.chosen_ids).startswith("two" if "rlaif" in path else "hello there.")
    check_sources([Source(str(tmp_path / "cai.jsonl"))], "sft")
    assert sft_format(cai[0], "x") == "prompt_completion"  # `completion` (not `chosen`) decides
    (example,) = read_sft([Source(str(tmp_path / "cai.jsonl"))], tok)
    trained = [t for t, on in zip(example.input_ids, example.trained) if on]
    assert tok.decode(trained).startswith("hello there.")
    # a model without a chat template reads the plain form
    plain, _ = preference_rows([user("hi ")], ["one", "two"], 2, [[(0, 1)]], ["A"], judge="j", conversational=False)
    assert read_preferences([Source(write(tmp_path / "plain.jsonl", plain))], load_tokenizer(tiny_policy_dir))


def test_dry_run_checks_the_judge_kind_and_the_prompts():
    from tiller.cli import app

    runner = CliRunner()
    for command in ("rlaif-data", "cai-data"):
        config = REPO / "configs" / "datagen" / f"{command.split('-')[0]}.yaml"
        result = runner.invoke(app, [command, str(config), "--dry-run"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["rlaif-data", str(REPO / "configs/datagen/cai.yaml"), "--dry-run"])
    assert result.exit_code == 2 and "judge.kind" in result.output
    result = runner.invoke(app, ["cai-data", str(REPO / "configs/datagen/cai.yaml"), "datagen.prompts=/nope.jsonl",
                                 "--dry-run"])
    assert result.exit_code == 2 and "no such data file" in result.output


# ----------------------------------------------------------------------------- end to end, tiny models


def tiller(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "tiller", *args], cwd=REPO, capture_output=True, text=True, check=False,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generating" in result.stderr and "100%" in result.stderr  # the progress bars


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("datagen-models")


@pytest.mark.slow
def test_rlaif_data_writes_preferences_that_dpo_and_rm_train_on(tmp_path, models):
    from tiller.offline import dpo, rm

    # a random judge only has position bias: letter verdicts in one order decide every readable pair
    tiller("rlaif-data", "configs/datagen/rlaif.yaml", f"output_dir={tmp_path}", f"model.path={models / 'chat'}",
           f"judge.model_path={models / 'judge'}", "datagen.max_prompts=4", "datagen.samples_per_prompt=2",
           "datagen.generation.max_new_tokens=8", "judge.swap_positions=false", "judge.verdict=letter")
    out = tmp_path / "rlaif-data" / "rlaif-data.jsonl"
    s = json.loads((tmp_path / "rlaif-data" / "rlaif-data.summary.json").read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert s["prompts"] == 4 and s["answers"] == 8 and s["output"] == str(out)
    if s["answers_empty"] == 0:
        assert s["comparisons"] + s["identical_pairs_skipped"] == 4  # one pair per prompt at k = 2
    assert s["decided"] + s["ties"] + s["inconsistent"] + s["unreadable"] == s["comparisons"]
    assert s["pairs_written"] == s["decided"] - s["duplicates"] == len(rows) > 0
    assert s["judge"]["model_path"] == str(models / "judge") and s["seconds"] > 0
    for row in rows:
        assert row["prompt"][-1]["role"] == "user" and row["chosen"] != row["rejected"]
        assert [m["role"] for m in row["chosen"] + row["rejected"]] == ["assistant", "assistant"]
        assert row["judge"] == str(models / "judge") and row["votes"]["orders"] == 1
    assert not list(out.parent.glob(".*tmp*"))  # written through a temp file, renamed
    common = [f"output_dir={tmp_path}", f"model.path={models / 'chat'}", "metrics.wandb=disabled",
              "train.max_steps=1", "train.batch_size=2", "train.eval_fraction=0"]
    dpo.run(load_config(None, ["name=dpo", f"dpo.data=[{{path: {out}}}]", *common]))
    rm.run(load_config(None, ["name=rm", f"rm.data=[{{path: {out}}}]", *common]))
    assert (tmp_path / "dpo" / "final" / "config.json").exists() and (tmp_path / "rm" / "final" / "config.json").exists()


@pytest.mark.slow
def test_self_data_writes_the_models_own_answers_as_sft_rows(tmp_path, models):
    from tiller.models import load_tokenizer

    prompts = tmp_path / "prompts.jsonl"
    write(prompts, [{"prompt": "abc", "category": "x"}, {"prompt": [{"role": "user", "content": "de"}]},
                    {"prompt": "fgh", "category": "y"}, {"prompt": "ij"}])
    tiller("self-data", "configs/safety/self-data.yaml", f"output_dir={tmp_path}", f"model.path={models / 'chat'}",
           "model.build_tiny=true", "model.tiny_chat=true", f"datagen.prompts={prompts}", "datagen.temperature=1.0",
           "datagen.generation.max_new_tokens=24", "datagen.generation.max_model_len=1024")
    out = tmp_path / "safety-self-data" / "self-data.jsonl"
    s = json.loads((tmp_path / "safety-self-data" / "self-data.summary.json").read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert s["prompts"] == s["answers"] == 4 and s["rows_written"] == len(rows)
    assert s["rows_written"] + s["answers_cut"] + s["answers_empty"] + s["answers_refusing"] == 4
    assert sum(s["by_category"].values()) == len(rows)
    for row in rows:
        assert set(row) <= {"prompt", "completion", "category"} and row["prompt"][-1]["role"] == "user"
        assert row["completion"][0]["content"].strip()
    if rows:
        assert len(read_sft([Source(str(out))], load_tokenizer(models / "chat"))) == len(rows)


@pytest.mark.slow
def test_cai_data_writes_rows_that_are_sft_data_and_preferences(tmp_path, models):
    from tiller.models import load_tokenizer

    # long enough that some of the tiny judge's revisions end before the token limit (cut ones are skipped)
    tiller("cai-data", "configs/datagen/cai.yaml", f"output_dir={tmp_path}", f"model.path={models / 'chat'}",
           f"judge.model_path={models / 'judge-cai'}", "datagen.max_prompts=6", "datagen.generation.max_new_tokens=48")
    out = tmp_path / "cai-data" / "cai-data.jsonl"
    s = json.loads((tmp_path / "cai-data" / "cai-data.summary.json").read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert s["prompts"] == s["answers"] == 6
    assert s["answers_empty"] + s["revised"] + s["failed"] == s["answers"]
    assert s["cut"] + s["empty"] + s["unchanged"] + s["rows_written"] == s["revised"]
    assert s["rows_written"] == len(rows)
    for row in rows:
        assert set(row) == {"prompt", "initial", "critique", "revision", "principle", "completion", "chosen",
                            "rejected"}
        assert row["completion"] == row["chosen"] == [{"role": "assistant", "content": row["revision"]}]
        assert row["rejected"] == [{"role": "assistant", "content": row["initial"]}]
        assert row["revision"] != row["initial"] and row["principle"]
    if rows:  # the same file, as SFT data and as preferences
        tok = load_tokenizer(models / "chat")
        assert len(read_sft([Source(str(out))], tok)) == len(read_preferences([Source(str(out))], tok)) == len(rows)
