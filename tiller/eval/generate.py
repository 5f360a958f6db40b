"""Answers to prompt texts from a model served by vLLM (the actors' engine adapter), in this process.

Evaluation, red-teaming and data generation all ask a model the same thing: here are n user prompts,
write your answer to each. `Generator` turns each prompt into the model's chat-templated token ids
(a plain text prompt for a model without a template), generates in chunks so a progress bar with an
ETA can follow, and gives back texts and token ids. `make_generator` gives one engine in this process
(`generation.workers: 1`) or a `shards.GeneratorPool` of engine processes with the same interface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiller.config import ConfigError, GenerationConfig, RolloutConfig
from tiller.models import load_tokenizer
from tiller.training.precision import generation_dtype


@dataclass(frozen=True)
class Answers:
    texts: list[str]
    prompt_ids: list[np.ndarray]
    response_ids: list[np.ndarray]
    truncated: list[bool]  # stopped by the token limit rather than by the model
    seconds: float

    @property
    def tokens(self) -> int:
        return int(sum(len(r) for r in self.response_ids))


def chat_prompt(tokenizer, text: str, system: str | None = None) -> str:
    """The text a chat model reads for one user turn: its template with the generation prompt, or the
    text itself for a model that has no template."""
    if not getattr(tokenizer, "chat_template", None):
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_token_ids(tokenizer, text: str, system: str | None = None) -> np.ndarray:
    templated = bool(getattr(tokenizer, "chat_template", None))
    # A rendered template writes its own special tokens (BOS): tokenize it without adding them again.
    ids = tokenizer(chat_prompt(tokenizer, text, system), add_special_tokens=not templated)["input_ids"]
    return np.asarray(ids, np.int32)


class Generator:
    """One model in vLLM. `answer` is greedy unless given a temperature; `sample` draws k answers."""

    def __init__(self, model_dir: str | Path, max_model_len: int = 1024, dtype: str = "float32",
                 kv_cache_gib: float = 1.0, seed: int = 0, system_prompt: str | None = None, engine=None):
        from tiller.actors.engine import VLLMEngine

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise ConfigError(f"{model_dir}: no config.json (not a model directory)")
        self.tokenizer = load_tokenizer(self.model_dir)
        self.max_model_len = max_model_len
        self.system_prompt = system_prompt
        self.engine = engine or VLLMEngine(self.model_dir, RolloutConfig(
            max_model_len=max_model_len, dtype=dtype, kv_cache_gib=kv_cache_gib), seed=seed)

    def close(self) -> None:
        self.engine.close()

    def encode(self, texts: list[str], max_new_tokens: int) -> list[np.ndarray]:
        """Each prompt's token ids; a prompt that leaves no room for `max_new_tokens` is an error naming it."""
        ids = [prompt_token_ids(self.tokenizer, t, self.system_prompt) for t in texts]
        for text, prompt in zip(texts, ids):
            if len(prompt) + max_new_tokens > self.max_model_len:
                raise ConfigError(f"prompt {text[:60]!r} is {len(prompt)} tokens: with {max_new_tokens} new tokens "
                                  f"it exceeds the engine's max_model_len of {self.max_model_len}")
        return ids

    def answer(self, texts: list[str], max_new_tokens: int, progress=None, chunk: int = 128,
               temperature: float = 0.0, seed: int = 0) -> Answers:
        """One answer per prompt, `chunk` prompts per vLLM generate call (they batch together);
        `progress(n)` after each call."""
        start = time.monotonic()
        prompts = self.encode(texts, max_new_tokens)
        responses = self._greedy_or_sampled(prompts, max_new_tokens, progress, chunk, temperature, seed)
        return self._answers(prompts, responses, max_new_tokens, start)

    def _greedy_or_sampled(self, prompts: list[np.ndarray], max_new_tokens: int, progress, chunk: int,
                           temperature: float, seed: int) -> list[np.ndarray]:
        """One response per prompt; prompt i samples with seed + i whatever the chunk (the pool's shards too)."""
        responses: list[np.ndarray] = []
        for lo in range(0, len(prompts), chunk):
            part = prompts[lo:lo + chunk]
            gen = self.engine.generate(part, 1, max_new_tokens, temperature=temperature,
                                       seed=None if temperature == 0 else seed + lo, logprobs=False)
            responses += split_responses(gen.tokens, gen.lengths)
            if progress is not None:
                progress(len(part))
        return responses

    def sample(self, texts: list[str], k: int, max_new_tokens: int, temperature: float = 1.0,
               seed: int = 0) -> Answers:
        """k sampled answers per prompt, prompt-major (prompt i's answers are k*i .. k*i+k-1)."""
        start = time.monotonic()
        prompts = self.encode(texts, max_new_tokens)
        gen = self.engine.generate(prompts, k, max_new_tokens, temperature=temperature, seed=seed)
        responses = split_responses(gen.tokens, gen.lengths)
        return self._answers([p for p in prompts for _ in range(k)], responses, max_new_tokens, start)

    def _answers(self, prompts, responses, max_new_tokens: int, start: float) -> Answers:
        eos = set(self.engine.eos_ids)
        texts = [self.tokenizer.decode([int(t) for t in r], skip_special_tokens=True).strip() for r in responses]
        truncated = [len(r) >= max_new_tokens and (len(r) == 0 or int(r[-1]) not in eos) for r in responses]
        return Answers(texts, prompts, responses, truncated, time.monotonic() - start)


def split_responses(tokens: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """A flat token array cut into its responses (`Generation`'s layout)."""
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    return [tokens[bounds[i]:bounds[i + 1]] for i in range(len(lengths))]


def make_generator(model_dir: str | Path, gen: GenerationConfig, seed: int, system_prompt: str | None = None,
                   workers: int | None = None) -> Generator:
    """The model served as `gen` says: one engine in this process, or with `gen.workers` > 1 (or `workers`,
    which overrides it) a pool of engine processes, pinned, the prompts split between them."""
    workers = gen.workers if workers is None else workers
    if workers <= 1:
        return Generator(model_dir, gen.max_model_len, generation_dtype(gen.dtype), gen.kv_cache_gib, seed,
                         system_prompt)
    from tiller.eval.shards import GeneratorPool

    return GeneratorPool(model_dir, workers, gen.max_model_len, generation_dtype(gen.dtype), gen.kv_cache_gib, seed,
                         system_prompt)
