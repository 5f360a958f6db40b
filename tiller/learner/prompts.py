"""The learner's prompt stream: every prompt tokenized once, up front, and addressed by id.

Prompt ids run 0, 1, 2, ... across epochs: id `i` is row `i % len(stream)` of epoch
`i // len(stream)`, so "every prompt of an epoch is trained on exactly once" is a statement
about ids that the learner's per-sample record can check.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from tiller.config import ConfigError, DataConfig
from tiller.hub import read_folder
from tiller.jsonl import read_jsonl


Message = dict[str, str]


class PromptStream:
    def __init__(self, token_arrays: list[np.ndarray], texts: list[str],
                 conversations: list[list[Message] | None] | None = None):
        if not token_arrays:
            raise ConfigError("the prompt stream is empty")
        self.tokens = token_arrays
        self.texts = texts  # what the policy sees: a conversation after its chat template
        self.conversations = conversations or [None] * len(texts)  # the messages of chat prompts

    def __len__(self) -> int:
        return len(self.tokens)

    def get(self, prompt_id: int) -> np.ndarray:
        return self.tokens[prompt_id % len(self.tokens)]

    def conversation(self, prompt_id: int) -> list[Message] | None:
        return self.conversations[prompt_id % len(self.tokens)]

    def pack(self, prompt_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 tokens and int32 lengths for a lease."""
        arrays = [self.get(i) for i in prompt_ids]
        lengths = np.array([len(a) for a in arrays], dtype=np.int32)
        flat = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
        return flat, lengths


def letters_prompts(cfg: DataConfig) -> list[str]:
    """The `letters` source: random lowercase strings, the same for the same `data.seed` (benches reuse them)."""
    rng = random.Random(cfg.seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [
        "".join(rng.choice(letters) for _ in range(rng.randint(cfg.prompt_min_chars, cfg.prompt_max_chars)))
        for _ in range(cfg.num_prompts)
    ]


def _existing(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise ConfigError(f"data.path: required when data.source is {cfg.source}")
    path = Path(cfg.path)
    if not path.exists():
        raise ConfigError(f"data.path: {path} does not exist")
    return path


def _jsonl(cfg: DataConfig) -> list[tuple[str, object]]:
    """(where, prompt value) per row."""
    rows = []
    for where, row in read_jsonl(_existing(cfg)):
        if cfg.prompt_field not in row:
            raise ConfigError(f"{where}: no field {cfg.prompt_field!r} (set data.prompt_field)")
        rows.append((where, row[cfg.prompt_field]))
    return rows


def _dataset(cfg: DataConfig) -> list[tuple[str, object]]:
    """Rows of a parquet/json/jsonl/csv file, or of a folder: a `save_to_disk` one or a folder of such files (a
    Hugging Face hub snapshot, tiller/hub.py), read by the `datasets` library."""
    path = _existing(cfg)
    if path.is_dir():
        data = read_folder(path, cfg.split, "data.path", "data.split")
    else:
        data = _dataset_file(path)
    if cfg.prompt_field not in data.column_names:
        raise ConfigError(f"{path}: no column {cfg.prompt_field!r} (columns: {data.column_names}; "
                          "set data.prompt_field)")
    return [(f"{path} row {i}", value) for i, value in enumerate(data[cfg.prompt_field], start=1)]


def _dataset_file(path: Path):
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.source: dataset needs the `datasets` package (pip install 'tiller[data]')") from None
    builders = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
    if path.suffix not in builders:
        raise ConfigError(f"data.path: {path}: not a folder or a {', '.join(builders)} file")
    try:
        return datasets.load_dataset(builders[path.suffix], data_files=str(path), split="train")
    except Exception as exc:  # the library's own errors name the problem; say which file
        raise ConfigError(f"data.path: {path}: the datasets library could not read it ({exc})") from None


def _conversation(value: object, where: str, field: str) -> list[Message] | None:
    """None for a plain string prompt; the validated messages of a conversation."""
    if isinstance(value, str):
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: {field!r} must be a string or a non-empty list of {{role, content}} "
                          f"messages, got {type(value).__name__}")
    for n, message in enumerate(value):
        if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)):
            raise ConfigError(f"{where}: {field}[{n}] must be {{\"role\": str, \"content\": str}}, got {message!r}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def render(conversation: list[Message], tokenizer, use_template: bool, where: str) -> str:
    """The text the policy sees for a conversation: its chat template with the assistant's turn opened,
    or (templating off, for base models) the messages' contents joined by blank lines."""
    if not use_template:
        return "\n\n".join(m["content"] for m in conversation)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{where}: a conversation, but the policy's tokenizer has no chat template "
                          "(set data.chat_template: false to feed base models the messages as plain text)")
    return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


Row = tuple[str, object, list[Message] | None]  # where it is, its value, its conversation (None: plain text)


def read_rows(cfg: DataConfig) -> list[Row]:
    """Every prompt row, checked for what needs no tokenizer: readable, the prompt field there, a
    conversation well formed."""
    if cfg.source == "letters":
        rows = [(f"data row {i}", text) for i, text in enumerate(letters_prompts(cfg), start=1)]
    else:
        rows = _jsonl(cfg) if cfg.source == "jsonl" else _dataset(cfg)
    return [(where, value, _conversation(value, where, cfg.prompt_field)) for where, value in rows]


def load_prompts(cfg: DataConfig, tokenizer, max_prompt_tokens: int, rows: list[Row] | None = None) -> PromptStream:
    """Tokenize every prompt now, so a bad row fails before any expensive work starts (`rows`: what
    `read_rows` returned, when the caller has read them already)."""
    rows = read_rows(cfg) if rows is None else rows
    conversations = [c for _, _, c in rows]
    texts = [value if c is None else render(c, tokenizer, cfg.chat_template, where) for where, value, c in rows]
    # one tokenizer call per 4,096 prompts: a fast tokenizer batches in Rust (twice as fast as one call each);
    # the template already holds any special tokens the model wants (BOS and the like)
    token_lists = [ids for start in range(0, len(texts), 4096)
                   for ids in tokenizer(texts[start:start + 4096], add_special_tokens=False)["input_ids"]]
    arrays = []
    for (where, _, _), token_ids in zip(rows, token_lists):
        ids = np.asarray(token_ids, dtype=np.int32)
        if len(ids) == 0:
            raise ConfigError(f"{where}: the prompt is empty")
        if len(ids) > max_prompt_tokens:
            raise ConfigError(
                f"{where}: prompt has {len(ids)} tokens, more than the "
                f"{max_prompt_tokens} that fit before rollout.max_new_tokens in rollout.max_model_len"
            )
        arrays.append(ids)
    return PromptStream(arrays, texts, conversations)
