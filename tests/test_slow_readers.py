"""Peers that ask faster than they read, or keep old weight versions alive, against the real LearnerServer
on loopback: the socket thread never waits on one peer, and the memory held for superseded versions stays
within its cap, whatever a peer asks for."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import zmq

from tiller.config import LearnerConfig, RolloutConfig
from tiller.learner.coordinator import Coordinator
from tiller.learner.prompts import PromptStream
from tiller.learner.server import LearnerServer, WeightSnapshot
from tiller.protocol import encode
from tiller.protocol.messages import Lease, LeaseRequest, Status, StatusRequest, WeightsBucket, WeightsGone, WeightsRequest
from tiller.protocol.transport import PEER_SEND_HWM, LearnerClient

BUCKETS = 3


def snapshot(version: int, numel: int = 300) -> WeightSnapshot:
    return WeightSnapshot(version, [([f"b{b}.w"], [torch.full((numel,), float(version))]) for b in range(BUCKETS)])


@pytest.fixture
def learner(free_address):
    prompts = PromptStream([np.array([3 + i % 20, 4], np.int32) for i in range(1000)], [""] * 1000)
    coordinator = Coordinator(prompts, LearnerConfig(batch_size=8, lease_prompts=2, max_inflight_prompts=64),
                              RolloutConfig(samples_per_prompt=2, max_new_tokens=8), vocab_size=64)
    server = LearnerServer(coordinator, free_address, max_superseded=2)
    server.start()
    clients: list = []
    yield server, clients
    for c in clients:
        c.close(linger=0) if isinstance(c, zmq.Socket) else c.close()
    server.close()


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def publish(server: LearnerServer, snap: WeightSnapshot) -> None:
    server.publish(snap)
    wait_for(lambda: server._snapshot is snap)


def test_a_peer_that_never_reads_cannot_freeze_the_learner(learner):
    server, clients = learner
    publish(server, snapshot(1, numel=256 << 10))  # 1 MiB a bucket: the non-reader's buffers fill at once
    hostile = zmq.Context.instance().socket(zmq.DEALER)
    clients.append(hostile)
    hostile.setsockopt(zmq.RCVHWM, 1)
    hostile.setsockopt(zmq.RCVBUF, 4096)
    hostile.connect(server.address)
    for _ in range(1200):  # asks, and never reads an answer
        hostile.send_multipart(encode(WeightsRequest(1, 0, server.coordinator.incarnation)), copy=False)
    wait_for(lambda: server.endpoint.stats.send_dropped > 0, timeout_s=10)

    honest = LearnerClient(server.address)
    clients.append(honest)
    started = time.monotonic()
    status = honest.request(StatusRequest("test"), timeout_s=5)
    assert isinstance(status, Status) and time.monotonic() - started < 1.0
    for actor in range(3):  # actors keep getting work
        assert isinstance(honest.request(LeaseRequest(f"actor{actor}", 1, 1), timeout_s=5), Lease)
    # the non-reader was served at most its queue's worth (and what the kernel buffers hold); the rest was
    # dropped and counted, while the others were served
    wait_for(lambda: server.endpoint.stats.send_dropped >= 1200 - 64, timeout_s=20)
    wait_for(lambda: server.public["protocol"]["send_dropped"] >= 1200 - 64)  # in the learner's metrics too
    assert server.alive
    assert PEER_SEND_HWM <= 16


def ask(client: LearnerClient, version: int, bucket: int, incarnation: int):
    reply = client.request(WeightsRequest(version, bucket, incarnation), timeout_s=10)
    assert reply is not None, "no reply within 10 s"
    return reply


def test_a_peer_that_re_asks_old_versions_pins_at_most_one(learner):
    server, clients = learner
    pinner = LearnerClient(server.address)
    clients.append(pinner)
    incarnation = server.coordinator.incarnation
    for version in range(1, 9):  # begins every new version, then re-asks bucket 1 of all the older ones
        publish(server, snapshot(version))
        assert isinstance(ask(pinner, version, 0, incarnation), WeightsBucket)
        for old in range(1, version):
            ask(pinner, old, 1, incarnation)
        # at most one version in progress per peer: beginning a version gave up every older one
        assert len(server._finishing) == 0, sorted(server._finishing)


def test_superseded_versions_held_for_readers_stay_within_the_cap(learner):
    server, clients = learner
    incarnation = server.coordinator.incarnation
    readers = []
    for version in range(1, 6):  # five honest but slow readers, each part-way through another version
        publish(server, snapshot(version))
        readers.append(LearnerClient(server.address))
        clients.append(readers[-1])
        assert isinstance(ask(readers[-1], version, 0, incarnation), WeightsBucket)
    publish(server, snapshot(6))
    assert sorted(server._finishing) == [4, 5]  # the cap: two superseded versions held
    held = sum(t.numel() * t.element_size() for s in server._finishing.values() for _, ts in s.buckets for t in ts)
    assert held == 2 * BUCKETS * 300 * 4
    assert server.readers_cut == 3
    # the readers let go are told to begin on the newest; those within the cap finish their versions
    gone = ask(readers[0], 1, 1, incarnation)
    assert isinstance(gone, WeightsGone) and gone.latest_version == 6
    for bucket in (1, 2):
        assert ask(readers[4], 5, bucket, incarnation).version == 5


def test_finished_sends_are_not_tracked_for_ever(learner):
    server, clients = learner
    snap = snapshot(1)
    publish(server, snap)
    client = LearnerClient(server.address)
    clients.append(client)
    for _ in range(60):
        assert isinstance(ask(client, 1, 0, server.coordinator.incarnation), WeightsBucket)
    assert len(snap.trackers) <= 4  # one per send before; pruned of the finished ones now


def test_require_registration_serves_status_and_weights_to_workers_only(free_address):
    from tiller.config import SecurityConfig
    from tiller.protocol.messages import ModelRequest, Wait

    prompts = PromptStream([np.array([3, 4], np.int32)] * 10, [""] * 10)
    coordinator = Coordinator(prompts, LearnerConfig(batch_size=2, lease_prompts=2, max_inflight_prompts=8),
                              RolloutConfig(samples_per_prompt=2, max_new_tokens=8), vocab_size=64)
    server = LearnerServer(coordinator, free_address, security=SecurityConfig(require_registration=True))
    server.publish(snapshot(1))
    server.start()
    stranger, worker = LearnerClient(server.address), LearnerClient(server.address)
    try:
        incarnation = coordinator.incarnation
        for request in (StatusRequest("anyone"), WeightsRequest(1, 0, incarnation), ModelRequest(incarnation)):
            reply = stranger.request(request, timeout_s=5)
            assert isinstance(reply, Wait) and "registered workers only" in reply.reason
        assert isinstance(worker.request(LeaseRequest("actor0", 1, -1), timeout_s=5), Lease)  # it asked for work
        assert isinstance(worker.request(StatusRequest("actor0"), timeout_s=5), Status)
        assert isinstance(worker.request(WeightsRequest(1, 0, incarnation), timeout_s=5), WeightsBucket)
        assert server.unregistered_refused == 3
    finally:
        stranger.close()
        worker.close()
        server.close()
