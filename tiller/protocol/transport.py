"""ZeroMQ sockets that speak the codec: a ROUTER endpoint for the learner, a DEALER client for workers.

The learner binds one ROUTER socket; every actor and judge connects a DEALER to it. Replies
are strictly one per request, so no queue grows past the number of workers (credit-based
flow control: a worker holds at most one outstanding request). Malformed input is logged,
counted in `stats.rejected`, and dropped; the socket keeps serving.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from tiller.config import SecurityConfig
from tiller.protocol.codec import DEFAULT_LIMITS, Decoder, Limits, ProtocolError, encode
from tiller.protocol.messages import REGISTRY
from tiller.protocol.security import check_bind, secure_client, secure_server

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0  # a worker's send that cannot leave (no connection) gives up after this
# Replies queued for one peer before the learner drops the next one. An honest worker holds one request
# (and its heartbeat socket one beat) outstanding at a time, so this only ever binds a peer that asks faster
# than it reads; without a bound such a peer's pipe fills and, with ROUTER_MANDATORY, a blocking send waits
# for it for ever, freezing every other peer's service with it.
PEER_SEND_HWM = 8
INTERRUPT_POLL_S = 0.1  # a wait that can be cut short looks at its condition this often

HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


@dataclass
class Stats:
    received: int = 0
    sent: int = 0
    rejected: int = 0
    unroutable: int = 0
    handshakes_failed: int = 0  # CURVE learner: clients that did not speak CURVE (plaintext) or broke the handshake
    send_dropped: int = 0  # replies dropped because the peer's queue was full (it does not read what it asks for)
    rejected_reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> bool:
        """Count a rejected message; True when it should be logged (the first 20, then every
        1000th), so a flood of garbage cannot flood the log too."""
        self.rejected += 1
        key = reason.split(":")[0][:60]
        self.rejected_reasons[key] = self.rejected_reasons.get(key, 0) + 1
        return self.rejected <= 20 or self.rejected % 1000 == 0


class RouterEndpoint:
    """The learner's side: receives (peer identity, message), replies to a peer by identity."""

    def __init__(self, address: str, limits: Limits = DEFAULT_LIMITS, context: zmq.Context | None = None,
                 security: SecurityConfig = SecurityConfig()):
        check_bind(address, security)
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.authorized = secure_server(self.socket, self.context, security) if security.server_enabled else None
        self.socket.setsockopt(zmq.LINGER, 0)
        # Raise on unknown peers instead of dropping silently; a dead peer is counted, not fatal.
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, PEER_SEND_HWM)  # per peer: see PEER_SEND_HWM
        self.socket.setsockopt(zmq.MAXMSGSIZE, limits.max_total_bytes)
        # With CURVE, a socket monitor reports handshakes that fail before authentication (a plaintext
        # client, a wrong server key): ZeroMQ drops those silently, so they are counted here.
        self._monitor = self.socket.get_monitor_socket(HANDSHAKE_FAILURES) if self.authorized is not None else None
        self.socket.bind(address)
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.decoder = Decoder(REGISTRY, limits)
        self.stats = Stats()
        self.sender_key: str | None = None  # CURVE: the z85 public key of the last message's sender

    def poll(self, timeout_ms: int) -> bool:
        return bool(self.socket.poll(timeout_ms, zmq.POLLIN))

    def recv(self) -> tuple[bytes, Any] | None:
        """One message if it decodes; None (logged and counted) if it does not."""
        frames = self.socket.recv_multipart(copy=False)
        if len(frames) < 2:
            if self.stats.reject("no body frame"):
                log.warning("rejected a message without a body frame (%d rejected so far)", self.stats.rejected)
            return None
        identity = frames[0].bytes
        # the ZAP handler's User-Id: the client's z85 public key (only set under CURVE)
        self.sender_key = frames[1].get("User-Id") if self.authorized is not None else None
        try:
            message = self.decoder.decode(frames[1:])
        except Exception as exc:  # decode raises only ProtocolError; anything else is still just a reject
            if self.stats.reject(str(exc)):
                log.warning("rejected message from peer %s: %s (%d rejected so far)", identity.hex(), exc,
                            self.stats.rejected)
            return None
        self.stats.received += 1
        return identity, message

    def failed_handshakes(self) -> int:
        """Count the failed handshakes reported since the last call (non-blocking); returns how many."""
        count = 0
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            if event["event"] & HANDSHAKE_FAILURES:
                count += 1
        self.stats.handshakes_failed += count
        return count

    def send(self, identity: bytes, message: Any, trackers: list | None = None) -> bool:
        """Send zero-copy, never blocking; with `trackers`, append the send's `zmq.MessageTracker` (done once
        ZeroMQ has let go of the message's buffers, so their owner may write them again). False when the
        message could not be queued: the peer is gone (unroutable) or its queue is full (`send_dropped`, a
        peer that does not read); both are handled like a lost reply (leases expire or are cancelled)."""
        try:
            # NOBLOCK: with ROUTER_MANDATORY a full peer makes a blocking send wait until that peer reads,
            # which a hostile or hung peer never does; the learner's one socket thread must never wait on one.
            tracker = self.socket.send_multipart([identity, *encode(message)], flags=zmq.NOBLOCK, copy=False,
                                                 track=trackers is not None)
            if trackers is not None:
                trackers.append(tracker)
        except zmq.Again:
            self.stats.send_dropped += 1
            if self.stats.send_dropped <= 20 or self.stats.send_dropped % 1000 == 0:
                log.warning("dropped %s for peer %s: it has %d replies it has not read (%d dropped so far)",
                            type(message).KIND, identity.hex(), PEER_SEND_HWM, self.stats.send_dropped)
            return False
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone; its lease will expire
            self.stats.unroutable += 1
            log.info("could not send %s to peer %s: %s", type(message).KIND, identity.hex(), exc)
            return False
        self.stats.sent += 1
        return True

    def close(self) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
        self.socket.close(linger=0)
        if self.authorized is not None:
            self.authorized.authenticator.stop()


