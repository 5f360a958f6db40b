"""New policy weights, streamed from the learner into the running engine bucket by bucket.

    stream = WeightStream(client, learner_incarnation, version, timeout_s)
    engine.load_weights(stream)        # the engine pulls (name, tensor) pairs; each pull may fetch a bucket
    if stream.failure: raise stream.failure
    if not stream.complete: ...        # superseded part-way: load (stream.learner, stream.version) whole

Why a stream and not "fetch everything, then load": the engine reloads layer by layer as tensors
arrive, so an actor holds about one bucket of received weights instead of a whole second copy of
the model, and nothing waits for the last bucket before loading begins. Holding a whole fresh copy
was also slow in itself: on the 2-core CPU machine, fetching 500M float32 parameters into memory
held until the load took 2-3x as long as receiving the same bytes bucket by bucket and letting each
go (bench/weight_transfer.py).

A stream never raises into the engine (an exception there would leave vLLM's layer-by-layer reload
half set up); it ends early instead and says why. Ending early after some buckets leaves the engine
with a mix of two versions: the caller must load one version whole before generating again. The
learner keeps serving a superseded version to a peer part-way through it (learner/server.py), so
that only happens when the learner restarted or the actor fell silent for a minute.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import torch

from tiller.actors.worker import HeartbeatThread, LearnerGone, request_patiently
from tiller.protocol.messages import WeightsBucket, WeightsGone, WeightsRequest
from tiller.protocol.transport import LearnerClient


def as_tensors(arrays: list) -> list[torch.Tensor]:
    """Received weights as tensors over the frames' own memory: no copy (the engine copies them into its
    parameters and only reads them). torch warns that a frame is read-only; the warning is expected.
    One warnings context per bucket, not per tensor (per tensor it cost about 1 ms per 80-tensor bucket)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return [a if isinstance(a, torch.Tensor) else torch.from_numpy(a) for a in arrays]


class WeightStream:
    """The (name, tensor) pairs of one policy version, fetched a bucket at a time as they are iterated.
    Iterate once. Afterwards `complete` says whether every bucket of (`learner`, `version`) was given;
    if not, `failure` is set when the learner is gone, and otherwise (`learner`, `version`) name the
    version that superseded the one begun."""

    def __init__(self, client: LearnerClient, learner: int, version: int, timeout_s: float,
                 heartbeat: HeartbeatThread | None = None):
        self.client, self.timeout_s, self.heartbeat = client, timeout_s, heartbeat
        self.learner, self.version = learner, version
        self.complete = False
        self.failure: LearnerGone | None = None
        self.buckets = self.bytes = 0
        self.tensors = 0  # whole tensors given to the engine
        self._pieces = Pieces()  # a tensor larger than a bucket, put back together

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        bucket, total = 0, 1
        while bucket < total:
            try:
                # 30 s before asking again: a 256 MiB bucket can take a while on a slow network
                reply = request_patiently(self.client, WeightsRequest(self.version, bucket, self.learner),
                                          self.timeout_s, first_wait_s=30.0, heartbeat=self.heartbeat)
            except LearnerGone as exc:
                self.failure = exc
                return
            if isinstance(reply, WeightsGone):
                if reply.latest_version < 0:
                    self.failure = LearnerGone("the learner has no weights to serve")
                    return
                self.learner, self.version = reply.learner_incarnation, reply.latest_version
                if bucket > 0:
                    return  # some of the superseded version is loaded: the caller loads the new one whole
                continue  # nothing loaded yet: simply begin on the newer version
            if not isinstance(reply, WeightsBucket) or (reply.version, reply.bucket) != (self.version, bucket):
                got = (f"bucket {reply.bucket} of version {reply.version}" if isinstance(reply, WeightsBucket)
                       else type(reply).KIND)
                self.failure = LearnerGone(f"unexpected reply to a request for bucket {bucket} of version "
                                           f"{self.version}: {got}")
                return
            total = reply.num_buckets
            tensors = as_tensors(reply.tensors)
            self.buckets += 1
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
            pairs, problem = self._pieces.whole(reply.names, tensors, reply.pieces)
            if problem is not None:
                self.failure = LearnerGone(f"bucket {bucket} of version {self.version}: {problem}")
                return
            del reply, tensors  # the engine's references are the only ones left once it has loaded them
            self.tensors += len(pairs)
            yield from pairs
            pairs = []
            bucket += 1
        if self._pieces.pending is not None:
            self.failure = LearnerGone(f"version {self.version} ended part-way through {self._pieces.pending[0]}")
            return
        self.complete = True


MAX_ASSEMBLED_ELEMENTS = 1 << 36  # 64G elements: far above any real tensor, far below an overflow


class Pieces:
    """Reassembles tensors that arrive in pieces (WeightsBucket.pieces) into whole ones, because vLLM's reload
    takes whole checkpoint tensors. Holds at most one tensor while it is incomplete: pieces of one tensor come
    in order, in consecutive buckets, and nothing else arrives between them. Whatever breaks that is a
    problem named in words, never an exception into the engine."""

    def __init__(self) -> None:
        self.pending: tuple[str, torch.Tensor, int] | None = None  # name, the tensor being filled, elements filled

    def whole(self, names: list[str], tensors: list[torch.Tensor], pieces: list[list[int]]
              ) -> tuple[list[tuple[str, torch.Tensor]], str | None]:
        """The whole tensors this bucket completes, and a problem (or None)."""
        if not pieces:
            if self.pending is not None and names:
                return [], f"{names[0]} arrived while {self.pending[0]} was still incomplete"
            return list(zip(names, tensors)), None
        if len(pieces) != len(names):
            return [], f"{len(pieces)} piece descriptors for {len(names)} tensors"
        done: list[tuple[str, torch.Tensor]] = []
        for name, tensor, piece in zip(names, tensors, pieces):
            if not piece:
                if self.pending is not None:
                    return [], f"{name} arrived while {self.pending[0]} was still incomplete"
                done.append((name, tensor))
                continue
            problem = self._add(name, tensor, piece[0], piece[1:])
            if problem is not None:
                return [], problem
            if self.pending is not None and self.pending[2] == self.pending[1].numel():
                done.append((name, self.pending[1]))
                self.pending = None
        return done, None

    def _add(self, name: str, piece: torch.Tensor, offset: int, shape: list[int]) -> str | None:
        numel = 1
        for dim in shape:
            numel *= dim  # Python integers: no overflow; bounded below before anything is allocated
        if len(shape) > 8 or min(shape, default=1) < 0 or numel > MAX_ASSEMBLED_ELEMENTS or piece.dim() != 1:
            return f"piece of {name}: shape {shape} of a {piece.dim()}-D piece is not acceptable"
        if self.pending is None:
            if offset != 0:
                return f"{name} begins at element {offset}, not 0"
            self.pending = (name, torch.empty(shape, dtype=piece.dtype), 0)
        held_name, held, filled = self.pending
        if (name, list(held.shape), piece.dtype) != (held_name, shape, held.dtype) or offset != filled:
            return f"piece of {name} at element {offset} does not continue {held_name} (filled to {filled})"
        if filled + piece.numel() > numel:
            return f"pieces of {name} hold more than its {numel} elements"
        held.view(-1)[filled:filled + piece.numel()].copy_(piece)
        self.pending = (held_name, held, filled + piece.numel())
        return None
