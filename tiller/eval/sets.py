"""Evaluation sets: JSONL rows with a `prompt` (text, or messages whose last user turn is the request), a
`category`, and for checkable sets the accepted `answers`. A bad row is an error naming file, line and field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tiller.config import ConfigError
from tiller.jsonl import prompt_text, read_jsonl

# What each set measures, and whether its rows must carry accepted answers.
SET_KINDS = {"harmful": False, "benign": False, "helpful": True, "honest": True, "redteam": False}


@dataclass(frozen=True)
class EvalPrompt:
    set: str  # harmful, benign, helpful, honest, redteam
    prompt: str
    category: str
    answers: tuple[str, ...] = ()
    attack: str = ""
    where: str = field(default="", compare=False)  # file:line
    # a good answer, where the row has one (a training set's `completion`): the chosen side of a failure
    reference: str = field(default="", compare=False)


def reference_text(value: object) -> str:
    """A row's reference answer: a string, or the assistant message of a conversational completion."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        said = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "assistant"]
        if said and isinstance(said[-1], str):
            return said[-1]
    return ""


def load_set(path: str | Path, kind: str, limit: int = 0, key: str | None = None) -> list[EvalPrompt]:
    """The rows of one set (the first `limit` of each category when limit > 0)."""
    key = key or f"eval.{kind}"
    if not Path(path).is_file():
        raise ConfigError(f"{key}: {path}: no such file")
    rows, per_category = [], {}
    for where, row in read_jsonl(path):
        text = prompt_text(row.get("prompt"), where)
        category = row.get("category", kind)
        if not isinstance(category, str) or not category:
            raise ConfigError(f"{where}: field 'category' must be a non-empty string")
        answers = row.get("answers", [])
        if SET_KINDS.get(kind) and (not isinstance(answers, list) or not answers
                                    or not all(isinstance(a, str) and a.strip() for a in answers)):
            raise ConfigError(f"{where}: field 'answers' must be a non-empty list of strings (the accepted answers)")
        per_category[category] = per_category.get(category, 0) + 1
        if limit and per_category[category] > limit:
            continue
        rows.append(EvalPrompt(kind, text, category, tuple(answers), str(row.get("attack", "")), where,
                               reference_text(row.get("completion"))))
    if not rows:
        raise ConfigError(f"{key}: {path} has no rows")
    return rows
