"""Live evaluation during training: every `eval.every` steps the actors answer the eval sets greedily with
the current weights, the judges score the answers, and the round's metrics land in the row of the step
on which its last answer came in (tiller/eval/live.py computes them).

    training loop ── open round r after step s ──► server ──► coordinator's EvalBook ──► eval leases ──► actors
         ▲                                                                                       │ rollouts
         └── polled every step, never waited for ◄── server.eval_answers ◄── judges ◄── score tasks

Round 0 is opened before the first step: the initial policy's answers are the reference that later rounds
are judged beside (win rate) and measured against (length). A resumed run takes a new reference at its
first round (eval/reference_version says which). A round still open when the next is due is superseded
(eval/rounds_dropped); answers from older weights than the round asked for are used, and eval/version says
which version was evaluated (the oldest among the answers). The training loop owns the rounds; the
socket thread only serves the latest one.
"""

from __future__ import annotations

import itertools
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tiller.config import Config, ConfigError, EvalConfig
from tiller.eval.evaluate import SETS
from tiller.eval.live import Interval, JudgedAnswer, hacking_signs, round_metrics
from tiller.eval.sets import EvalPrompt, load_set
from tiller.learner.eval_book import EvalAnswer, EvalAnswers, EvalBook, Reference
from tiller.learner.prompts import PromptStream, Row, load_prompts

SHIPPED_SETS = Path(__file__).resolve().parents[2] / "configs" / "data" / "eval"


@dataclass(frozen=True)
class LiveSet:
    prompts: PromptStream  # tokenized as the training prompts are
    kinds: list[str]  # the set each prompt is from


def set_path(cfg: EvalConfig, kind: str) -> str | None:
    """The configured set; a default path that does not resolve falls back on the shipped set. (The default
    is written relative to configs/<stage>/, so it misses from a run config in configs/ itself.)"""
    path = getattr(cfg, kind)
    shipped = SHIPPED_SETS / f"{kind}.jsonl"
    if path and path == getattr(EvalConfig(), kind) and not Path(path).exists() and shipped.exists():
        return str(shipped)
    return path


def spread(prompts: list[EvalPrompt], n: int) -> list[EvalPrompt]:
    """The first `n` prompts of a set taken across its categories in turn, so a small round still sees each."""
    by_category: dict[str, list[EvalPrompt]] = {}
    for p in prompts:
        by_category.setdefault(p.category, []).append(p)
    return [p for row in itertools.zip_longest(*by_category.values()) for p in row if p is not None][:n]


def load_live_set(cfg: Config, tokenizer, max_prompt_tokens: int, chat: bool) -> LiveSet:
    """`eval.live_max_prompts` of each configured set, through the training prompts' path (prompts.py): a
    one-turn conversation through the chat template when the training prompts are conversations (`chat`),
    plain text when they are plain text. A prompt too long for the rollout's context is left out, said once."""
    rows: list[Row] = []
    kinds: list[str] = []
    for kind in SETS:
        path = set_path(cfg.eval, kind)
        if not path:
            continue
        for p in spread(load_set(path, kind, cfg.eval.max_prompts), cfg.eval.live_max_prompts):
            rows.append((p.where, p.prompt, [{"role": "user", "content": p.prompt}] if chat else None))
            kinds.append(kind)
    if not rows:
        raise ConfigError("eval.every: live evaluation needs an evaluation set (eval.harmful, eval.benign, ...)")
    stream = load_prompts(cfg.data, tokenizer, 1 << 30, rows=rows)
    keep = [i for i, tokens in enumerate(stream.tokens) if len(tokens) <= max_prompt_tokens]
    if not keep:
        raise ConfigError(f"eval.every: no evaluation prompt fits in {max_prompt_tokens} tokens "
                          "(rollout.max_model_len - rollout.max_new_tokens)")
    if len(keep) < len(rows):
        print(f"live eval: {len(rows) - len(keep)} of {len(rows)} prompts left out (over {max_prompt_tokens} tokens)",
              flush=True)
    prompts = PromptStream([stream.tokens[i] for i in keep], [stream.texts[i] for i in keep],
                           [stream.conversations[i] for i in keep])
    return LiveSet(prompts, [kinds[i] for i in keep])


def eval_book(cfg: Config, live_set: LiveSet | None) -> EvalBook | None:
    """The coordinator's book of rounds. An eval lease carries as many sequences as a training lease
    (prompts x samples), so it costs an actor about as much time."""
    if live_set is None:
        return None
    return EvalBook(live_set.prompts, cfg.learner.lease_prompts * cfg.rollout.samples_per_prompt,
                    cfg.rollout.max_new_tokens, cfg.learner.lease_timeout_s)


