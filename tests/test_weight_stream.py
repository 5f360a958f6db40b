"""Weights streamed bucket by bucket into the actor's engine: a fetch, once begun, ends with the version it
began (the learner keeps serving a superseded version to the peers part-way through it, and keeps its
buffers out of reuse until then); a stream that cannot finish ends early and says why, never raising
into the engine. Real LearnerServer, real ZeroMQ sockets."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tiller.actors.weight_stream import WeightStream
from tiller.config import LearnerConfig, RolloutConfig
from tiller.learner import server as server_module
from tiller.learner.coordinator import Coordinator
from tiller.learner.prompts import PromptStream
from tiller.learner.server import LearnerServer, WeightSnapshot
from tiller.protocol.messages import WeightsBucket, WeightsGone, WeightsRequest
from tiller.protocol.transport import LearnerClient

BUCKETS = 3


def snapshot(version: int) -> WeightSnapshot:
    """Three buckets of two tensors each, every value equal to the version (so a mix would show)."""
    return WeightSnapshot(version, [([f"b{b}.w", f"b{b}.v"], [torch.full((300,), float(version)),
                                                               torch.full((7, 5), float(version))])
                                    for b in range(BUCKETS)])


@pytest.fixture
def served(free_address):
    coordinator = Coordinator(PromptStream([np.array([3, 4], np.int32)], [""]), LearnerConfig(), RolloutConfig())
    server = LearnerServer(coordinator, free_address)
    server.publish(snapshot(1))
    server.start()
    wait_for(lambda: server._snapshot is not None)
    clients: list[LearnerClient] = []

    def client() -> LearnerClient:
        clients.append(LearnerClient(server.address))
        return clients[-1]

    yield server, client
    for c in clients:
        c.close()
    server.close()


def ask(client: LearnerClient, version: int, bucket: int, incarnation: int):
    reply = client.request(WeightsRequest(version, bucket, incarnation), timeout_s=10)
    assert reply is not None, "no reply within 10 s"
    return reply


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_fetch_begun_ends_with_its_version_after_a_newer_one_is_published(served):
    server, client = served
    incarnation = server.coordinator.incarnation
    reader, latecomer = client(), client()
    first = ask(reader, 1, 0, incarnation)
    assert isinstance(first, WeightsBucket) and first.version == 1
    old = server._snapshot
    server.publish(snapshot(2))
    wait_for(lambda: server._snapshot is not old)

    assert old.retired and old.read  # replaced, but still owed to the reader part-way through it
    middle = ask(reader, 1, 1, incarnation)
    assert isinstance(middle, WeightsBucket) and middle.version == 1 and float(middle.tensors[0][0]) == 1.0
    # a peer that did not begin version 1 is told to fetch version 2, from any bucket
    for bucket in (0, 1):
        gone = ask(latecomer, 1, bucket, incarnation)
        assert isinstance(gone, WeightsGone) and gone.latest_version == 2
    last = ask(reader, 1, BUCKETS - 1, incarnation)
    assert isinstance(last, WeightsBucket) and last.version == 1
    wait_for(lambda: not old.read)  # the last bucket ended the fetch: nobody may be served version 1 now
    assert 1 not in server._finishing
    assert isinstance(ask(reader, 1, 1, incarnation), WeightsGone)


def test_a_reader_that_falls_silent_stops_holding_its_version(served, monkeypatch):
    server, client = served
    reader = client()
    incarnation = server.coordinator.incarnation
    assert isinstance(ask(reader, 1, 0, incarnation), WeightsBucket)
    old = server._snapshot
    server.publish(snapshot(2))
    wait_for(lambda: server._snapshot is not old)
    assert old.read
    monkeypatch.setattr(server_module, "READER_IDLE_S", 0.0)
    wait_for(lambda: not old.read)  # forgotten at the socket thread's next housekeeping tick (0.5 s)
    assert 1 not in server._finishing
    assert isinstance(ask(reader, 1, 1, incarnation), WeightsGone)


def test_a_stream_gives_every_tensor_of_one_version_in_order(served):
    server, client = served
    stream = WeightStream(client(), server.coordinator.incarnation, 1, timeout_s=10)
    pairs = list(stream)
    assert [name for name, _ in pairs] == [f"b{b}.{t}" for b in range(BUCKETS) for t in "wv"]
    assert all(torch.equal(t, torch.full_like(t, 1.0)) for _, t in pairs)
    assert stream.complete and stream.failure is None and stream.version == 1 and stream.buckets == BUCKETS
    assert stream.bytes == BUCKETS * (300 + 35) * 4


def test_a_stream_asked_for_an_old_version_begins_on_the_latest(served):
    server, client = served
    server.publish(snapshot(2))
    wait_for(lambda: server._snapshot.version == 2)
    stream = WeightStream(client(), server.coordinator.incarnation, 1, timeout_s=10)
    values = {float(t.flatten()[0]) for _, t in stream}
    assert values == {2.0} and stream.complete and stream.version == 2


def test_a_newer_version_mid_stream_does_not_interrupt_it(served):
    server, client = served
    stream = WeightStream(client(), server.coordinator.incarnation, 1, timeout_s=10)
    pairs = iter(stream)
    got = [next(pairs)]  # the first bucket has arrived
    server.publish(snapshot(2))
    wait_for(lambda: server._snapshot.version == 2)
    got += list(pairs)
    assert len(got) == 2 * BUCKETS and {float(t.flatten()[0]) for _, t in got} == {1.0}
    assert stream.complete and stream.version == 1


def test_a_stream_that_cannot_finish_ends_early_naming_the_version_to_load_whole(served, monkeypatch):
    server, client = served
    stream = WeightStream(client(), server.coordinator.incarnation, 1, timeout_s=10)
    pairs = iter(stream)
    next(pairs)
    old = server._snapshot
    server.publish(snapshot(2))
    monkeypatch.setattr(server_module, "READER_IDLE_S", 0.0)  # the learner has given up on this reader
    wait_for(lambda: server._snapshot is not old and not old.read)
    rest = list(pairs)  # no exception: the engine would be left half set up
    assert len(rest) == 1  # the bucket already received, then the end
    assert not stream.complete and stream.failure is None and stream.version == 2


def test_a_stream_from_a_silent_learner_ends_with_the_failure(free_address):
    client = LearnerClient(free_address)  # nobody listens there
    try:
        stream = WeightStream(client, 1, 1, timeout_s=0.3)
        assert list(stream) == []
        assert not stream.complete and "silent" in str(stream.failure)
    finally:
        client.close()


class RecordingEngine:
    """Stands in for vLLM in the actor's sync loop: consumes a stream as the engine does (pulling pairs
    until it ends) and keeps what it loaded. Its first load stalls after one pair until the learner has
    published version 2 and given up on this reader, as a learner does with an actor silent too long."""

    def __init__(self, server: LearnerServer, monkeypatch) -> None:
        self.server, self.monkeypatch = server, monkeypatch
        self.loads: list[list[tuple[str, float]]] = []

    def load_weights(self, stream) -> None:
        loaded = []
        for name, tensor in stream:
            loaded.append((name, float(tensor.flatten()[0])))
            if len(self.loads) == 0 and len(loaded) == 1:
                old, patience = self.server._snapshot, server_module.READER_IDLE_S
                self.server.publish(snapshot(2))
                self.monkeypatch.setattr(server_module, "READER_IDLE_S", 0.0)
                wait_for(lambda: self.server._snapshot is not old and not old.read)
                self.monkeypatch.setattr(server_module, "READER_IDLE_S", patience)  # the new version's reader stays
        self.loads.append(loaded)


def test_an_actor_whose_stream_ended_part_way_loads_the_newer_version_whole(served, monkeypatch):
    from tiller.actors.rollout import RolloutActor
    from tiller.config import Config

    server, client = served
    actor = RolloutActor.__new__(RolloutActor)  # the sync loop alone: no vLLM engine to start
    actor.cfg, actor.actor_id, actor.client = Config(), "actor0", client()
    actor.local_model, actor.card, actor.card_learner = None, None, -1  # no model folder to check against
    actor.heartbeat = None
    actor.engine = RecordingEngine(server, monkeypatch)
    actor.learner_incarnation, actor.version, actor.load_seconds = server.coordinator.incarnation, 0, 0.0
    actor.sync(server.coordinator.incarnation, 1)
    first, second = actor.engine.loads
    assert {value for _, value in first} == {1.0} and len(first) == 2  # one bucket of version 1, then the end
    assert [name for name, _ in second] == [f"b{b}.{t}" for b in range(BUCKETS) for t in "wv"]
    assert {value for _, value in second} == {2.0}  # every tensor again, all of version 2
    assert actor.version == 2 and actor.load_seconds > 0


def test_weights_the_engine_refuses_stop_the_actor_with_a_line_naming_its_model(served):
    from tiller.actors.rollout import RolloutActor, WeightsDoNotFit
    from tiller.config import Config, ModelConfig

    class OtherModelEngine:  # vLLM raises on a parameter name its model does not have
        def load_weights(self, stream) -> None:
            for name, _ in stream:
                raise KeyError(name)

    server, client = served
    actor = RolloutActor.__new__(RolloutActor)
    actor.cfg, actor.actor_id, actor.client = Config(model=ModelConfig(path="models/other")), "actor0", client()
    actor.engine, actor.learner_incarnation, actor.version = OtherModelEngine(), 5, 0
    actor.local_model, actor.card, actor.card_learner, actor.heartbeat = None, None, -1, None
    with pytest.raises(WeightsDoNotFit, match=r"model.path models/other\): KeyError: 'b0.w'"):
        actor.sync(server.coordinator.incarnation, 1)
    assert actor.version == -1  # it holds no published version now, and will not generate with this one


def test_a_tensor_larger_than_a_bucket_travels_in_pieces_that_are_views(free_address):
    from tiller.learner.publish import split_large

    big, small = torch.arange(1000, dtype=torch.float32).reshape(40, 25), torch.ones(3)
    buckets, pieces = split_large([(["small", "big", "after"], [small, big, small])], bucket_bytes=1024)
    assert [names for names, _ in buckets] == [["small"], ["big"], ["big"], ["big"], ["big"], ["after"]]
    assert pieces == [[], [[0, 40, 25]], [[256, 40, 25]], [[512, 40, 25]], [[768, 40, 25]], []]
    assert all(t.numel() * 4 <= 1024 for _, ts in buckets for t in ts)
    assert buckets[2][1][0].data_ptr() == big.data_ptr() + 256 * 4  # a view into the buffer, not a copy
    assert split_large([(["small"], [small])], bucket_bytes=1024) == ([(["small"], [small])], [])


def test_a_stream_reassembles_a_tensor_split_across_buckets(free_address):
    from tiller.learner.publish import split_large

    embedding = torch.randn(50, 33)
    buckets, pieces = split_large([(["embed", "norm"], [embedding, torch.ones(4)])], bucket_bytes=512)
    coordinator = Coordinator(PromptStream([np.array([3, 4], np.int32)], [""]), LearnerConfig(), RolloutConfig())
    server = LearnerServer(coordinator, free_address)
    server.publish(WeightSnapshot(1, buckets, pieces=pieces))
    server.start()
    client = LearnerClient(server.address)
    try:
        wait_for(lambda: server._snapshot is not None)
        stream = WeightStream(client, coordinator.incarnation, 1, timeout_s=10)
        pairs = list(stream)
        assert stream.complete and stream.failure is None and stream.buckets == len(buckets) > 2
        assert [name for name, _ in pairs] == ["embed", "norm"]
        assert torch.equal(pairs[0][1], embedding) and torch.equal(pairs[1][1], torch.ones(4))
    finally:
        client.close()
        server.close()


def test_pieces_out_of_order_are_a_named_problem_not_an_exception():
    from tiller.actors.weight_stream import Pieces

    pieces = Pieces()
    done, problem = pieces.whole(["w"], [torch.zeros(4)], [[4, 8]])
    assert done == [] and "begins at element 4" in problem
    pieces = Pieces()
    assert pieces.whole(["w"], [torch.zeros(4)], [[0, 8]]) == ([], None)
    done, problem = pieces.whole(["v"], [torch.zeros(2)], [])
    assert "v arrived while w was still incomplete" in problem
    done, problem = Pieces().whole(["w"], [torch.zeros(4)], [[0, 1 << 40, 1 << 40]])
    assert "not acceptable" in problem
    done, problem = Pieces().whole(["w"], [torch.zeros(4)], [[0, 2]])
    assert "more than its 2 elements" in problem
