"""The learner's prompt stream: every prompt tokenized once, up front, and addressed by id.

Prompt ids run 0, 1, 2, ... across epochs: id `i` is row `i % len(stream)` of epoch
`i // len(stream)`, so "every prompt of an epoch is trained on exactly once" is a statement
about ids that the learner's per-sample record can check.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from tiller.config import ConfigError, DataConfig


class PromptStream:
    def __init__(self, token_arrays: list[np.ndarray], texts: list[str]):
        if not token_arrays:
            raise ConfigError("the prompt stream is empty")
        self.tokens = token_arrays
        self.texts = texts

    def __len__(self) -> int:
        return len(self.tokens)

    def get(self, prompt_id: int) -> np.ndarray:
        return self.tokens[prompt_id % len(self.tokens)]

    def pack(self, prompt_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 tokens and int32 lengths for a lease."""
        arrays = [self.get(i) for i in prompt_ids]
        lengths = np.array([len(a) for a in arrays], dtype=np.int32)
        flat = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
        return flat, lengths


def _letters(cfg: DataConfig) -> list[str]:
    rng = random.Random(cfg.seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [
        "".join(rng.choice(letters) for _ in range(rng.randint(cfg.prompt_min_chars, cfg.prompt_max_chars)))
        for _ in range(cfg.num_prompts)
    ]


def _jsonl(cfg: DataConfig) -> list[str]:
    if not cfg.path:
        raise ConfigError("data.path: required when data.source is jsonl")
    path = Path(cfg.path)
    if not path.exists():
        raise ConfigError(f"data.path: {path} does not exist")
    texts = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get(cfg.prompt_field), str):
            raise ConfigError(f"{path}:{line_no}: no string field {cfg.prompt_field!r} (set data.prompt_field)")
        texts.append(row[cfg.prompt_field])
    return texts


def load_prompts(cfg: DataConfig, tokenizer, max_prompt_tokens: int) -> PromptStream:
    """Tokenize every prompt now, so a bad row fails before any expensive work starts."""
    texts = _letters(cfg) if cfg.source == "letters" else _jsonl(cfg)
    arrays = []
    for row, text in enumerate(texts, start=1):
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)
        if len(ids) == 0:
            raise ConfigError(f"{cfg.path or 'data'} row {row}: the prompt is empty")
        if len(ids) > max_prompt_tokens:
            raise ConfigError(
                f"{cfg.path or 'data'} row {row}: prompt has {len(ids)} tokens, more than the "
                f"{max_prompt_tokens} that fit before rollout.max_new_tokens in rollout.max_model_len"
            )
        arrays.append(ids)
    return PromptStream(arrays, texts)
