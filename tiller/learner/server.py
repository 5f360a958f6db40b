"""The learner's socket thread: serves actors, judges and weight fetches beside the training loop.

The training loop never touches a socket. It talks to this thread through queues: `scored`
(judged prompts out, bounded by the coordinator's credits), `eval_answers` (live evaluation's
judged answers, bounded: see `open_eval`) and `_commands` (publish a version, release stale prompts,
mark consumption, open an eval round, shut down). Everything the coordinator owns is touched only from
this thread.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Any

from tiller.config import SecurityConfig
from tiller.learner.coordinator import Coordinator
from tiller.learner.eval_book import EvalAnswers, Reference
from tiller.learner.judge_metrics import JudgeBook
from tiller.learner.peers import PeerBook
from tiller.learner.weight_shelf import WeightShelf, WeightSnapshot
from tiller.protocol.messages import (
    Heartbeat, HeartbeatAck, JudgeFailed, Lease, LeaseRequest, ModelCard, ModelRequest, Rollout, Scores, Shutdown,
    Status, StatusRequest, Wait, WeightsBucket, WeightsGone, WeightsRequest, WorkerExited, WorkRequest,
)
from tiller.protocol.logbudget import LogBudget
from tiller.protocol.transport import RouterEndpoint

log = logging.getLogger(__name__)


# A peer part-way through a version's buckets that has not asked for the next one in this long is taken
# for gone (an actor asks again at once, or after loading the previous bucket: seconds): its version's
# buffers are no longer held for it.
READER_IDLE_S = 60.0


class LearnerServer:
    def __init__(self, coordinator: Coordinator, address: str, heartbeat_s: float = 2.0, missed_beats: int = 5,
                 security: SecurityConfig = SecurityConfig(), max_superseded: int = 2,
                 stuck_after_s: float | None = None):
        self.coordinator = coordinator
        self.model_card: ModelCard | None = None  # what the published weights fit (set before start)
        self.require_registration = security.require_registration
        self.stuck_after_s = stuck_after_s  # None: a worker is never declared stuck
        self.stuck_peers: set[str] = set()  # "name#incarnation" of workers declared stuck (each restarts anew)
        self.workers_exited = 0  # WorkerExited notices from `tiller run`
        self.unregistered_refused = 0  # status, model and weight requests refused to unregistered sockets
        self._logs = LogBudget()
        self.peers = PeerBook(heartbeat_s * missed_beats, self._logs)
        self.endpoint = RouterEndpoint(address, security=security)
        self.address = self.endpoint.address
        self.scored: queue.Queue = queue.Queue()
        # at most two rounds' answers, one item per eval lease: the loop drains it every step and opens one
        # round at a time, so it never fills; if it did, answers are dropped (counted), never waited for
        evals = coordinator.evals
        self.eval_answers: queue.Queue = queue.Queue(maxsize=2 * len(evals.prompts) if evals is not None else 1)
        self.eval_answers_dropped = 0
        self._commands: queue.Queue = queue.Queue()
        # the published versions, and who is part-way through which (max_superseded: see weight_shelf.py)
        self.weights = WeightShelf(max_superseded, self._logs)
        self._parked_judges: list[bytes] = []
        self._told_to_stop: set[bytes] = set()
        self._stop_deadline: float | None = None
        self.judge_work: dict[str, int] = {}  # judge name -> leases scored
        self.judges = JudgeBook()  # read by the training loop too (it locks)
        self.actor_work: dict[str, int] = {}
        self.handler_errors = 0  # exceptions while handling a decoded message: logged, survived
        self._public: dict = {}
        self.progress: dict = {}  # the training loop's latest step, for `tiller status`
        self._publish_public()
        self._thread = threading.Thread(target=self._loop, name="tiller-learner-server", daemon=True)
        self.failure: BaseException | None = None

    # ------------------------------------------------------------- called by the training loop

    def start(self) -> None:
        self._thread.start()

    def publish(self, snapshot: WeightSnapshot) -> None:
        self._commands.put(("publish", snapshot))

    def release(self, prompt_ids: list[int]) -> None:
        """Stale samples: their prompts are leased again (the learner never trains on them)."""
        self._commands.put(("release", prompt_ids))

    def consumed(self, prompt_ids: list[int]) -> None:
        self._commands.put(("consumed", prompt_ids))

    def open_eval(self, round_id: int, reference: Reference | None) -> None:
        """Start live-eval round `round_id` (after every earlier command: a publish before it is the version
        its leases ask for); the open one, if any, is forgotten."""
        self._commands.put(("eval", (round_id, reference)))

    def coordinator_state(self, timeout_s: float = 30.0) -> dict:
        """The coordinator's data position, taken in this thread after every earlier command."""
        reply: queue.Queue = queue.Queue()
        self._commands.put(("snapshot", reply))
        return reply.get(timeout=timeout_s)

    def close(self) -> None:
        """Stop serving without telling workers anything (pre-emption: they wait and reconnect)."""
        self._commands.put(("close", 0.0))
        self._join(10)

    def shutdown(self, grace_s: float) -> None:
        """Tell every worker to stop as it next calls in; return once all heard it or after grace_s."""
        self.begin_shutdown(grace_s)
        self.wait_stopped(grace_s)

    def begin_shutdown(self, grace_s: float) -> None:
        """`shutdown` without the wait: the socket thread tells the workers while the caller goes on
        (saving, plotting); `wait_stopped` joins it."""
        self._commands.put(("shutdown", grace_s))

    def wait_stopped(self, grace_s: float) -> None:
        self._join(grace_s + 5)

    def _join(self, timeout_s: float) -> None:
        # The socket thread closes its own socket as it ends (a ZeroMQ socket belongs to one thread);
        # if it does not end in time it is left to die with the process, never closed from here.
        if not self._thread.is_alive() and not self._thread.ident:
            self.endpoint.close()  # never started
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the learner's socket thread did not stop within %.0f s; leaving it to the process exit",
                        timeout_s)

    @property
    def public(self) -> dict:
        """What the training loop may read of the coordinator: a snapshot the socket thread replaces
        whole (never a dict it is changing), at most 50 ms old."""
        return self._public

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------- the thread

    def _loop(self) -> None:
        try:
            last_expiry = last_public = 0.0
            while not self._finished():
                if self.endpoint.poll(10):
                    self._receive_all()
                self._run_commands()
                if time.monotonic() - last_public > 0.05:
                    last_public = time.monotonic()
                    self._publish_public()
                if time.monotonic() - last_expiry > 0.5:
                    last_expiry = time.monotonic()
                    self._bury_silent_peers()
                    self.weights.forget_idle(READER_IDLE_S)
                    self._note_failed_handshakes()
                    for lease_id in self.coordinator.expire():
                        log.warning("lease %d expired; its prompts will be leased again", lease_id)
                self._dispatch_judges()
        except BaseException as exc:  # surfaced to the training loop, which stops the run
            self.failure = exc
            log.exception("learner server thread failed")
        finally:
            self._publish_public()
            self.endpoint.close()

    def _publish_public(self) -> None:
        c = self.coordinator
        stats = self.endpoint.stats
        self._public = {
            "counters": dataclasses.asdict(c.counters),
            "phases": dataclasses.asdict(c.phases),
            "queues": {"awaiting_judges": c.awaiting_judges, "inflight_prompts": c.inflight_prompts,
                       "generating": c.generating},
            "actor_versions": dict(c.actor_versions),
            "refusals": dict(c.problems),
            "protocol": {"rejected": stats.rejected, "handshakes_failed": stats.handshakes_failed,
                         "send_dropped": stats.send_dropped, "unroutable": stats.unroutable,
                         "weight_readers_cut": self.readers_cut, "superseded_held": len(self._finishing),
                         "unregistered_refused": self.unregistered_refused,
                         "workers_stuck": len(self.stuck_peers), "workers_exited": self.workers_exited,
                         "handler_errors": self.handler_errors, "peers_refused": self.peers.refused,
                         "impersonations": self.peers.impersonations},
            "dead_peers": list(self.peers.dead),
            "eval": {**(dataclasses.asdict(c.evals.counters) if c.evals is not None else {}),
                     "answers_dropped": self.eval_answers_dropped},
        }

    def _finished(self) -> bool:
        if self._stop_deadline is None:
            return False
        # heartbeat sockets never hear Shutdown (their threads stop with their worker)
        everyone_told = set(self.peers.identities) <= self._told_to_stop
        return everyone_told or time.monotonic() > self._stop_deadline

    def _receive_all(self) -> None:
        for _ in range(1000):  # bounded burst, then serve commands again
            if not self.endpoint.poll(0):
                return
            received = self.endpoint.recv()
            if received is None:
                continue
            try:
                self._handle(*received)
            except Exception:  # the frame boundary: whatever a peer sent, this thread keeps serving
                self.handler_errors += 1
                if self._logs.allow("handler error"):
                    log.exception("error while handling %s from peer %s%s", type(received[1]).KIND,
                                  received[0].hex(), self._logs.note("handler error"))

    def _bury_silent_peers(self) -> None:
        """Peers silent for `missed_beats` heartbeats are dead: their work goes to others at once."""
        for peer, identities in self.peers.bury_silent():
            released = self.coordinator.peer_died(peer)
            if released or self._logs.allow("declared dead"):  # one that held work is always worth a line
                log.warning("%s missed its heartbeats: declared dead (%d leases handed on)%s", peer, released,
                            self._logs.note("declared dead"))
            self._parked_judges = [i for i in self._parked_judges if i not in identities]

    def _note_failed_handshakes(self) -> None:
        failed = self.endpoint.failed_handshakes()
        if failed and self._logs.allow("handshake"):
            log.warning("%d connection attempt(s) failed the CURVE handshake (plaintext client or wrong server "
                        "key; %d in all)%s", failed, self.endpoint.stats.handshakes_failed,
                        self._logs.note("handshake"))

    def _log_refusal(self, what: str, sender: str, refused_before: int) -> None:
        if self.coordinator.refused > refused_before and self._logs.allow("refused"):
            log.warning("refused %s from %s: %s%s", what, sender[:80], self.coordinator.last_problem,
                        self._logs.note("refused"))

    def _handle(self, identity: bytes, message: Any) -> None:
        c = self.coordinator
        # the worker a message speaks for (heartbeats, actor and judge messages; weight fetches name none)
        worker = next((getattr(message, f) for f in ("worker_id", "actor_id", "judge_id") if hasattr(message, f)), None)
        if worker is not None and not self.peers.key_owns(worker, self.endpoint.sender_key):
            return
        if isinstance(message, WorkerExited):  # names a worker, not an incarnation: every one of it is gone
            self._worker_exited(message)
            return
        sender = f"{worker}#{message.incarnation}" if worker is not None else ""
        if isinstance(message, Heartbeat):
            if self.peers.seen(sender):
                stuck = self._stuck(sender, message.working_s)
                self.endpoint.send(identity, HeartbeatAck(c.version, c.incarnation, c.done, stuck))
            return
        if sender and not self.peers.seen(sender):
            if isinstance(message, LeaseRequest):  # an honest actor among a flood of names backs off and asks again
                self._reply(identity, Wait("the learner is tracking too many peers", 1.0, c.version, c.incarnation))
            return
        refused_before = c.refused
        if isinstance(message, LeaseRequest):
            if not self.peers.register(identity, sender):
                return
            reply = c.on_lease_request(message)
            if not self._reply(identity, reply) and isinstance(reply, Lease):
                c.cancel_lease(reply.lease_id)  # the asker is gone: its prompts go to the next actor now
        elif isinstance(message, Rollout):
            if c.on_rollout(message):
                self.actor_work[message.actor_id] = self.actor_work.get(message.actor_id, 0) + 1
            self._log_refusal("a rollout", sender, refused_before)
        elif isinstance(message, WorkRequest):
            if not self.peers.register(identity, sender):
                return
            refusal = c.judge_refusal(message.judge_kind)
            if c.done:
                self._reply(identity, Shutdown("training finished"))
            elif refusal is not None:
                log.warning("refusing %s: %s", message.judge_id[:80], refusal)
                self._reply(identity, Shutdown(refusal))
            elif identity not in self._parked_judges:
                self._parked_judges.append(identity)
        elif isinstance(message, Scores):
            scored = c.on_scores(message)
            self._log_refusal("scores", sender, refused_before)
            if isinstance(scored, EvalAnswers):
                self._eval_answered(message.judge_id, scored)
            elif scored is not None:
                self.judge_work[message.judge_id] = self.judge_work.get(message.judge_id, 0) + 1
                self.judges.record(message.judge_id, message.incarnation, len(scored), len(message.scores),
                                   sum(len(item.pairs) for item in scored), message.judge_seconds, message.stats)
                for item in scored:
                    self.scored.put(item)
        elif isinstance(message, JudgeFailed):
            if c.on_judge_failed(message):
                log.warning("%s gave up on lease %d (%s); its prompts will be generated again",
                            message.judge_id, message.lease_id, message.reason[:200])
            self._log_refusal("a judge failure", sender, refused_before)
        elif isinstance(message, (WeightsRequest, ModelRequest, StatusRequest)) and self._unregistered(identity):
            self.unregistered_refused += 1
            self._reply(identity, Wait("this learner serves weights and status to registered workers only "
                                       "(security.require_registration)", 1.0, c.version, c.incarnation))
        elif isinstance(message, WeightsRequest):
            self._serve_weights(identity, message)
        elif isinstance(message, ModelRequest):
            card = self.model_card
            self._reply(identity, card if card is not None else Wait("this learner announces no model card", 1.0,
                                                                       c.version, c.incarnation))
        elif isinstance(message, StatusRequest):
            self._reply(identity, self._status())
        else:
            self.endpoint.stats.reject(f"unexpected message kind {type(message).KIND}")
            if self._logs.allow("unexpected kind"):
                log.warning("peer %s sent %s, which only the learner sends%s", identity.hex(), type(message).KIND,
                            self._logs.note("unexpected kind"))

    def _eval_answered(self, judge: str, answers: EvalAnswers) -> None:
        self.judge_work[judge] = self.judge_work.get(judge, 0) + 1
        try:
            self.eval_answers.put_nowait(answers)
        except queue.Full:
            self.eval_answers_dropped += len(answers.answers)
            if self._logs.allow("eval answers dropped"):
                log.warning("live-eval answers dropped: the training loop has not collected them%s",
                            self._logs.note("eval answers dropped"))

    def _stuck(self, peer: str, working_s: float) -> bool:
        """A worker whose current work has run past `stuck_after_s` is stuck (alive is not making progress):
        its leases and judge tasks go to others now. True when it must be told (it then exits)."""
        if not self.stuck_after_s or working_s <= self.stuck_after_s:
            return False
        if peer not in self.stuck_peers:
            self.stuck_peers.add(peer)
            handed_on = self.coordinator.peer_died(peer)
            log.warning("%s has worked on one piece of work for %.0f s (learner.stuck_after_s %.0f): declared stuck, "
                        "%d leases or tasks handed on; it is told to exit", peer[:80], working_s, self.stuck_after_s,
                        handed_on)
        return True

    def _worker_exited(self, message: WorkerExited) -> None:
        """`tiller run` saw this worker's process end: whatever it held goes out again now."""
        peers = {name for name in self.peers.identities.values() if name.rsplit("#", 1)[0] == message.worker_id}
        peers |= {name for name in self.coordinator.actor_versions if name.rsplit("#", 1)[0] == message.worker_id}
        handed_on = sum(self.coordinator.peer_died(peer) for peer in peers)
        self._parked_judges = [i for i in self._parked_judges if self.peers.identities.get(i) not in peers]
        for identity in [i for i, name in self.peers.identities.items() if name in peers]:
            del self.peers.identities[identity]  # a shutdown does not wait to tell a process that is gone
        self.workers_exited += 1
        log.warning("%s exited (code %d): %d leases or tasks handed on at once", message.worker_id[:80],
                    message.exit_code, handed_on)

    def _unregistered(self, identity: bytes) -> bool:
        """Under security.require_registration: a socket that never asked for work as an actor or judge."""
        return self.require_registration and identity not in self.peers.identities

    def _reply(self, identity: bytes, message: Any) -> bool:
        sent = self.endpoint.send(identity, message)
        if isinstance(message, Shutdown):
            self._told_to_stop.add(identity)
        return sent

    def _serve_weights(self, identity: bytes, request: WeightsRequest) -> None:
        incarnation = self.coordinator.incarnation
        snap = self.weights.lookup(identity, request, incarnation)
        if snap is None:
            latest = self.weights.latest
            self._reply(identity, WeightsGone(latest.version if latest else -1, incarnation))
            return
        names, tensors = snap.buckets[request.bucket]
        pieces = snap.pieces[request.bucket] if snap.pieces else []
        self.endpoint.send(identity, WeightsBucket(snap.version, request.bucket, len(snap.buckets), names, tensors,
                                                   incarnation, pieces), trackers=snap.trackers)
        self.weights.sent(identity, snap, request.bucket)

    @property
    def _snapshot(self) -> WeightSnapshot | None:  # the newest version (tests read it)
        return self.weights.latest

    @property
    def _finishing(self) -> dict[int, WeightSnapshot]:
        return self.weights.finishing

    @property
    def readers_cut(self) -> int:
        return self.weights.readers_cut

    def _status(self) -> Status:
        c = self.coordinator
        progress = self.progress  # set by the training loop after each step (one assignment: no lock needed)
        versions = {name.rsplit("#", 1)[0]: v for name, v in c.actor_versions.items()}  # keys: "name#incarnation"
        actors = sorted(set(versions) | set(self.actor_work))
        held = c.leases_by_actor()
        judges = sorted(self.judge_work)
        counters = {k: float(v) for k, v in dataclasses.asdict(c.counters).items()}
        return Status(c.incarnation, c.version, int(progress.get("step", 0)), int(progress.get("steps", 0)),
                      float(progress.get("perf/samples_per_s", 0.0)), float(progress.get("reward/mean", 0.0)),
                      c.inflight_prompts, c.awaiting_judges, actors, [versions.get(a, -1) for a in actors],
                      [held.get(a, 0) for a in actors], [self.actor_work.get(a, 0) for a in actors], judges,
                      [self.judge_work[j] for j in judges], counters)

    def _dispatch_judges(self) -> None:
        while self._parked_judges:
            identity = self._parked_judges[0]
            task = self.coordinator.next_score_task(self.peers.identities[identity])
            if task is None:
                return
            self._parked_judges.pop(0)
            if not self._reply(identity, task):
                self.coordinator.requeue_score(task.lease_id)  # that judge is gone: the next one gets it

    def _run_commands(self) -> None:
        while True:
            try:
                command, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if command == "publish":
                self.weights.publish(arg)
                self.coordinator.publish(arg.version)
            elif command == "release":
                self.coordinator.release(arg)
                self.coordinator.consumed(arg)
            elif command == "snapshot":
                arg.put(self.coordinator.state_dict())
            elif command == "close":
                self._stop_deadline = time.monotonic()
            elif command == "consumed":
                self.coordinator.consumed(arg)
            elif command == "eval":
                self.coordinator.evals.open(*arg)
            elif command == "shutdown":
                self.coordinator.done = True
                self._stop_deadline = time.monotonic() + arg
                for identity in self._parked_judges:
                    self._reply(identity, Shutdown("training finished"))
                self._parked_judges.clear()
