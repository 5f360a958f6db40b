"""Offline training data: SFT and preference rows read from JSONL, checked, and tokenized with a loss mask.

    examples = read_sft([Source("configs/data/refusals.jsonl", weight=2.0), Source("helpful.jsonl")], tokenizer)
    pairs = read_preferences([Source("prefs.jsonl")], tokenizer)

SFT formats, detected per file from its first row and required of every row after it:
- TRL's `{"prompt", "completion"}`: both strings (plain text, an end-of-sequence token appended), or both
  message lists (the prompt through the chat template with the assistant's turn opened, the completion's
  assistant messages after it);
- `{"messages": [...]}`: a whole conversation through the chat template; the loss is on the assistant turns
  only (their end-of-turn tokens included, so the model learns to stop), every turn of a multi-turn one;
- the classic `{"instruction", "input", "output"}`, rendered with the "### Instruction: / ### Input: /
  ### Response:" template (for base models without a chat template), the loss on the output and EOS.
Preferences: `{"prompt", "chosen", "rejected"}`, strings or TRL's conversational form (a message-list prompt,
chosen and rejected as lists of assistant messages).

Which tokens are trained is decided on characters, not on token counts: the text is rendered once, the
character span of every trained part is known from how it was rendered, and a token is trained when it
starts inside one (the tokenizer's offsets say where each token starts). A token straddling the boundary
belongs to the prompt. This needs a fast tokenizer (every current model ships one).

A malformed row stops the stage before any training, naming file, line and field. `weight` mixes sources:
each row of a source is used `weight` times an epoch (2.0: twice; 0.5: a seeded half of its rows).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from tiller.config import ConfigError
from tiller.hub import read_folder
from tiller.jsonl import read_jsonl

INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
INPUT_BLOCK = "### Input:\n{input}\n\n"

Message = dict[str, str]


@dataclass(frozen=True)
class Source:
    path: str
    weight: float = 1.0
    anchor_kl: float = 0.0  # SFT: the coefficient of the KL to the starting model on this file's rows


@dataclass(frozen=True)
class SFTExample:
    """One tokenized example: `trained[i]` says whether token `i` is a target (a response token)."""

    where: str
    input_ids: list[int]
    trained: list[bool]
    anchor_kl: float = 0.0  # its source's: the weight of the KL to the starting model on its trained tokens


@dataclass(frozen=True)
class PreferenceExample:
    """A prompt and two responses, each response as its own token ids (appended to the prompt's)."""

    where: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def data_rows(path: str | Path) -> list[tuple[str, dict]]:
    """A data file's rows (tiller/jsonl.py), or the `train` split of a dataset folder (a Hugging Face hub
    snapshot of parquet or jsonl files: tiller/hub.py); a source without any rows is refused."""
    if Path(path).is_dir():
        rows = [(f"{path} row {i}", dict(row)) for i, row in
                enumerate(read_folder(Path(path), "train", str(path)), start=1)]
    else:
        rows = read_jsonl(path)
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return rows


def _messages(value: object, where: str, field: str, roles: tuple[str, ...] | None = None) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: {field!r} must be a non-empty list of {{role, content}} messages")
    for n, message in enumerate(value):
        if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)):
            raise ConfigError(f"{where}: {field}[{n}] must be {{\"role\": str, \"content\": str}}, got {message!r}")
        if roles is not None and message["role"] not in roles:
            raise ConfigError(f"{where}: {field}[{n}] has role {message['role']!r}; expected {' or '.join(roles)}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text(row: dict, where: str, field: str, allow_empty: bool = False) -> str:
    value = row.get(field)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ConfigError(f"{where}: {field!r} must be a {'' if allow_empty else 'non-empty '}string, "
                          f"got {type(value).__name__ if field in row else 'nothing'}")
    return value


def sft_format(row: dict, where: str) -> str:
    """Which SFT format a row is in, from its keys."""
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "instruction" in row and "output" in row:
        return "instruction"
    raise ConfigError(f"{where}: not an SFT row: expected {{prompt, completion}}, {{messages}} or "
                      f"{{instruction, input, output}}, got keys {sorted(row)}")


class Renderer:
    """Turns rows into (text, trained character spans) and tokenizes them with a loss mask."""

    def __init__(self, tokenizer, max_length: int):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("offline stages need a fast tokenizer (one with offset mappings)")
        self.tokenizer, self.max_length = tokenizer, max_length
        self.eos = tokenizer.eos_token or ""

    def _template(self, messages: list[Message], where: str, open_turn: bool) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"{where}: a conversation, but the tokenizer has no chat template (use "
                              "{prompt, completion} strings or {instruction, input, output} for a base model)")
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=open_turn, tokenize=False)

    def conversation(self, messages: list[Message], where: str) -> tuple[str, list[tuple[int, int]]]:
        """The whole conversation's text and the character span of each assistant turn, taken from rendering
        the conversation turn by turn (a template that is not prefix-stable is refused, naming the row)."""
        spans = []
        full = self._template(messages, where, open_turn=False)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._template(messages[:i], where, open_turn=True) if i else ""
            through = self._template(messages[:i + 1], where, open_turn=False)
            if not (through.startswith(before) and full.startswith(through)):
                raise ConfigError(f"{where}: the chat template does not render this conversation turn by turn "
                                  f"(turn {i} changes what came before it), so its assistant turns cannot be found")
            spans.append((len(before), len(through)))
        if not spans:
            raise ConfigError(f"{where}: 'messages' has no assistant turn to train on")
        return full, spans

    def sft_text(self, row: dict, where: str, kind: str) -> tuple[str, list[tuple[int, int]]]:
        if kind == "messages":
            return self.conversation(_messages(row["messages"], where, "messages"), where)
        if kind == "instruction":
            instruction, output = _text(row, where, "instruction"), _text(row, where, "output")
            extra = row.get("input", "")
            if not isinstance(extra, str):
                raise ConfigError(f"{where}: 'input' must be a string, got {type(extra).__name__}")
            prompt = INSTRUCTION_TEMPLATE.format(instruction=instruction,
                                                 input_block=INPUT_BLOCK.format(input=extra) if extra else "")
            return prompt + output + self.eos, [(len(prompt), len(prompt) + len(output) + len(self.eos))]
        if isinstance(row["prompt"], str):
            prompt, completion = _text(row, where, "prompt"), _text(row, where, "completion")
            return prompt + completion + self.eos, [(len(prompt), len(prompt) + len(completion) + len(self.eos))]
        prompt = _messages(row["prompt"], where, "prompt")
        completion = _messages(row["completion"], where, "completion", roles=("assistant",))
        full, spans = self.conversation(prompt + completion, where)
        start = len(self._template(prompt, where, open_turn=True))
        return full, [(max(a, start), b) for a, b in spans if b > start]

    def tokenize(self, text: str, spans: list[tuple[int, int]], where: str, special: bool) -> SFTExample:
        """Token ids and which are trained; `special`: let the tokenizer add its own BOS (plain text only:
        a chat template writes its special tokens itself)."""
        encoded = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        trained = [end > start and any(a <= start < b for a, b in spans) for start, end in offsets]
        if len(ids) > self.max_length:
            raise ConfigError(f"{where}: {len(ids)} tokens, more than the {self.max_length} allowed (train.max_length, "
                              "at most the model's positions)")
        if not any(trained):
            raise ConfigError(f"{where}: the response is empty once tokenized")
        return SFTExample(where, list(ids), trained)

    def preference(self, row: dict, where: str) -> PreferenceExample:
        for field in ("prompt", "chosen", "rejected"):
            if field not in row:
                raise ConfigError(f"{where}: a preference row needs 'prompt', 'chosen' and 'rejected'; "
                                  f"{field!r} is missing")
        if isinstance(row["prompt"], str):
            prompt = _text(row, where, "prompt")
            texts = {side: (prompt + _text(row, where, side) + self.eos, len(prompt))
                     for side in ("chosen", "rejected")}
            special = True
        else:
            messages = _messages(row["prompt"], where, "prompt")
            opened = self._template(messages, where, open_turn=True)
            texts = {}
            for side in ("chosen", "rejected"):
                answer = _messages(row[side], where, side, roles=("assistant",))
                full = self._template(messages + answer, where, open_turn=False)
                if not full.startswith(opened):
                    raise ConfigError(f"{where}: the chat template renders the prompt differently once {side!r} "
                                      "follows it")
                texts[side] = (full, len(opened))
            special = False
        sides = {side: self.tokenize(text, [(start, len(text))], f"{where} ({side})", special)
                 for side, (text, start) in texts.items()}
        prompt_ids = _prompt_part(sides["chosen"])
        if _prompt_part(sides["rejected"]) != prompt_ids:  # the boundary tokenized differently on each side
            raise ConfigError(f"{where}: the prompt tokenizes differently before 'chosen' and 'rejected'")
        return PreferenceExample(where, prompt_ids, _response_part(sides["chosen"]), _response_part(sides["rejected"]))