class LiveEval:
    """The training loop's side of the rounds: opens one when due, drains judged answers without waiting,
    and computes a round's metrics once every prompt is answered."""

    def __init__(self, cfg: Config, live_set: LiveSet, tokenizer, answers: queue.Queue,
                 open_round: Callable[[int, Reference | None], None]):
        self.every, self.last_step = cfg.eval.every, cfg.learner.steps
        self.margin, self.max_length_ratio = cfg.eval.hacking_margin, cfg.eval.max_length_ratio
        self.set, self.tokenizer = live_set, tokenizer
        self._incoming, self._open_round = answers, open_round
        self.round_id, self.round_step, self.open = -1, 0, False
        self.answers: dict[int, EvalAnswer] = {}
        self.reference: Reference | None = None
        self.reference_lengths: list[int] = []
        self.reference_version = -1
        self.rounds_dropped = 0
        self._rewards: list[float] = []  # training reward of each step since the latest round was opened
        self._round_reward: float | None = None  # ... and of the steps before the open round
        self.previous: Interval | None = None  # the latest completed round
        self.news: list[str] = []  # warnings about the step just done (printed after its progress line, which
        # carries the round's numbers)

    def start(self, step: int) -> None:
        """The reference round, before training (or, resumed, before the first step of this start)."""
        if step < self.last_step:
            self._open(step)

    def after_step(self, step: int, train_reward: float) -> dict[str, float]:
        """Call once per trained step, after its weights are published; returns `eval/...` metrics for its row
        (empty unless a round completed)."""
        self._rewards.append(train_reward)
        metrics = self._collect(step)
        if step % self.every == 0 and step < self.last_step:  # a round opened at the last step would never report
            self._open(step)
        return metrics

    def _open(self, step: int) -> None:
        if self.open:
            self.rounds_dropped += 1
            self.news.append(f"live eval: the round opened at step {self.round_step} did not complete by step {step}; "
                             f"superseded ({self.rounds_dropped} so far)")
        self.round_id, self.round_step, self.open, self.answers = self.round_id + 1, step, True, {}
        self._round_reward = float(np.mean(self._rewards)) if self._rewards else None
        self._rewards = []
        self._open_round(self.round_id, self.reference)

    def _collect(self, step: int) -> dict[str, float]:
        while True:
            try:
                item: EvalAnswers = self._incoming.get_nowait()
            except queue.Empty:
                break
            if self.open and item.round_id == self.round_id:  # a superseded round's late answers are dropped
                self.answers.update((a.index, a) for a in item.answers)
        if not self.open or len(self.answers) < len(self.set.kinds):
            return {}
        self.open = False
        return self._metrics(step, [self.answers[i] for i in range(len(self.set.kinds))])

    def _metrics(self, step: int, answers: list[EvalAnswer]) -> dict[str, float]:
        first = self.reference is None
        lengths = [len(a.response) for a in answers]
        reference_lengths = lengths if first else self.reference_lengths
        judged = [JudgedAnswer(kind, self.tokenizer.decode([int(t) for t in a.response], skip_special_tokens=True),
                               length, a.score, a.reference_score, reference_length, a.policy_version, str(text or ""))
                  for kind, a, length, reference_length, text in zip(self.set.kinds, answers, lengths, reference_lengths,
                                                                      self.set.prompts.texts)]
        m = round_metrics(judged)
        if first:
            self.reference = Reference([a.response for a in answers], np.asarray([a.truncated for a in answers], bool))
            self.reference_lengths, self.reference_version = lengths, int(m["eval/version"])
        current = Interval(self._round_reward, m.get("eval/harmful_refusal"), m.get("eval/win_rate"),
                           m["eval/length_ratio"])
        signs = hacking_signs(self.previous, current, self.margin, self.max_length_ratio)
        if signs:
            self.news.append(f"WARNING: possible reward hacking at step {step}: the training reward rose "
                             f"{self.previous.train_reward:.3f} -> {current.train_reward:.3f} while " + "; ".join(signs))
        self.previous = current
        return {**m, "eval/round_step": self.round_step, "eval/reference_version": self.reference_version,
                "eval/rounds_dropped": self.rounds_dropped, "eval/reward_hacking": int(bool(signs))}

    def pop_news(self) -> list[str]:
        news, self.news = self.news, []
        return news
