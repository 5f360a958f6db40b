"""What rollout and judge actors share: names, heartbeats, and patient requests to the learner.

A worker outlives a learner restart: a request that gets no answer is sent again with
back-off (on a fresh socket) until the learner has been silent for `learner_timeout_s`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from tiller.config import SecurityConfig
from tiller.protocol.messages import Heartbeat, HeartbeatAck
from tiller.protocol.transport import LearnerClient

log = logging.getLogger(__name__)


class LearnerGone(RuntimeError):
    """The learner did not answer in time (it finished, died, or is unreachable)."""


def default_worker_id(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


def request_patiently(client: LearnerClient, message: Any, give_up_s: float, first_wait_s: float = 5.0) -> Any:
    """Send `message` until a reply comes; wait 5 s, then 10, 20, ... (capped at 60) between tries."""
    deadline = time.monotonic() + give_up_s
    wait = first_wait_s
    while (remaining := deadline - time.monotonic()) > 0:
        reply = client.request(message, min(wait, remaining))
        if reply is not None:
            return reply
        log.warning("no answer from the learner at %s for %.0f s; asking again", client.address, wait)
        wait = min(wait * 2, 60.0)
    raise LearnerGone(f"the learner at {client.address} was silent for {give_up_s:.0f} s")


class HeartbeatThread(threading.Thread):
    """Beats every `interval_s` on a socket of its own; notices when the learner stops answering."""

    def __init__(self, address: str, worker_id: str, incarnation: int, role: str, interval_s: float,
                 missed_beats: int, security: SecurityConfig = SecurityConfig()):
        super().__init__(name=f"tiller-heartbeat-{worker_id}", daemon=True)
        self.address, self.beat, self.security = address, Heartbeat(worker_id, incarnation, role), security
        self.interval_s, self.missed_beats = interval_s, missed_beats
        self.learner_alive = True
        self.latest_version = -1
        self.learner_incarnation = -1  # of the learner that answered the last beat
        self._stop_event = threading.Event()

    def run(self) -> None:
        client = LearnerClient(self.address, security=self.security)  # zmq sockets are not thread-safe: this one is ours alone
        missed = 0
        try:
            while not self._stop_event.wait(self.interval_s):
                reply = client.request(self.beat, self.interval_s)
                if isinstance(reply, HeartbeatAck):
                    if not self.learner_alive:
                        log.info("the learner at %s answers again", self.address)
                    missed, self.learner_alive, self.latest_version = 0, True, reply.latest_version
                    self.learner_incarnation = reply.learner_incarnation
                    continue
                missed += 1
                if missed == self.missed_beats:
                    self.learner_alive = False
                    log.warning("the learner at %s missed %d heartbeats", self.address, missed)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop_event.set()

    def __enter__(self) -> "HeartbeatThread":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
