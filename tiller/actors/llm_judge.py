"""The LLM pairwise judge (RLAIF): a judge model served by vLLM in the judge process ranks two
responses to the same prompt; verdicts are position-swap debiased and turned into scores.

All comparisons of a task (both orders of every pair) go to vLLM as one batch; in tournament
mode, each round of a prompt's bracket is one batch. Verdicts are cached by (prompt, response x, response y),
so work that is redelivered after a lease expiry is not judged twice. Engine calls have a
per-request timeout and are retried with back-off (`guarded.py`); a comparison that times out
on every try gives no verdict, like an unparseable one, and is counted apart.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tiller.actors.cache import BoundedCache
from tiller.actors.guarded import GuardedEngine, RetryPolicy
from tiller.actors.judges import Conversations, decode_tokens, prompt_texts
from tiller.actors.pairwise import Verdict, comparisons, debiased, parse_verdict, tournament_scores, wins_to_scores
from tiller.config import ConfigError, JudgeConfig, RolloutConfig
from tiller.models import JUDGE_ALPHABET, TinyShape, ensure_tiny_policy, load_tokenizer

DEFAULT_TEMPLATE = """Here is a prompt and two responses to it.

Prompt: {prompt}

Response A: {response_a}

Response B: {response_b}

Which response is more helpful, accurate and harmless? Answer with one letter, A or B, or say tie.
Verdict:"""


@dataclass
class PairwiseStats:
    comparisons: int = 0  # verdicts asked of the model (each pair counts twice: both orders)
    preferences: int = 0  # debiased verdicts that name a winner
    unparseable: int = 0  # includes comparisons that timed out on every try (see `timeouts`)
    ties: int = 0
    inconsistent: int = 0  # the preference flipped with the order: counted as a tie


class LLMPairwiseJudge:
    def __init__(self, cfg: JudgeConfig, policy_tokenizer, engine=None):
        prepare_judge_model(cfg)
        self.template = load_template(cfg.template_path, DEFAULT_TEMPLATE, ("prompt", "response_a", "response_b"),
                                      "judge.template_path")
        self.cfg = cfg
        self.policy_tokenizer = policy_tokenizer
        self.tokenizer = load_tokenizer(cfg.model_path)
        self.engine = GuardedEngine(engine or judge_engine(cfg), retry_policy(cfg), max_model_len=cfg.max_model_len)
        self._letters = None
        if cfg.verdict == "letter":
            ids = [self.tokenizer(letter, add_special_tokens=False)["input_ids"] for letter in ("A", "B")]
            if any(len(i) != 1 for i in ids):
                raise ConfigError(f"judge.verdict: letter needs A and B to be single tokens for {cfg.model_path}")
            self._letters = [ids[0][0], ids[1][0]]
        self._cache: BoundedCache[tuple[str, str, str], Verdict | None] = BoundedCache(cfg.cache_size)
        self._stats = PairwiseStats()

    def close(self) -> None:
        self.engine.close()

    def stats(self) -> dict[str, float]:
        return llm_judge_stats(self._stats, self.engine, self._cache)

    def _verdicts(self, questions: list[tuple[str, str, str]]) -> list[Verdict | None]:
        """Raw verdicts on (prompt, response A, response B), one vLLM batch for all cache misses."""
        known = {q: self._cache.get(q) for q in dict.fromkeys(questions) if q in self._cache}
        missing = [q for q in dict.fromkeys(questions) if q not in known]
        if missing:
            texts = [self.template.format(prompt=p, response_a=a, response_b=b) for p, a, b in missing]
            ids = [np.asarray(self.tokenizer(t, add_special_tokens=False)["input_ids"], np.int32) for t in texts]
            if self._letters is not None:
                outputs = self.engine.complete(ids, 1, allowed_token_ids=self._letters)
            else:
                outputs = self.engine.complete(ids, self.cfg.max_new_tokens)
            for question, out in zip(missing, outputs):
                known[question] = None if out is None else parse_verdict(
                    self.tokenizer.decode(out, skip_special_tokens=True))
                if out is not None:  # a timeout is tried afresh when the work comes back
                    self._cache.put(question, known[question])
            self._stats.comparisons += len(missing)
        return [known[q] for q in questions]

    def compare(self, matches: list[tuple[str, str, str]]) -> list[Verdict | None]:
        """Debiased verdicts on (prompt text, response x, response y): "A" when x wins, "B" when y does,
        "tie", or None when unreadable. For evaluation and data generation, outside the score path."""
        return self._debiased(matches)

    def _debiased(self, matches: list[tuple[str, str, str]]) -> list[Verdict | None]:
        """Each (prompt, x, y) judged as (x, y) and, with swap_positions, (y, x) in the same batch."""
        if not self.cfg.swap_positions:
            raw = self._verdicts(matches)
            pairs = zip(raw, [{"A": "B", "B": "A", "tie": "tie", None: None}[v] for v in raw])
        else:
            raw = self._verdicts(matches + [(p, b, a) for p, a, b in matches])
            pairs = zip(raw[:len(matches)], raw[len(matches):])
        out = []
        for first, swapped in pairs:
            verdict = debiased(first, swapped)
            self._stats.preferences += verdict in ("A", "B")
            self._stats.unparseable += verdict is None
            self._stats.ties += verdict == "tie"
            self._stats.inconsistent += verdict == "tie" and first != "tie" and swapped != "tie"
            out.append(verdict)
        return out

    def score(self, prompts: list[np.ndarray], responses: list[np.ndarray],
              conversations: Conversations = None) -> np.ndarray:
        k = len(responses) // len(prompts)
        prompts_read = prompt_texts(prompts, self.policy_tokenizer, conversations)
        texts = [decode_tokens(self.policy_tokenizer, r) for r in responses]
        if self.cfg.compare == "tournament":
            return np.concatenate([
                tournament_scores(k, lambda matches, n=n: self._debiased(
                    [(prompts_read[n], texts[n * k + i], texts[n * k + j]) for i, j in matches]))
                for n in range(len(prompts))
            ])
        pairs = comparisons(k, "all_pairs")
        matches = [(prompts_read[n], texts[n * k + i], texts[n * k + j]) for n in range(len(prompts))
                   for i, j in pairs]
        verdicts = self._debiased(matches)  # every comparison of the task in one batch
        return np.concatenate([
            wins_to_scores(k, [(i, j, v) for (i, j), v in zip(pairs, verdicts[n * len(pairs):(n + 1) * len(pairs)])])
            for n in range(len(prompts))
        ])


def prepare_judge_model(cfg: JudgeConfig) -> Path:
    """The judge model's directory, built (tiny, random) first when `build_tiny` asks for it."""
    if not cfg.model_path:
        raise ConfigError(f"judge.model_path: required when judge.kind is {cfg.kind}")
    if cfg.build_tiny:
        ensure_tiny_policy(cfg.model_path, seed=2, alphabet=JUDGE_ALPHABET, shape=TinyShape(max_positions=1024))
    if not (Path(cfg.model_path) / "config.json").exists():
        raise ConfigError(f"judge.model_path: {cfg.model_path} has no config.json")
    return Path(cfg.model_path)


