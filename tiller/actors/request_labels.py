"""Requests whose label is known: the training sets say which prompts are harmful and which only look it.

Online training prompts arrive without their category, and the request patterns (`refusal.harm_category`)
flag only a third of the shipped training sets' harmful requests. When the prompts come from labelled files
(`safety.harmful_prompts`, `safety.benign_prompts`: JSONL with a `prompt` per row), the safety scorer reads
a request's label from them and falls back to the patterns only for a request in neither. A request is
matched by the text of its last user message, compared with case and runs of white space ignored.
"""

from __future__ import annotations

import re

from tiller.config import ConfigError
from tiller.jsonl import read_jsonl

Message = dict[str, str]
_SPACE = re.compile(r"\s+")


def request_key(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def user_text(prompt) -> str | None:
    """A row's `prompt` as the user asked it: the string, or the content of the last user message."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    return None


class KnownRequests:
    def __init__(self, labels: dict[str, bool] | None = None):
        self.labels = labels or {}  # request_key -> harmful

    @classmethod
    def load(cls, harmful: list[str], benign: list[str]) -> KnownRequests:
        """Every prompt of the files, labelled by the list it came from. A prompt in both lists is an error
        naming both places; a row without a readable prompt is an error naming its line."""
        labels: dict[str, bool] = {}
        where_of: dict[str, str] = {}
        lists = ((harmful, True, "safety.harmful_prompts"), (benign, False, "safety.benign_prompts"))
        for paths, is_harmful, key in lists:
            for path in paths:
                for where, row in read_jsonl(path):
                    text = user_text(row.get("prompt"))
                    if text is None or not text.strip():
                        raise ConfigError(f"{where}: {key} rows need a `prompt` (text, or messages with a user turn)")
                    k = request_key(text)
                    if labels.get(k, is_harmful) != is_harmful:
                        raise ConfigError(f"{where}: this prompt is also at {where_of[k]}, labelled the other way "
                                          "(safety.harmful_prompts and safety.benign_prompts must not share one)")
                    labels[k] = is_harmful
                    where_of.setdefault(k, where)
        return cls(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def harmful(self, text: str, conversation: list[Message] | None = None) -> bool | None:
        """The label of a request (its conversation's last user message, else the text), None if unknown."""
        asked = user_text(conversation) if conversation is not None else None
        return self.labels.get(request_key(asked if asked is not None else text))
