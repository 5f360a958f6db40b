"""Judge kinds: turn (prompt, k responses) into k scores and preference pairs (a `Judgement`).

Most kinds are scorers, anything with `score(prompts, responses, conversations) -> np.ndarray [n*k]`
where `prompts` are n token arrays and `responses` n*k token arrays, prompt-major, and
`conversations` the n prompts' messages where they were conversations (else None); their pairs
are each prompt's best and worst sample. A kind that makes its own pairs (Constitutional AI, whose
chosen side is a revision it wrote) has `judge(prompts, responses, k, max_new_tokens, conversations)
-> Judgement`. Judges read a conversation from its messages, never from the policy's templated
tokens (`prompt_texts`); a reward model with a chat template of its own scores through it.
Any kind may have `stats() -> dict[str, float]`: running counters for the learner's metrics. Kinds:
  - RuleJudge: a Python function `module:function(prompt: str, response: str) -> float`
    named in the judge's own config (never in a message), for verifiable rewards;
  - RewardModelJudge: a transformers sequence-classification model loaded from a path;
  - LLMPairwiseJudge (llm_judge.py): a judge LLM served by vLLM compares samples pairwise (RLAIF);
  - ComposedJudge: a weighted sum of rule / reward-model / safety scorers, with an optional gate;
  - SafetyJudge (safety.py): 1 for a safe response, 0 for an unsafe one or (optionally) an over-refusal;
  - ConstitutionalJudge (cai_judge.py): critique and revise each sample against a constitution.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from tiller.config import ConfigError, JudgeConfig, SafetyConfig
from tiller.models import load_tokenizer
from tiller.protocol.logbudget import LogBudget

log = logging.getLogger(__name__)


Conversations = list[list[dict[str, str]] | None] | None


class Scorer(Protocol):
    def score(self, prompts: list[np.ndarray], responses: list[np.ndarray],
              conversations: Conversations = None) -> np.ndarray: ...


def render_conversation(messages: list[dict[str, str]]) -> str:
    """A conversation as plain text for rules and judge templates: one `role: content` line per message."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def prompt_texts(prompts: list[np.ndarray], tokenizer, conversations: Conversations = None) -> list[str]:
    """What a judge reads as each prompt: a conversation rendered from its messages, else the prompt's
    tokens decoded with the policy's tokenizer."""
    conversations = conversations or [None] * len(prompts)
    return [render_conversation(c) if c is not None else decode_tokens(tokenizer, p)
            for p, c in zip(prompts, conversations)]


def decode_tokens(tokenizer, ids) -> str:
    return tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)


@dataclass(frozen=True)
class Judgement:
    """What a judge returns for one task (see the `Scores` message for the candidate numbering:
    0..k-1 are the samples, k+j is the revision of sample j)."""

    scores: np.ndarray  # float32 [n*k]
    pair_prompts: np.ndarray  # int32 [m]
    chosen: np.ndarray  # int32 [m]
    rejected: np.ndarray  # int32 [m]
    revisions: list[np.ndarray | None] | None = None  # [n*k] revised token ids, None where not revised

    @property
    def num_pairs(self) -> int:
        return len(self.pair_prompts)


def best_and_worst(scores: np.ndarray, k: int, min_margin: float = 0.0) -> Judgement:
    """A scorer's judgement: one pair per prompt, its best sample over its worst (if they differ)."""
    chosen, rejected = pick_pairs(scores, k, min_margin)
    has_pair = np.flatnonzero(chosen >= 0).astype(np.int32)
    return Judgement(np.asarray(scores, np.float32), has_pair, chosen[has_pair], rejected[has_pair])