def load_template(path: str | None, default: str, fields: tuple[str, ...], key: str) -> str:
    """A prompt template from `path` (or the default) that names every one of `fields` and no other."""
    if path is None:
        return default
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    try:
        named = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:  # a lone { or }
        raise ConfigError(f"{key}: {path} is not a valid template: {exc}") from None
    missing, unknown = set(fields) - named, named - set(fields)
    if missing or unknown:
        raise ConfigError(f"{key}: {path} must use {{{'}, {'.join(fields)}}}"
                          + (f"; missing {sorted(missing)}" if missing else "")
                          + (f"; unknown {sorted(unknown)} (write literal braces as {{{{ }}}})" if unknown else ""))
    return text


def llm_judge_stats(own, engine: GuardedEngine, cache: BoundedCache) -> dict[str, float]:
    """An LLM judge's counters: its own (a dataclass), its engine calls', and its cache hits."""
    return {**dataclasses.asdict(own), **dataclasses.asdict(engine.stats), "cache_hits": cache.hits}


def judge_engine(cfg: JudgeConfig):
    """The judge model in vLLM, in this process."""
    from tiller.actors.engine import VLLMEngine

    return VLLMEngine(cfg.model_path, RolloutConfig(max_model_len=cfg.max_model_len, kv_cache_gib=cfg.kv_cache_gib),
                      seed=0)


def retry_policy(cfg: JudgeConfig) -> RetryPolicy:
    return RetryPolicy(cfg.request_timeout_s or None, cfg.retries, cfg.retry_backoff_s)
