"""JSONL data files as every stage reads them: one object per non-blank line, each named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

from tiller.config import ConfigError


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """(where, row) for every non-blank line, where is "file:line"; an unreadable file or line, or a line
    that is not a JSON object, is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file")
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{line_no}: a row must be a JSON object, got {type(row).__name__}")
        rows.append((f"{path}:{line_no}", row))
    return rows


def prompt_text(value: object, where: str) -> str:
    """A row's request as text: the string itself, or the last user message of a conversation."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list):
        users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str) and users[-1].strip():
            return users[-1]
    raise ConfigError(f"{where}: field 'prompt' must be a non-empty string or messages with a user turn")