def _prompt_part(example: SFTExample) -> list[int]:
    first = example.trained.index(True)
    return example.input_ids[:first]


def _response_part(example: SFTExample) -> list[int]:
    return example.input_ids[example.trained.index(True):]


def _mixed(sources: list[Source], read, with_source: bool = False) -> list:
    """Every source's rows `weight` times (a fractional part: a seeded sample of its rows); `with_source`:
    each as (its source, row)."""
    out = []
    for source in sources:
        if source.weight <= 0:
            raise ConfigError(f"{source.path}: weight {source.weight} must be above 0")
        rows = read(source.path)
        whole, part = int(source.weight), source.weight - int(source.weight)
        picked = rows * whole + random.Random(source.path).sample(rows, round(part * len(rows)))
        out += [(source, r) for r in picked] if with_source else picked
    return out


def read_sft(sources: list[Source], tokenizer, max_length: int = 2048) -> list[SFTExample]:
    renderer = Renderer(tokenizer, max_length)

    def read(path: str) -> list[SFTExample]:
        rows = data_rows(path)
        kind = sft_format(rows[0][1], rows[0][0])
        examples = []
        for where, row in rows:
            if sft_format(row, where) != kind:
                raise ConfigError(f"{where}: a {sft_format(row, where)} row in a file of {kind} rows")
            text, spans = renderer.sft_text(row, where, kind)
            plain = kind == "instruction" or (kind == "prompt_completion" and isinstance(row["prompt"], str))
            examples.append(renderer.tokenize(text, spans, where, special=plain))
        return examples

    return [replace(e, anchor_kl=source.anchor_kl) if source.anchor_kl else e
            for source, e in _mixed(sources, read, with_source=True)]


def read_preferences(sources: list[Source], tokenizer, max_length: int = 2048) -> list[PreferenceExample]:
    renderer = Renderer(tokenizer, max_length)
    return _mixed(sources, lambda path: [renderer.preference(row, where) for where, row in data_rows(path)])


def check_sources(sources, stage: str) -> None:
    """What needs no tokenizer, for --dry-run and before a model loads: every file there, every row JSON in a
    format the stage reads (SFT: one format per file; RM and DPO: preference rows)."""
    if not sources:
        raise ConfigError(f"{stage}.data: no data files (a list of {{path, weight}})")
    for source in sources:
        rows = data_rows(source.path)
        for where, row in rows:
            if stage == "sft":
                if sft_format(row, where) != sft_format(rows[0][1], rows[0][0]):
                    raise ConfigError(f"{where}: a {sft_format(row, where)} row in a file of "
                                      f"{sft_format(rows[0][1], rows[0][0])} rows")
            else:
                missing = [f for f in ("prompt", "chosen", "rejected") if f not in row]
                if missing:
                    raise ConfigError(f"{where}: a preference row needs 'prompt', 'chosen' and 'rejected'; "
                                      f"{missing[0]!r} is missing")

