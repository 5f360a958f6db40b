"""The published policy versions the learner's socket thread serves, and who is part-way through which.

    shelf = WeightShelf(max_superseded=2)
    shelf.publish(snapshot)                      # the newest version; the one it replaces is kept for its readers
    snap = shelf.lookup(identity, request, incarnation)   # None: answer WeightsGone
    ... send bucket request.bucket of snap ...; shelf.sent(identity, snap, request.bucket)

A fetch, once begun, ends with the version it began (an actor loads each bucket as it arrives and cannot
restart halfway for free), so a superseded version stays served to the peers part-way through it. What that
may hold is bounded whatever peers do: a peer has at most one version in progress (beginning a version gives
up any other), at most `max_superseded` superseded versions are held in all (past that the oldest is let go
and its readers start on the newest), a reader silent for `idle_s` is forgotten, and finished sends are
pruned from the trackers. Touched only from the socket thread; the publisher reads `read` and `trackers`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tiller.protocol.logbudget import LogBudget
from tiller.protocol.messages import WeightsRequest

log = logging.getLogger(__name__)


@dataclass
class WeightSnapshot:
    """A published policy: buckets of (names, tensors), served zero-copy. The socket thread appends a
    tracker per bucket sent, keeps `readers` (peers that fetched some of its buckets but not the last)
    and sets `retired` once a newer version replaces it. The publisher reuses the buffers only when
    nothing says they are read (learner/publish.py)."""

    version: int
    buckets: list[tuple[list[str], list[Any]]]
    trackers: list = field(default_factory=list)
    retired: bool = False
    readers: dict[bytes, float] = field(default_factory=dict)  # peer identity -> when it last asked
    # per bucket, WeightsBucket.pieces: [] when every array is a whole tensor (empty list: no bucket split)
    pieces: list[list[list[int]]] = field(default_factory=list)

    @property
    def read(self) -> bool:
        """Might a send still read these buffers: offered to new fetches, or owed to a fetch begun."""
        return not self.retired or bool(self.readers)

    def prune_trackers(self) -> None:
        self.trackers = [t for t in self.trackers if not t.done]  # a new list: the publisher may be reading the old


class WeightShelf:
    def __init__(self, max_superseded: int = 2, logs: LogBudget | None = None):
        self.max_superseded = max_superseded
        self.latest: WeightSnapshot | None = None
        self.finishing: dict[int, WeightSnapshot] = {}  # superseded versions some peer is part-way through
        self.readers_cut = 0  # fetches cut short (WeightsGone) because their version was let go
        self._logs = logs or LogBudget()

    def publish(self, snap: WeightSnapshot) -> None:
        old = self.latest
        if old is not None:
            old.retired = True  # no new fetch begins on it from now on
            if old.readers:  # ... but those begun finish with it
                self.finishing[old.version] = old
        self.latest = snap
        self._cap_superseded()

    def lookup(self, identity: bytes, request: WeightsRequest, incarnation: int) -> WeightSnapshot | None:
        """The version to serve `request` from, or None (the peer is told WeightsGone)."""
        latest = self.latest
        snap = latest if latest is not None and request.version == latest.version else None
        if snap is None and request.bucket > 0:  # a superseded version: only to a peer that began fetching it
            begun = self.finishing.get(request.version)
            snap = begun if begun is not None and identity in begun.readers else None
        if snap is None or request.learner_incarnation != incarnation or not 0 <= request.bucket < len(snap.buckets):
            return None
        snap.prune_trackers()
        return snap

    def sent(self, identity: bytes, snap: WeightSnapshot, bucket: int) -> None:
        """Bucket `bucket` of `snap` went to `identity`. Called after the send, which appended its tracker, so
        the publisher always sees a reader or a tracker."""
        if bucket + 1 < len(snap.buckets):
            snap.readers[identity] = time.monotonic()
        else:
            snap.readers.pop(identity, None)
        # a peer fetching `snap` has given up any other version it began: it holds none of their buffers
        for version, other in list(self.finishing.items()):
            if other is not snap:
                other.readers.pop(identity, None)
            if not other.readers:
                del self.finishing[version]

    def forget_idle(self, idle_s: float) -> None:
        """Readers that stopped asking (dead, or restarted on a fresh socket) hold no version's buffers."""
        now = time.monotonic()
        for snap in [self.latest, *self.finishing.values()]:
            if snap is None:
                continue
            snap.prune_trackers()  # finished sends: nothing left to watch
            for identity, asked in list(snap.readers.items()):
                if now - asked > idle_s:
                    del snap.readers[identity]
            if snap.retired and not snap.readers:
                self.finishing.pop(snap.version, None)

    def _cap_superseded(self) -> None:
        while len(self.finishing) > self.max_superseded:
            oldest = min(self.finishing)
            snap = self.finishing.pop(oldest)
            self.readers_cut += len(snap.readers)
            if self._logs.allow("readers cut"):
                log.warning("let go of superseded policy version %d part-way through %d fetch(es): more than %d "
                            "superseded versions were held%s", oldest, len(snap.readers), self.max_superseded,
                            self._logs.note("readers cut"))
            snap.readers.clear()
