"""A worker waiting on a request the learner never answered (it died, or finished meanwhile) does not sit out
the rest of its wait: the heartbeat thread's news cuts it short. Real sockets, a real LearnerServer."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zmq

from tiller.actors.weight_stream import WeightStream
from tiller.actors.worker import HeartbeatThread, LearnerFinished, request_patiently
from tiller.config import LearnerConfig, RolloutConfig
from tiller.learner.coordinator import Coordinator
from tiller.learner.prompts import PromptStream
from tiller.learner.server import LearnerServer, WeightSnapshot
from tiller.protocol.messages import LeaseRequest, StatusRequest
from tiller.protocol.transport import LearnerClient


def new_learner(address: str) -> LearnerServer:
    coordinator = Coordinator(PromptStream([np.array([3, 4], np.int32)], [""]), LearnerConfig(), RolloutConfig())
    server = LearnerServer(coordinator, address, heartbeat_s=0.2)
    server.publish(WeightSnapshot(7, [(["w"], [torch.full((10,), 7.0)]), (["v"], [torch.full((3,), 7.0)])]))
    server.start()
    return server


def test_a_weight_fetch_lost_with_a_dead_learner_is_asked_again_of_its_successor_at_once(free_address):
    heartbeat = SimpleNamespace(learner_incarnation=1, learner_finished=False)  # what the beats have seen
    dead = zmq.Context.instance().socket(zmq.ROUTER)  # swallows the request, then dies without answering
    dead.bind(free_address)
    resumed: list[LearnerServer] = []

    def die_and_resume() -> None:
        assert dead.poll(5000)  # the request arrived; it is never answered
        dead.close(linger=0)
        for _ in range(100):  # ZeroMQ lets go of the port in its own time
            try:
                resumed.append(new_learner(free_address))
                break
            except zmq.ZMQError:
                time.sleep(0.05)
        heartbeat.learner_incarnation = resumed[0].coordinator.incarnation  # the next beat's answer

    restart = threading.Thread(target=die_and_resume)
    restart.start()
    client = LearnerClient(free_address)
    try:
        started = time.monotonic()
        stream = WeightStream(client, learner=1, version=3, timeout_s=60, heartbeat=heartbeat)
        pairs = list(stream)  # without the heartbeat's news: 30 s before the request is sent again
        restart.join()
        assert time.monotonic() - started < 5
        assert stream.complete and stream.learner == resumed[0].coordinator.incarnation and stream.version == 7
        assert [name for name, _ in pairs] == ["w", "v"]
    finally:
        client.close()
        for server in resumed:
            server.close()


def test_a_wait_ends_when_the_heartbeats_say_training_finished(free_address):
    heartbeat = SimpleNamespace(learner_incarnation=1, learner_finished=False)
    threading.Timer(0.3, lambda: setattr(heartbeat, "learner_finished", True)).start()
    client = LearnerClient(free_address)  # nobody answers there
    try:
        started = time.monotonic()
        with pytest.raises(LearnerFinished, match="training finished"):
            request_patiently(client, StatusRequest("test"), give_up_s=60, first_wait_s=30, heartbeat=heartbeat)
        assert time.monotonic() - started < 2
    finally:
        client.close()


def test_heartbeat_answers_say_when_training_finished(free_address):
    server = new_learner(free_address)
    beats = HeartbeatThread(server.address, "actor0", 1, "actor", interval_s=0.1, missed_beats=5)
    stuck = LearnerClient(server.address)  # an actor that asked once and is busy (or lost the answer)
    try:
        assert stuck.request(LeaseRequest("actor0", 1, -1), timeout_s=5) is not None
        with beats:
            deadline = time.monotonic() + 5
            while beats.learner_incarnation != server.coordinator.incarnation and time.monotonic() < deadline:
                time.sleep(0.05)
            assert beats.learner_incarnation == server.coordinator.incarnation and not beats.learner_finished
            server.begin_shutdown(grace_s=5)
            while not beats.learner_finished and time.monotonic() < deadline + 5:
                time.sleep(0.05)
            assert beats.learner_finished
    finally:
        stuck.close()
        server.close()
