"""The judge actor: take a scoring task from the learner, score it, return scores and pairs.

    tiller judge --config configs/demo.yaml --learner tcp://127.0.0.1:5555

Pull-based: the judge asks for work when it is free, so a fast judge simply takes more
tasks than a slow one, and a judge that joins mid-run starts taking work at once.
"""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np

from tiller.actors.judges import Judgement, best_and_worst, build_judge
from tiller.actors.worker import HeartbeatThread, LearnerFinished, default_worker_id, request_patiently, working
from tiller.config import Config
from tiller.protocol.messages import JudgeFailed, Scores, ScoreTask, Shutdown, WorkRequest, unflatten
from tiller.protocol.transport import LearnerClient
from tiller.timeline import mark

log = logging.getLogger(__name__)


def parse_conversations(task: ScoreTask) -> list[list[dict[str, str]] | None]:
    """The task's chat prompts as messages (None for plain prompts). A malformed entry is read as a plain
    prompt, logged: the tokens are still there, and one bad string must not cost the whole task."""
    parsed: list[list[dict[str, str]] | None] = []
    for n, text in enumerate(task.conversations):
        messages = None
        if text:
            try:
                value = json.loads(text)
                if isinstance(value, list) and value and all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in value):
                    messages = [{"role": m["role"], "content": m["content"]} for m in value]
            except (ValueError, RecursionError):
                pass
            if messages is None:
                log.warning("lease %d prompt %d: conversation is not a list of {role, content} messages; "
                            "reading its tokens instead", task.lease_id, n)
        parsed.append(messages)
    return parsed


def judge_task(judge, task: ScoreTask, min_margin: float) -> Judgement:
    prompts = unflatten(task.prompt_tokens, task.prompt_lengths)
    responses = unflatten(task.response_tokens, task.response_lengths)
    conversations = parse_conversations(task) if len(task.conversations) == len(prompts) else None
    if hasattr(judge, "judge"):  # makes its own pairs (CAI)
        judgement = judge.judge(prompts, responses, task.samples_per_prompt, task.max_new_tokens, conversations)
    else:
        judgement = best_and_worst(judge.score(prompts, responses, conversations), task.samples_per_prompt, min_margin)
    if task.evaluation:  # live evaluation reads the scores alone: no pairs or revisions to send
        none = np.zeros(0, np.int32)
        return Judgement(judgement.scores, none, none, none)
    return judgement


def to_scores(judgement: Judgement, judge_id: str, incarnation: int, lease_id: int, seconds: float,
              stats: dict[str, float]) -> Scores:
    revisions = judgement.revisions or [None] * len(judgement.scores)
    lengths = np.asarray([-1 if r is None else len(r) for r in revisions], np.int32)
    tokens = np.concatenate([r for r in revisions if r is not None] or [np.zeros(0, np.int32)]).astype(np.int32)
    # The codec refuses non-finite floats: a counter that went NaN must not cost the whole answer.
    finite_stats = {name: float(value) for name, value in stats.items() if math.isfinite(value)}
    return Scores(judge_id, incarnation, lease_id, judgement.scores, judgement.pair_prompts, judgement.chosen,
                  judgement.rejected, tokens, lengths, seconds, finite_stats)