def pick_pairs(scores: np.ndarray, k: int, min_margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Best and worst of each prompt's k samples as (chosen, rejected) indices.

    scores [n*k], prompt-major. Returns two int32 [n] arrays; -1 in both where the best and
    worst differ by `min_margin` or less (no preference to learn from). Ties go to the
    lowest index, so the result is deterministic.
    """
    grid = scores.reshape(-1, k)
    chosen = grid.argmax(axis=1).astype(np.int32)
    rejected = grid.argmin(axis=1).astype(np.int32)
    no_pair = (grid.max(axis=1) - grid.min(axis=1)) <= min_margin
    chosen[no_pair] = -1
    rejected[no_pair] = -1
    return chosen, rejected


def load_rule(spec: str, key: str = "judge.rule") -> Callable[[str, str], float]:
    """Resolve `package.module:function` from the judge's own config file (never from the wire)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}: {spec!r} must look like package.module:function")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot load {spec!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return fn


class RuleJudge:
    def __init__(self, rule: Callable[[str, str], float], tokenizer):
        self.rule = rule
        self.tokenizer = tokenizer

    def score(self, prompts: list[np.ndarray], responses: list[np.ndarray],
              conversations: Conversations = None) -> np.ndarray:
        k = len(responses) // len(prompts)
        texts = prompt_texts(prompts, self.tokenizer, conversations)
        return np.asarray(
            [float(self.rule(texts[i // k], decode_tokens(self.tokenizer, r))) for i, r in enumerate(responses)],
            np.float32)


class RewardModelJudge:
    """Scores `prompt + response` with a sequence classifier's single logit.

    Text is decoded with the policy tokenizer and re-encoded with the reward model's own, so
    the two may differ. A reward model whose tokenizer has a chat template scores the conversation
    (a plain prompt becomes one user message) with the response as the assistant's turn, through
    that template, as it was trained to read it: the template writes its own special tokens (BOS),
    so its text is tokenized without adding them again. Without a template, `prompt + response`
    is tokenized with the tokenizer's special tokens. Inputs longer than the model's context are
    cut from the left (see `fit`) and counted in `stats()["truncated"]`.
    """

    def __init__(self, path: str | Path, policy_tokenizer, batch_size: int = 32, single_logit: bool = True,
                 key: str = "judge.reward_model_path"):
        import torch
        from transformers import AutoModelForSequenceClassification

        if not (Path(path) / "config.json").exists():
            raise ConfigError(f"{key}: {path} has no config.json")
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
        if single_logit and self.model.config.num_labels != 1:
            raise ConfigError(f"{key}: {path} has {self.model.config.num_labels} labels, needs 1")
        self.tokenizer = load_tokenizer(path)
        self.policy_tokenizer = policy_tokenizer
        self.batch_size = batch_size
        self.max_length = context_length(self.model.config, self.tokenizer)
        self.truncated = 0
        self._logs = LogBudget()

    def stats(self) -> dict[str, float]:
        return {"truncated": self.truncated}

    def texts(self, prompts: list[np.ndarray], responses: list[np.ndarray],
              conversations: Conversations = None) -> list[str]:
        """The reward model's input text for every sample."""
        k = len(responses) // len(prompts)
        answers = [decode_tokens(self.policy_tokenizer, r) for r in responses]
        if not self.templated:
            plain = prompt_texts(prompts, self.policy_tokenizer, conversations)
            return [plain[i // k] + answer for i, answer in enumerate(answers)]
        conversations = conversations or [None] * len(prompts)
        turns = [c if c is not None else [{"role": "user", "content": decode_tokens(self.policy_tokenizer, p)}]
                 for p, c in zip(prompts, conversations)]
        return [self.tokenizer.apply_chat_template(turns[i // k] + [{"role": "assistant", "content": answer}],
                                                   tokenize=False) for i, answer in enumerate(answers)]

    @property
    def templated(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def token_ids(self, prompts: list[np.ndarray], responses: list[np.ndarray],
                  conversations: Conversations = None) -> list[list[int]]:
        """The reward model's input ids for every sample, cut to its context."""
        texts = self.texts(prompts, responses, conversations)
        # A rendered template already holds its special tokens: tokenize it as
        # apply_chat_template(tokenize=True) does, with add_special_tokens=False (else a second BOS).
        ids = self.tokenizer(texts, add_special_tokens=not self.templated)["input_ids"]
        return [self.fit(list(sample)) for sample in ids]

    def fit(self, ids: list[int]) -> list[int]:
        """`ids` cut to the model's context: the leading special tokens (BOS) stay, then the earliest
        tokens after them go.

        Why the left: a sequence classifier reads its score at the last token, so that token must be
        the end of the response (and of the template's assistant turn) as in training; cutting the
        right would score an answer whose end the model never saw. The start of the prompt is the
        oldest context and the least needed to judge the answer, so it goes first; only a response
        longer than the whole context loses its own start too.
        """
        if self.max_length is None or len(ids) <= self.max_length:
            return ids
        specials = set(self.tokenizer.all_special_ids)
        head = 0
        while head < min(len(ids), self.max_length // 2) and ids[head] in specials:
            head += 1
        self.truncated += 1
        if self._logs.allow("truncated"):
            log.warning("reward model input of %d tokens cut to its context of %d, keeping the response's end%s",
                        len(ids), self.max_length, self._logs.note("truncated"))
        return ids[:head] + ids[len(ids) - (self.max_length - head):]

    def score(self, prompts: list[np.ndarray], responses: list[np.ndarray],
              conversations: Conversations = None) -> np.ndarray:
        return self.logits(prompts, responses, conversations)[:, 0]

    def logits(self, prompts: list[np.ndarray], responses: list[np.ndarray],
               conversations: Conversations = None) -> np.ndarray:
        """Every label's logit for every sample, float32 [n*k, num_labels]."""
        import torch

        ids = self.token_ids(prompts, responses, conversations)
        out = []
        for start in range(0, len(ids), self.batch_size):
            enc = self.tokenizer.pad({"input_ids": ids[start:start + self.batch_size]}, return_tensors="pt")
            with torch.no_grad():
                out.append(self.model(**enc).logits.float())
        return torch.cat(out).numpy().astype(np.float32)


def context_length(config, tokenizer) -> int | None:
    """The most tokens a reward model reads: the smaller of its config's `max_position_embeddings`
    and its tokenizer's `model_max_length`, each where it is a real bound (transformers puts 1e30
    in `model_max_length` when the tokenizer does not know); None when neither is."""
    bounds = (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None))
    bounds = [n for n in bounds if isinstance(n, int) and 0 < n < 10_000_000]
    return min(bounds) if bounds else None


class ComposedJudge:
    """sum_i weight_i * score_i, then a gate: where `gate(prompt, response)` is true the reward is
    zeroed (gate_mode zero) or shifted by gate_penalty (gate_mode penalty)."""

    def __init__(self, parts: list[tuple[float, Scorer]], gate: Callable[[str, str], bool] | None,
                 mode: str, penalty: float, tokenizer):
        self.parts, self.gate, self.mode, self.penalty, self.tokenizer = parts, gate, mode, penalty, tokenizer
        self.gate_fired = 0

    def stats(self) -> dict[str, float]:
        """Its own gate counter plus its scorers' counters, summed by name (e.g. `truncated`)."""
        total: dict[str, float] = {}
        for _, judge in self.parts:
            for name, value in (judge.stats() if hasattr(judge, "stats") else {}).items():
                total[name] = total.get(name, 0) + value
        return {**total, "gate_fired": self.gate_fired}

    def score(self, prompts: list[np.ndarray], responses: list[np.ndarray],
              conversations: Conversations = None) -> np.ndarray:
        total = sum(weight * judge.score(prompts, responses, conversations)
                    for weight, judge in self.parts).astype(np.float32)
        if self.gate is None:
            return total
        k = len(responses) // len(prompts)
        texts = prompt_texts(prompts, self.tokenizer, conversations)
        fired = np.array([bool(self.gate(texts[i // k], decode_tokens(self.tokenizer, r)))
                          for i, r in enumerate(responses)])
        self.gate_fired += int(fired.sum())
        total[fired] = 0.0 if self.mode == "zero" else total[fired] + self.penalty
        return total


def build_judge(cfg: JudgeConfig, policy_dir: str | Path, transcript_path: Path | None = None,
                safety: SafetyConfig | None = None):
    """The judge kind `cfg.kind` names: a scorer, or (cai) a judge that makes its own pairs.
    `transcript_path`: where a CAI judge keeps its critiques and revisions, if asked to; `safety`: the
    scorer a `safety` kind (alone or in a composed judge) uses."""
    if cfg.kind == "safety":
        from tiller.actors.safety import SafetyJudge

        return SafetyJudge(safety or SafetyConfig(), load_tokenizer(policy_dir))
    if cfg.kind == "cai":
        from tiller.actors.cai_judge import ConstitutionalJudge

        return ConstitutionalJudge(cfg, load_tokenizer(policy_dir), transcript_path=transcript_path)
    if cfg.kind == "rule":
        return RuleJudge(load_rule(cfg.rule), load_tokenizer(policy_dir))
    if cfg.kind == "composed":
        if not cfg.scorers:
            raise ConfigError("judge.scorers: a composed judge needs at least one scorer")
        parts = [(s.weight, build_judge(dataclasses.replace(cfg, kind=s.kind, rule=s.rule,
                                                            reward_model_path=s.reward_model_path), policy_dir,
                                         safety=safety))
                 for s in cfg.scorers]
        gate = load_rule(cfg.gate_rule, "judge.gate_rule") if cfg.gate_rule else None
        return ComposedJudge(parts, gate, cfg.gate_mode, cfg.gate_penalty, load_tokenizer(policy_dir))
    if cfg.kind == "llm_pairwise":
        from tiller.actors.llm_judge import LLMPairwiseJudge

        return LLMPairwiseJudge(cfg, load_tokenizer(policy_dir))
    if not cfg.reward_model_path:
        raise ConfigError("judge.reward_model_path: required when judge.kind is reward_model")
    return RewardModelJudge(cfg.reward_model_path, load_tokenizer(policy_dir), cfg.batch_size)
