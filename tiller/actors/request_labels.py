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
from tiller.jsonl import prompt_text, read_jsonl

Message = dict[str, str]
_SPACE = re.compile(r"\s+")


def request_key(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


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
                    k = request_key(prompt_text(row.get("prompt"), f"{where} ({key})"))
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
        if conversation is not None:
            try:
                text = prompt_text(conversation, "a judged conversation")
            except ConfigError:  # no user turn to look up: the decoded text it is
                pass
        return self.labels.get(request_key(text))
