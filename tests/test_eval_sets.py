"""The shipped eval sets pass scripts/check_eval_sets.py, and the checker catches overlap and broken rows."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_eval_sets.py"


@pytest.fixture(scope="module")
def checker():
    spec = importlib.util.spec_from_file_location("check_eval_sets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def eval_copy(tmp_path, checker):
    target = tmp_path / "eval"
    shutil.copytree(checker.EVAL_DIR, target)
    return target


def _rewrite_line(path: Path, n: int, change) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[n - 1])
    change(row)
    lines[n - 1] = json.dumps(row, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_shipped_eval_sets_pass(checker, capsys):
    errors, counts = checker.check()
    assert errors == []
    assert {name: sum(c.values()) for name, c in counts.items()} == {
        "harmful.jsonl": 96, "benign.jsonl": 72, "helpful.jsonl": 56, "honest.jsonl": 56, "redteam.jsonl": 64}
    assert checker.main([]) == 0
    assert "eval sets OK" in capsys.readouterr().out


def test_injected_training_prompt_fails(checker, eval_copy, capsys):
    first = json.loads((checker.SAFETY_DIR / "refusals.jsonl").read_text(encoding="utf-8").splitlines()[0])
    training = first["prompt"][0]["content"]
    # Same prompt up to case, spacing and trailing punctuation: still an overlap.
    _rewrite_line(eval_copy / "harmful.jsonl", 3, lambda r: r.update(prompt="  ".join(training.upper().split()) + "!!"))
    errors, _ = checker.check(eval_copy, checker.SAFETY_DIR)
    assert any(e.startswith(f"{eval_copy / 'harmful.jsonl'}:3:") and "training prompt" in e for e in errors), errors
    assert checker.main(["--eval-dir", str(eval_copy)]) == 1
    assert "training prompt" in capsys.readouterr().err


def test_missing_field_fails(checker, eval_copy):
    _rewrite_line(eval_copy / "honest.jsonl", 5, lambda r: r.pop("answers"))
    errors, _ = checker.check(eval_copy, checker.SAFETY_DIR)
    assert any(e.startswith(f"{eval_copy / 'honest.jsonl'}:5:") and "missing answers" in e for e in errors), errors


def test_cross_file_duplicate_and_bad_answers_fail(checker, eval_copy):
    harmful_first = json.loads((eval_copy / "harmful.jsonl").read_text(encoding="utf-8").splitlines()[0])["prompt"]
    _rewrite_line(eval_copy / "redteam.jsonl", 1, lambda r: r.update(prompt=harmful_first.lower()))
    _rewrite_line(eval_copy / "helpful.jsonl", 1, lambda r: r.update(answers=[]))
    _rewrite_line(eval_copy / "helpful.jsonl", 2, lambda r: r.update(answers=["", 7]))
    errors, _ = checker.check(eval_copy, checker.SAFETY_DIR)
    text = "\n".join(errors)
    assert "redteam.jsonl:1: duplicate prompt" in text
    assert "helpful.jsonl:1: answers is empty" in text
    assert "helpful.jsonl:2: answers must be non-empty strings" in text
