"""The rollout actor: lease prompts, sample k responses each with vLLM, send them back.

    tiller actor --config configs/demo.yaml --learner tcp://127.0.0.1:5555

Stateless: on start (and whenever the learner announces a newer version in a reply) it
streams the learner's current weights into the running engine bucket by bucket (weight_stream.py),
between generation batches, never mid-sequence.

    tiller actor --config configs/demo.yaml --stay    # serve one learner after another, engine kept warm

With `--stay` it outlives the learner: before each learner, and once told that training finished
(or once the learner is gone), it asks the same address four times a second until a learner other
than the last one answers, then serves that one, starting with its weights. Starting vLLM is most
of a run's start-up (14-18 s on the 2-core CPU machine, far more with CUDA graphs on a GPU); a warm
actor spends it once for many runs.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from tiller.actors.engine import VLLMEngine
from tiller.actors.model_check import LocalModel, mismatch
from tiller.actors.weight_stream import WeightStream
from tiller.actors.worker import (
    HeartbeatThread, LearnerFinished, LearnerGone, default_worker_id, request_patiently, working,
)
from tiller.config import Config
from tiller.protocol.messages import (
    Lease, LeaseRequest, ModelCard, ModelRequest, Rollout, Shutdown, Status, StatusRequest, Wait, unflatten,
)
from tiller.protocol.transport import LearnerClient
from tiller.timeline import mark

log = logging.getLogger(__name__)


class WeightsDoNotFit(RuntimeError):
    """The learner's weights could not be loaded into this actor's engine (another model?)."""


class RolloutActor:
    # a version superseded part-way is followed by a whole one; a learner restarting over and over is not
    MAX_STREAMS = 5
    PROBE_S = 0.25  # a warm actor between runs asks for the next learner this often (a status request: cheap)

    def __init__(self, cfg: Config, address: str, actor_id: str | None = None):
        self.cfg = cfg
        self.actor_id = actor_id or default_worker_id("actor")
        self.incarnation = time.time_ns()  # tells this start's work from a previous one's
        self.client = LearnerClient(address, security=cfg.security)
        mark(cfg.run_dir, self.actor_id, "imported")
        self.engine = VLLMEngine(cfg.model.path, cfg.rollout, seed=cfg.seed + os.getpid())
        mark(cfg.run_dir, self.actor_id, "engine built")
        # The first generate call of a fresh engine is slower; pay it before taking a lease, so the
        # first lease is not late and its samples are not stale.
        self.engine.generate([np.array(self.engine.eos_ids[:1] or [0], np.int32)], 2, 4)
        mark(cfg.run_dir, self.actor_id, "warmed up")
        self.version = -1  # weights on disk are not a published version: fetch before generating
        self.local_model: LocalModel | None = LocalModel.of(self.engine.model_dir, self.engine.eos_ids,
                                                            cfg.rollout.max_model_len)
        self.card: ModelCard | None = None  # the model the learner below trains, as it announced it
        self.card_learner = -1  # the learner incarnation that card came from
        self.learner_incarnation = -1
        self.seq = 0
        # where time went since the last rollout, reported with the next one (the learner's phase metrics)
        self.load_seconds = 0.0  # fetching and loading weights
        self.idle_seconds = 0.0  # asking for work and waiting for it
        self.heartbeat = HeartbeatThread(address, self.actor_id, self.incarnation, "actor",
                                         cfg.learner.heartbeat_s, cfg.learner.missed_beats, cfg.security)

    def check_model(self, learner: int) -> None:
        """Ask learner incarnation `learner` which model it trains, and refuse its weights (WeightsDoNotFit)
        unless they fit this engine's model (model_check.py). Once per learner incarnation."""
        card = request_patiently(self.client, ModelRequest(learner), self.cfg.rollout.learner_timeout_s,
                                 heartbeat=self.heartbeat)
        if not isinstance(card, ModelCard):  # a learner that announces no model (a test's bare server)
            log.warning("%s: the learner announced no model card (%s); its model is not checked", self.actor_id,
                        type(card).KIND)
            card = None
        elif self.local_model is not None and (problem := mismatch(card, self.local_model)) is not None:
            raise WeightsDoNotFit(problem)
        self.card, self.card_learner = card, learner

    def sync(self, learner: int, version: int) -> None:
        """Load `version` (or whatever superseded it before its first bucket came) into the engine."""
        start = time.monotonic()
        first = self.learner_incarnation < 0
        self.version = -1  # the engine holds no one published version until a stream completes
        for _ in range(self.MAX_STREAMS):
            if learner != self.card_learner:  # a new learner (or a restarted one) may train another model
                self.check_model(learner)
            stream = WeightStream(self.client, learner, version, self.cfg.rollout.learner_timeout_s, self.heartbeat)
            try:
                with working(self.heartbeat):
                    loaded = self.engine.load_weights(stream)
            except Exception as exc:  # vLLM refused a name or a shape: nothing to retry
                raise WeightsDoNotFit(f"the learner's weights do not fit this actor's engine (model.path "
                                      f"{self.cfg.model.path}): {type(exc).__name__}: {exc}") from exc
            if stream.failure is not None:
                raise stream.failure
            self._check_count(stream, loaded)
            learner, version = stream.learner, stream.version
            if stream.complete:
                break
            log.info("%s: policy version superseded part-way through loading; loading version %d whole",
                     self.actor_id, version)
        else:
            raise LearnerGone(f"no policy version could be loaded whole in {self.MAX_STREAMS} tries")
        if first:
            mark(self.cfg.run_dir, self.actor_id, "first weights loaded")
        self.learner_incarnation, self.version = learner, version
        self.load_seconds += time.monotonic() - start
        log.info("%s loaded policy version %d in %.2f s", self.actor_id, version, time.monotonic() - start)

    def _check_count(self, stream: WeightStream, loaded: int | None) -> None:
        """A complete stream must have been taken whole: every tensor the learner announced, every one given."""
        if not stream.complete or loaded is None:
            return
        announced = len(self.card.names) if self.card is not None and stream.learner == self.card_learner else None
        if loaded != stream.tensors or announced not in (None, stream.tensors):
            raise WeightsDoNotFit(f"the engine took {loaded} of the {stream.tensors} tensors sent"
                                  f"{f' ({announced} announced)' if announced is not None else ''} for policy "
                                  f"version {stream.version} (model.path {self.cfg.model.path})")

    def run(self, stay: bool = False) -> int:
        """Serve leases until the learner says stop; returns the number of rollouts sent. With `stay`,
        serve one learner after another instead, the engine kept warm, until the process is stopped."""
        with self.heartbeat:  # beats for as long as this worker serves
            if not stay:
                return self._serve()
            sent, finished = 0, -1  # no learner has finished yet: any will do
            while True:
                finished = self._next_learner(finished)
                self._await_beat(finished)
                try:
                    sent += self._serve()
                except LearnerGone as exc:  # it died: the next one (a restart, a new run) is served as well
                    log.warning("%s: %s", self.actor_id, exc)

    def _await_beat(self, learner: int) -> None:
        """Until the heartbeats hear learner `learner` (one beat): their last answer came from the learner that
        finished, and says so, which would end this actor's first request to the new one at once."""
        deadline = time.monotonic() + 5 * self.cfg.learner.heartbeat_s
        while self.heartbeat.learner_incarnation != learner and time.monotonic() < deadline:
            time.sleep(0.05)

    def _next_learner(self, finished: int) -> int:
        """Wait for a learner other than incarnation `finished` to answer, and return its incarnation.
        Asks with status requests, every PROBE_S: a lease asked for before a learner listens may be
        answered to a socket given up by then, and lost until it expires."""
        print(f"{self.actor_id}: engine warm; waiting for a learner at {self.client.address}", flush=True)
        while True:
            asked = time.monotonic()
            reply = self.client.request(StatusRequest(self.actor_id), timeout_s=self.PROBE_S)
            # a Wait: a learner that serves status to registered workers only (security.require_registration)
            if isinstance(reply, (Status, Wait)) and reply.learner_incarnation != finished:
                log.info("%s: learner %d answers; serving it", self.actor_id, reply.learner_incarnation)
                return reply.learner_incarnation
            time.sleep(max(0.0, self.PROBE_S - (time.monotonic() - asked)))

    def _serve(self) -> int:
        timeout = self.cfg.rollout.learner_timeout_s
        sent = 0
        while True:
            asked = time.monotonic()
            try:
                reply = request_patiently(self.client, LeaseRequest(self.actor_id, self.incarnation, self.version),
                                          timeout, heartbeat=self.heartbeat)
                self.idle_seconds += time.monotonic() - asked
                if isinstance(reply, (Lease, Wait)) and (
                        (reply.learner_incarnation, reply.latest_version) != (self.learner_incarnation, self.version)):
                    self.sync(reply.learner_incarnation, reply.latest_version)  # between batches, never mid-sequence
            except LearnerFinished as exc:  # its Shutdown went to a request given up on: the heartbeats said it
                log.info("%s stopping: %s", self.actor_id, exc)
                mark(self.cfg.run_dir, self.actor_id, "told to stop")
                return sent
            if isinstance(reply, Shutdown):
                log.info("%s stopping: %s", self.actor_id, reply.reason)
                mark(self.cfg.run_dir, self.actor_id, "told to stop")
                return sent
            if isinstance(reply, Wait):
                time.sleep(reply.retry_after_s)
                self.idle_seconds += reply.retry_after_s
                continue
            if isinstance(reply, Lease):
                with working(self.heartbeat):  # the beats say how long this generation has run
                    rollout = self.rollout_for(reply)
                self.client.send(rollout)
                sent += 1
                if sent == 1:
                    mark(self.cfg.run_dir, self.actor_id, "first rollout sent")

    def rollout_for(self, lease: Lease) -> Rollout:
        prompts = unflatten(lease.prompt_tokens, lease.prompt_lengths)
        # live evaluation: what the policy most wants to say, one answer a prompt, whatever else the lease holds
        k, temperature, top_p = (1, 0.0, 1.0) if lease.evaluation else (
            lease.samples_per_prompt, lease.temperature, lease.top_p)
        gen = self.engine.generate(prompts, k, lease.max_new_tokens, temperature, top_p, seed=lease.seed)
        self.seq += 1
        load, idle, self.load_seconds, self.idle_seconds = self.load_seconds, self.idle_seconds, 0.0, 0.0
        return Rollout(self.actor_id, self.incarnation, lease.lease_id, self.seq, self.version,
                       gen.tokens, gen.lengths, gen.logprobs, gen.truncated, gen.seconds, load, idle)
