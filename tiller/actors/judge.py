"""The judge actor: take a scoring task from the learner, score it, return scores and pairs.

    tiller judge --config configs/demo.yaml --learner tcp://127.0.0.1:5555

Pull-based: the judge asks for work when it is free, so a fast judge simply takes more
tasks than a slow one, and a judge that joins mid-run starts taking work at once.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from tiller.actors.judges import JudgeKind, build_judge, pick_pairs
from tiller.actors.worker import HeartbeatThread, default_worker_id, request_patiently
from tiller.config import Config
from tiller.protocol.messages import Scores, ScoreTask, Shutdown, WorkRequest, unflatten
from tiller.protocol.transport import LearnerClient

log = logging.getLogger(__name__)


def judge_task(judge: JudgeKind, task: ScoreTask, min_margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prompts = unflatten(task.prompt_tokens, task.prompt_lengths)
    responses = unflatten(task.response_tokens, task.response_lengths)
    scores = judge.score(prompts, responses)
    chosen, rejected = pick_pairs(scores, task.samples_per_prompt, min_margin)
    return scores, chosen, rejected


class JudgeActor:
    def __init__(self, cfg: Config, address: str, judge_id: str | None = None):
        self.cfg = cfg
        self.judge_id = judge_id or default_worker_id("judge")
        self.incarnation = time.time_ns()
        self.judge = build_judge(cfg.judge, cfg.model.path)
        self.client = LearnerClient(address, security=cfg.security)
        self.heartbeat = HeartbeatThread(address, self.judge_id, self.incarnation, "judge",
                                         cfg.learner.heartbeat_s, cfg.learner.missed_beats, cfg.security)

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
                return judged
            if not isinstance(reply, ScoreTask):
                log.warning("ignoring unexpected %s from the learner", type(reply).KIND)
                continue
            start = time.monotonic()
            scores, chosen, rejected = judge_task(self.judge, reply, self.cfg.judge.min_margin)
            self.client.send(Scores(self.judge_id, self.incarnation, reply.lease_id, scores, chosen, rejected,
                                    time.monotonic() - start))
            judged += 1

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
            if not self.heartbeat.learner_alive:
                self.client.reset()
                return request_patiently(self.client, request, timeout_s)