class JudgeActor:
    def __init__(self, cfg: Config, address: str, judge_id: str | None = None):
        self.cfg = cfg
        self.judge_id = judge_id or default_worker_id("judge")
        self.incarnation = time.time_ns()
        mark(cfg.run_dir, self.judge_id, "imported")
        self.judge = build_judge(cfg.judge, cfg.model.path,
                                 transcript_path=cfg.run_dir / "judges" / f"{self.judge_id}.jsonl", safety=cfg.safety)
        self.work = {"tasks": 0, "samples": 0, "pairs": 0, "busy_seconds": 0.0}
        self.failures_in_a_row = 0
        self.client = LearnerClient(address, security=cfg.security)
        self.heartbeat = HeartbeatThread(address, self.judge_id, self.incarnation, "judge",
                                         cfg.learner.heartbeat_s, cfg.learner.missed_beats, cfg.security)
        mark(cfg.run_dir, self.judge_id, "judge built")

    def close(self) -> None:
        """Release what the judge holds (a vLLM engine, a transcript file), so the process may leave at once."""
        close = getattr(self.judge, "close", None)  # rule and reward-model judges hold nothing to release
        if close is not None:
            close()

    def run(self) -> int:
        """Judge tasks until the learner says stop; returns how many were judged."""
        with self.heartbeat:  # beats for as long as this worker serves
            return self._serve()

    def _serve(self) -> int:
        timeout = self.cfg.judge.learner_timeout_s
        judged = 0
        request = WorkRequest(self.judge_id, self.incarnation, self.cfg.judge.kind)
        while True:
            reply = self._wait_for_work(request, timeout)
            if isinstance(reply, Shutdown):
                log.info("%s stopping: %s", self.judge_id, reply.reason)
                mark(self.cfg.run_dir, self.judge_id, "told to stop")
                return judged
            if not isinstance(reply, ScoreTask):
                log.warning("ignoring unexpected %s from the learner", type(reply).KIND)
                continue
            with working(self.heartbeat):  # the beats say how long this judgement has run
                answer = self.answer(reply)
            self.client.send(answer)
            judged += 1
            if judged == 1:
                mark(self.cfg.run_dir, self.judge_id, "first task judged")

    def answer(self, task: ScoreTask) -> Scores | JudgeFailed:
        """Judge one task. A task the judge fails on (after the engine's own retries) is given back
        as JudgeFailed, so the learner generates those prompts afresh instead of handing the same
        task to the next judge; several failures in a row mean this judge is broken, and it stops."""
        start = time.monotonic()
        try:
            judgement = judge_task(self.judge, task, self.cfg.judge.min_margin)
        except Exception as exc:  # noqa: BLE001 - reported to the learner, then re-raised if it keeps happening
            self.failures_in_a_row += 1
            log.exception("%s failed on lease %d (%d in a row)", self.judge_id, task.lease_id, self.failures_in_a_row)
            if self.failures_in_a_row > self.cfg.judge.max_failures_in_a_row:
                raise
            return JudgeFailed(self.judge_id, self.incarnation, task.lease_id, f"{type(exc).__name__}: {exc}")
        self.failures_in_a_row = 0
        seconds = time.monotonic() - start
        self.work["tasks"] += 1
        self.work["samples"] += len(judgement.scores)
        self.work["pairs"] += judgement.num_pairs
        self.work["busy_seconds"] += seconds
        return to_scores(judgement, self.judge_id, self.incarnation, task.lease_id, seconds, self.stats())

    def stats(self) -> dict[str, float]:
        """This judge's running counters, sent with every result: the learner logs them per judge."""
        kind_stats = self.judge.stats() if hasattr(self.judge, "stats") else {}
        return {**{k: float(v) for k, v in kind_stats.items()}, **self.work}

    def _wait_for_work(self, request: WorkRequest, timeout_s: float):
        """Park at the learner until it has work. Waiting is fine while heartbeats are answered by
        the same learner; if they stop, or a restarted learner answers them (it never saw this
        request), ask again."""
        self.client.send(request)
        asked = self.heartbeat.learner_incarnation
        while True:
            reply = self.client.receive(self.cfg.learner.heartbeat_s)
            if reply is not None:
                return reply
            restarted = asked != -1 and self.heartbeat.learner_incarnation not in (-1, asked)
            if restarted:
                self.client.reset()
                self.client.send(request)
                asked = self.heartbeat.learner_incarnation
            elif asked == -1:
                asked = self.heartbeat.learner_incarnation
            if self.heartbeat.learner_finished:  # its Shutdown may have gone to a socket given up on
                return Shutdown("training finished (the learner's heartbeat answers say so)")
            if not self.heartbeat.learner_alive:
                self.client.reset()
                try:
                    return request_patiently(self.client, request, timeout_s, heartbeat=self.heartbeat)
                except LearnerFinished:
                    return Shutdown("training finished (the learner's heartbeat answers say so)")
