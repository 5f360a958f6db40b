"""The frozen reference's log-probs of judged samples, computed on the actors' idle cores before the
learner takes them into a batch.

When training is the bottleneck the actors wait for credit and their cores idle (measured: one actor
idle 64% of a compute-bound run), while a quarter to a third of the learner's step is the reference's
forward pass (measured on the 22M toy: 4.1 s of reference against 13.0 s of policy forward and backward
for the same batches; run on another core beside training, 4.9 s, and training did not slow). So a
thread of the learner's process, pinned to the actors' cores, takes each judged prompt off the socket
thread's queue, runs the reference over the candidates a step trains (the pairs' sides for online DPO,
every sample for PPO, GRPO and RLOO) and hands it on in the same order with `ScoredPrompt.reference`
filled; the algorithm's step uses those and runs its own reference pass only for what lacks them.
The thread competes with an actor for its core only while both are busy, which is why it is started
only when the actors idle (tiller/learner/lending.py decides).

    ahead = ReferenceAhead(trainer.reference_pass, server.scored, cores=[1], needs="pairs", temperature=1.0)
    ahead.start()
    item = ahead.scored.get(timeout=1.0)  # as from server.scored, with item.reference filled
    ahead.step_metrics()                  # {"reference_ahead/busy_s": ..., "reference_ahead/prompts": ...}

A failure in the thread is logged once and the prompts pass through without reference log-probs (the
step computes them), so nothing judged is lost.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from typing import Callable

import numpy as np
import torch

from tiller.learner.coordinator import ScoredPrompt

log = logging.getLogger(__name__)

# (input_ids [n, T], attention_mask [n, T], response mask [n, T-1]) -> token log-probs [n, T-1]
LogprobFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def needed_candidates(item: ScoredPrompt, needs: str) -> list[int]:
    """The candidates a step trains on: both sides of every pair, or every sample."""
    if needs == "pairs":
        return sorted({index for pair in item.pairs for index in pair})
    return list(range(len(item.responses)))


def reference_rows(items: list[ScoredPrompt], needs: str, pad_id: int = 0):
    """One right-padded row per needed candidate of `items`: (input_ids, attention_mask, mask, where),
    `where` naming (item index, candidate, prompt length, response length) per row."""
    where = [(i, c, len(item.prompt), len(item.candidate(c)))
             for i, item in enumerate(items) for c in needed_candidates(item, needs)]
    width = max(max(p + r for _, _, p, r in where), 2)
    ids = torch.full((len(where), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(where), width), dtype=torch.long)
    mask = torch.zeros((len(where), width - 1))
    for row, (i, c, p, r) in enumerate(where):
        ids[row, :p] = torch.from_numpy(np.array(items[i].prompt, dtype=np.int64))
        ids[row, p:p + r] = torch.from_numpy(np.array(items[i].candidate(c), dtype=np.int64))
        attention[row, :p + r] = 1
        mask[row, p - 1:p + r - 1] = 1  # position p-1 predicts the first response token
    return ids, attention, mask, where


def with_reference(items: list[ScoredPrompt], logprobs: LogprobFn, needs: str) -> list[ScoredPrompt]:
    """`items` with `reference` filled: {candidate: float32 log-probs of its response tokens}."""
    todo = [i for i, item in enumerate(items) if needed_candidates(item, needs)]
    if not todo:
        return items
    ids, attention, mask, where = reference_rows([items[i] for i in todo], needs)
    with torch.no_grad():
        token_logp = logprobs(ids, attention, mask).float().cpu().numpy()
    found: dict[int, dict[int, np.ndarray]] = {}
    for row, (j, c, p, r) in enumerate(where):
        found.setdefault(todo[j], {})[c] = token_logp[row, p - 1:p + r - 1].copy()
    return [dataclasses.replace(item, reference=found[i]) if i in found else item for i, item in enumerate(items)]


class ReferenceAhead:
    def __init__(self, logprobs: LogprobFn, source: queue.Queue, cores: list[int], needs: str,
                 max_rows: int = 16, pin: Callable[[list[int]], None] | None = None):
        self.logprobs, self.source, self.cores, self.needs = logprobs, source, cores, needs
        self.max_rows = max_rows  # rows per reference pass: prompts waiting together share one
        self.scored: queue.Queue = queue.Queue()  # what the training loop reads instead of `source`
        self._pin = pin if pin is not None else (lambda cores: os.sched_setaffinity(0, cores))  # this thread only
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reference-ahead", daemon=True)
        self._busy_s = 0.0  # reference seconds since the last step_metrics
        self._prompts = 0
        self.failed: str | None = None  # the error that switched the thread to passing prompts through

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _take(self) -> list[ScoredPrompt]:
        """The next prompt (waiting at most 0.2 s) and those already queued behind it, up to max_rows rows."""
        try:
            items = [self.source.get(timeout=0.2)]
        except queue.Empty:
            return []
        rows = len(needed_candidates(items[0], self.needs))
        while rows < self.max_rows:
            try:
                item = self.source.get_nowait()
            except queue.Empty:
                break
            items.append(item)
            rows += len(needed_candidates(item, self.needs))
        return items

    def _run(self) -> None:
        self._pin(self.cores)
        while not self._stop.is_set():
            items = self._take()
            if items and self.failed is None:
                started = time.monotonic()
                try:
                    items = with_reference(items, self.logprobs, self.needs)
                except Exception as exc:  # the step computes what is missing: slower, never wrong
                    self.failed = f"{type(exc).__name__}: {exc}"
                    log.exception("reference log-probs ahead of the batch failed; the steps compute them from now on")
                self._busy_s += time.monotonic() - started
                self._prompts += len(items)
            for item in items:
                self.scored.put(item)

    def step_metrics(self) -> dict[str, float]:
        """Reference seconds and prompts done ahead since the last call."""
        metrics = {"reference_ahead/busy_s": self._busy_s, "reference_ahead/prompts": float(self._prompts)}
        self._busy_s, self._prompts = 0.0, 0
        return metrics