class LearnerClient:
    """A worker's connection to the learner: send one request, wait for its reply.

    After a timeout the socket is replaced, so a reply that arrives late can never be
    mistaken for the answer to the next request.
    """

    def __init__(self, address: str, limits: Limits = DEFAULT_LIMITS, context: zmq.Context | None = None,
                 security: SecurityConfig = SecurityConfig()):
        self.address = address
        self.security = security
        self.context = context or zmq.Context.instance()
        self.decoder = Decoder(REGISTRY, limits)
        self.limits = limits
        self.stats = Stats()
        self.socket = self._connect()

    def _connect(self) -> zmq.Socket:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDTIMEO, int(SEND_TIMEOUT_S * 1000))
        socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_total_bytes)
        if self.security.client_enabled:
            secure_client(socket, self.security)
        socket.connect(self.address)
        return socket

    def request(self, message: Any, timeout_s: float, interrupt: Callable[[], bool] | None = None) -> Any | None:
        """Send `message` and return the decoded reply, or None (and a fresh socket) if none came
        within `timeout_s`, or as soon as `interrupt()` is true (checked every INTERRUPT_POLL_S)."""
        self.send(message)
        reply = self.receive(timeout_s, interrupt)
        if reply is None:
            self.reset()
        return reply

    def receive(self, timeout_s: float, interrupt: Callable[[], bool] | None = None) -> Any | None:
        """The next decodable message within `timeout_s` (or until `interrupt()`), or None; the socket is kept."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            if interrupt is not None:
                if interrupt():
                    break
                remaining = min(remaining, INTERRUPT_POLL_S)
            if not self.socket.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                if interrupt is not None:
                    continue
                break
            frames = self.socket.recv_multipart(copy=False)
            try:
                reply = self.decoder.decode(frames)
            except ProtocolError as exc:
                if self.stats.reject(str(exc)):
                    log.warning("rejected reply from the learner: %s", exc)
                continue
            self.stats.received += 1
            return reply
        return None

    def reset(self) -> None:
        """A new socket (and identity): replies meant for the old one can never arrive here."""
        self.socket.close(linger=0)
        self.socket = self._connect()

    def send(self, message: Any) -> None:
        """Fire-and-forget (results): the learner's lease table makes lost ones visible. A DEALER with
        no live connection (e.g. right after a refused handshake) blocks on send: after SEND_TIMEOUT_S
        the message is dropped, logged, and the socket replaced, rather than the worker hanging."""
        try:
            self.socket.send_multipart(encode(message), copy=False)
        except zmq.Again:
            log.warning("could not send %s to %s within %.0f s; dropped", type(message).KIND, self.address,
                        SEND_TIMEOUT_S)
            self.reset()
            return
        self.stats.sent += 1

    def close(self) -> None:
        self.socket.close(linger=0)
