"""What rollout and judge actors share: names, heartbeats, and patient requests to the learner.

A worker outlives a learner restart: a request that gets no answer is sent again with
back-off (on a fresh socket) until the learner has been silent for `learner_timeout_s`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from tiller.config import SecurityConfig
from tiller.protocol.messages import Heartbeat, HeartbeatAck
from tiller.protocol.transport import LearnerClient

log = logging.getLogger(__name__)


class LearnerGone(RuntimeError):
    """The learner did not answer in time (it finished, died, or is unreachable)."""


class LearnerFinished(LearnerGone):
    """The learner's heartbeat answers say training is over: this worker has nothing left to do."""


def default_worker_id(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


def request_patiently(client: LearnerClient, message: Any, give_up_s: float, first_wait_s: float = 5.0,
                      heartbeat: "HeartbeatThread | None" = None) -> Any:
    """Send `message` until a reply comes; wait 5 s, then 10, 20, ... (capped at 60) between tries.

    With the worker's `heartbeat` thread, a wait does not outlast what the heartbeats learn: when a
    different learner answers them (a restart: it never saw this request) the request is sent to it at once,
    instead of after the rest of a wait that may be 30 s; when they say training finished, LearnerFinished."""
    deadline = time.monotonic() + give_up_s
    wait = first_wait_s
    while (remaining := deadline - time.monotonic()) > 0:
        seen = heartbeat.learner_incarnation if heartbeat is not None else None
        # -1: no beat answered yet; the first answer is news of no restart, so it cuts nothing short
        restarted = (lambda: seen != -1 and heartbeat.learner_incarnation != seen) if heartbeat is not None else None
        changed = None if heartbeat is None else (lambda: heartbeat.learner_finished or restarted())
        reply = client.request(message, min(wait, remaining), interrupt=changed)
        if reply is not None:
            return reply
        if heartbeat is not None and heartbeat.learner_finished:
            raise LearnerFinished(f"training finished (the heartbeat answers of the learner at {client.address} "
                                  "say so)")
        if heartbeat is not None and restarted():
            log.info("learner %d answers at %s now; asking it at once", heartbeat.learner_incarnation, client.address)
            continue
        log.warning("no answer from the learner at %s for %.0f s; asking again", client.address, wait)
        wait = min(wait * 2, 60.0)
    raise LearnerGone(f"the learner at {client.address} was silent for {give_up_s:.0f} s")


STUCK_EXIT_CODE = 75  # a worker the learner declared stuck ends itself with this code; `tiller run` restarts it


def working(heartbeat: "HeartbeatThread | None"):
    """`with working(self.heartbeat): ...` around a piece of work, so that the beats report how long it runs."""
    return heartbeat.working() if isinstance(heartbeat, HeartbeatThread) else contextlib.nullcontext()


class HeartbeatThread(threading.Thread):
    """Beats every `interval_s` on a socket of its own; notices when the learner stops answering, and reports
    how long the worker's current piece of work has run (`working()`). A daemon thread beats on while the
    main thread hangs (a stuck vLLM call), so the learner judges progress by that age, not by the beats: once
    it declares this worker stuck and has handed its work on, the thread ends the process (STUCK_EXIT_CODE),
    because a hung main thread never would; a supervisor restarts it."""

    def __init__(self, address: str, worker_id: str, incarnation: int, role: str, interval_s: float,
                 missed_beats: int, security: SecurityConfig = SecurityConfig()):
        super().__init__(name=f"tiller-heartbeat-{worker_id}", daemon=True)
        self.address, self.security = address, security
        self.worker_id, self.incarnation, self.role = worker_id, incarnation, role
        self.busy_since: float | None = None  # monotonic start of the work in hand, None when it holds none
        self.interval_s, self.missed_beats = interval_s, missed_beats
        self.learner_alive = True
        self.latest_version = -1
        self.learner_incarnation = -1  # of the learner that answered the last beat
        self.learner_finished = False  # that learner said training is over
        self._stop_event = threading.Event()

    def run(self) -> None:
        client = LearnerClient(self.address, security=self.security)  # zmq sockets are not thread-safe: this one is ours alone
        missed = 0
        try:
            while not self._stop_event.wait(self.interval_s):
                reply = client.request(self.beat(), self.interval_s)
                if isinstance(reply, HeartbeatAck) and reply.stuck:
                    self._end_stuck()
                if isinstance(reply, HeartbeatAck):
                    if not self.learner_alive:
                        log.info("the learner at %s answers again", self.address)
                    missed, self.learner_alive, self.latest_version = 0, True, reply.latest_version
                    self.learner_incarnation = reply.learner_incarnation
                    self.learner_finished = reply.training_finished
                    continue
                missed += 1
                if missed == self.missed_beats:
                    self.learner_alive = False
                    log.warning("the learner at %s missed %d heartbeats", self.address, missed)
        finally:
            client.close()

    def beat(self) -> Heartbeat:
        busy_since = self.busy_since  # one read: the main thread may clear it meanwhile
        return Heartbeat(self.worker_id, self.incarnation, self.role,
                         0.0 if busy_since is None else time.monotonic() - busy_since)

    @contextlib.contextmanager
    def working(self):
        self.busy_since = time.monotonic()
        try:
            yield
        finally:
            self.busy_since = None

    def _end_stuck(self) -> None:
        busy_since = self.busy_since
        ran = 0.0 if busy_since is None else time.monotonic() - busy_since
        message = (f"{self.worker_id}: the learner declared this worker stuck (its current work has run {ran:.0f} s) "
                   f"and handed its work to others; exiting with code {STUCK_EXIT_CODE} to be restarted")
        log.error(message)
        print(message, file=sys.stderr, flush=True)
        os._exit(STUCK_EXIT_CODE)  # the main thread is hung: nothing else would end this process

    def stop(self) -> None:
        self._stop_event.set()

    def __enter__(self) -> "HeartbeatThread":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
