"""Who the learner's socket thread is talking to: liveness, socket identities and (under CURVE) which
key owns which worker name. Every table is bounded, because names cost nothing without CURVE.

    peers = PeerBook(dead_after_s=10.0)
    peers.seen("actor0#17")            # False when the tables are full and the name is new
    peers.register(identity, "actor0#17")
    for name, identities in peers.bury_silent(): ...
"""

from __future__ import annotations

import logging
import time
from collections import deque

from tiller.protocol.logbudget import LogBudget

log = logging.getLogger(__name__)

# Peers tracked at once. Past the cap a new name is ignored (and counted) until others die off.
MAX_PEERS = 4096


class PeerBook:
    def __init__(self, dead_after_s: float, logs: LogBudget | None = None):
        self.dead_after_s = dead_after_s
        self._last_seen: dict[str, float] = {}  # "name#incarnation" -> monotonic time of its last message
        self.identities: dict[bytes, str] = {}  # socket identity -> "name#incarnation"
        self._name_keys: dict[str, str] = {}  # worker name -> the z85 key that first used it
        self.dead: deque[str] = deque(maxlen=1000)  # the most recent; bounded against made-up names
        self.refused = 0  # messages ignored because the tables were full
        self.impersonations = 0  # CURVE: messages under a name another key owns
        self._logs = logs or LogBudget()

    def seen(self, name: str) -> bool:
        """Note that `name` is alive; False if the table is full and it is not in it."""
        if name not in self._last_seen:
            if len(self._last_seen) >= MAX_PEERS:
                return self._full(name)
            if name in self.dead and self._logs.allow("back"):
                log.info("%s is back after being declared dead%s", name, self._logs.note("back"))
        self._last_seen[name] = time.monotonic()
        return True

    def register(self, identity: bytes, name: str) -> bool:
        """Remember which worker speaks through `identity` (shutdown waits for each)."""
        if identity not in self.identities and len(self.identities) >= MAX_PEERS:
            return self._full(name)
        self.identities[identity] = name
        return True

    def key_owns(self, name: str, key: str | None) -> bool:
        """Under CURVE a worker name belongs to the first key that used it: another key's message under
        that name is refused (and counted), so one authorized worker cannot act as another."""
        if key is None:
            return True
        owner = self._name_keys.get(name)
        if owner is None:
            if len(self._name_keys) >= MAX_PEERS:
                return self._full(name)
            self._name_keys[name] = owner = key
        if owner == key:
            return True
        self.impersonations += 1
        if self._logs.allow("impersonation"):
            log.warning("refused a message under the name %s from a key that does not own it (%s...)%s", name[:80],
                        key[:8], self._logs.note("impersonation"))
        return False

    def bury_silent(self) -> list[tuple[str, list[bytes]]]:
        """Peers silent for `dead_after_s`: forgotten here; returns each with the socket identities it used."""
        now = time.monotonic()
        buried = []
        for peer in [p for p, seen in self._last_seen.items() if now - seen > self.dead_after_s]:
            del self._last_seen[peer]
            self.dead.append(peer)
            identities = [i for i, name in self.identities.items() if name == peer]
            for identity in identities:
                del self.identities[identity]
            buried.append((peer, identities))
        return buried

    def _full(self, name: str) -> bool:
        self.refused += 1
        if self._logs.allow("table full"):
            log.warning("ignoring %s: %d peers are tracked already%s", name[:80], MAX_PEERS,
                        self._logs.note("table full"))
        return False
