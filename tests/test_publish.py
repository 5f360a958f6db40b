"""Weight publishing: the actors' dtype, buffers reused only when nobody reads them, tracked zero-copy
sends over a real ZeroMQ socket."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiller.config import Config, LearnerConfig, ModelConfig
from tiller.learner.trainer import PolicyTrainer
from tiller.learner.publish import WeightPublisher
from tiller.protocol import LearnerClient, RouterEndpoint
from tiller.protocol.messages import Heartbeat, WeightsBucket

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bf16_trainer(tiny_policy_dir):
    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir)), learner=LearnerConfig(precision="bf16"))
    return PolicyTrainer(cfg, tiny_policy_dir)


def test_a_bf16_learner_publishes_float32_for_float32_actors(bf16_trainer, capsys):
    publisher = WeightPublisher(bf16_trainer, torch.float32, bucket_bytes=64 << 10)
    assert "actors get torch.float32" in capsys.readouterr().out  # said once, at start
    snap, metrics = publisher.snapshot(1)
    published = whole_tensors(snap)
    params = dict(bf16_trainer.module.named_parameters(remove_duplicate=False))
    assert len(snap.buckets) > 1 and set(params) <= set(published)
    assert snap.pieces  # an MLP weight (128 KiB in float32) is larger than a bucket: it travels in pieces
    for name, param in params.items():
        assert published[name].dtype == torch.float32
        assert torch.equal(published[name], param.detach().float()), name
    assert metrics["weights/publish_gbps"] > 0 and metrics["weights/publish_s"] > 0


def whole_tensors(snap) -> dict[str, torch.Tensor]:
    """The snapshot's tensors as an actor puts them back together (a tensor over a bucket comes in pieces)."""
    from tiller.actors.weight_stream import Pieces

    pieces, out = Pieces(), {}
    for index, (names, tensors) in enumerate(snap.buckets):
        done, problem = pieces.whole(names, tensors, snap.pieces[index] if snap.pieces else [])
        assert problem is None, problem
        out.update(done)
    return out


def pointers(snapshot) -> set[int]:
    return {t.data_ptr() for _, tensors in snapshot.buckets for t in tensors}


def test_buffers_are_reused_only_once_retired_released_and_read_by_nobody(bf16_trainer):
    publisher = WeightPublisher(bf16_trainer, torch.bfloat16, bucket_bytes=1 << 30)
    first, _ = publisher.snapshot(1)
    second, _ = publisher.snapshot(2)  # the first is still offered: a second buffer set
    assert publisher.buffer_sets_made == 2

    class InFlight:
        done = False

    first.retired = True
    first.trackers.append(InFlight())  # ZeroMQ still holds a frame sent from it
    third, _ = publisher.snapshot(3)
    assert publisher.buffer_sets_made == 3  # neither earlier set could be written

    first.trackers[0].done = True
    second.retired = True
    second.readers[b"actor"] = 0.0  # replaced, but an actor part-way through it still fetches from it
    fourth, _ = publisher.snapshot(4)
    assert publisher.buffer_sets_made == 3  # reused, not made
    assert pointers(fourth) == pointers(first)  # the first set: the second is still read
    second.readers.clear()  # that fetch has ended
    before = [t.clone() for _, ts in third.buckets for t in ts]
    with torch.no_grad():
        for p in bf16_trainer.module.parameters():
            p.add_(1.0)
    fifth, _ = publisher.snapshot(5)  # the second set, never the third or fourth (still offered)
    assert pointers(fifth) == pointers(second) and publisher.buffer_sets_made == 3
    assert all(torch.equal(a, b) for a, b in zip(before, [t for _, ts in third.buckets for t in ts]))
    with torch.no_grad():
        for p in bf16_trainer.module.parameters():
            p.sub_(1.0)


def test_tracked_zero_copy_send_is_done_once_the_frame_left(free_address):
    server = RouterEndpoint(free_address)
    client = LearnerClient(server.address)
    try:
        client.send(Heartbeat("actor0", 1, "actor"))
        assert server.socket.poll(10_000)  # bounded: recv itself blocks
        received = server.recv()
        assert received is not None
        identity, _ = received
        weights = np.arange(1 << 18, dtype=np.float32)  # 1 MiB: sent zero-copy, not inlined
        trackers: list = []
        assert server.send(identity, WeightsBucket(1, 0, 1, ["w"], [weights], 0), trackers=trackers)
        reply = client.receive(10)
        assert isinstance(reply, WeightsBucket) and np.array_equal(reply.tensors[0], weights)
        trackers[0].wait(10)
        assert trackers[0].done
    finally:
        client.close()
        server.close()
