"""Alive is not making progress: a worker whose heartbeats go on while its work does not is declared stuck,
its work goes to others at once, and it ends itself to be restarted; a worker `tiller run` saw exit hands its
work on without waiting for missed heartbeats. Real LearnerServer, real sockets, a real worker process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tiller.actors.worker import STUCK_EXIT_CODE
from tiller.config import LearnerConfig, RolloutConfig
from tiller.learner.coordinator import Coordinator
from tiller.learner.prompts import PromptStream
from tiller.learner.server import LearnerServer, WeightSnapshot
from tiller.protocol.messages import Heartbeat, HeartbeatAck, Lease, LeaseRequest, WorkerExited
from tiller.protocol.transport import LearnerClient


@pytest.fixture
def learner(free_address):
    prompts = PromptStream([np.array([3 + i % 20, 4], np.int32) for i in range(100)], [""] * 100)
    coordinator = Coordinator(prompts, LearnerConfig(batch_size=4, lease_prompts=4, max_inflight_prompts=4),
                              RolloutConfig(samples_per_prompt=2, max_new_tokens=8), vocab_size=64)
    server = LearnerServer(coordinator, free_address, heartbeat_s=0.5, missed_beats=20, stuck_after_s=1.0)
    server.publish(WeightSnapshot(0, []))
    server.start()
    clients: list[LearnerClient] = []

    def client() -> LearnerClient:
        clients.append(LearnerClient(server.address))
        return clients[-1]

    yield server, client
    for c in clients:
        c.close()
    server.close()


def counters(server: LearnerServer) -> dict:
    return server.coordinator_state(timeout_s=10)["counters"]


def test_a_worker_working_past_the_bound_is_declared_stuck_and_its_lease_handed_on(learner):
    server, client = learner
    actor, beats, other = client(), client(), client()
    lease = actor.request(LeaseRequest("actor0", 1, 0), timeout_s=5)
    assert isinstance(lease, Lease)
    assert not isinstance(other.request(LeaseRequest("actor1", 1, 0), timeout_s=5), Lease)  # every credit is taken
    ack = beats.request(Heartbeat("actor0", 1, "actor", 0.5), timeout_s=5)
    assert isinstance(ack, HeartbeatAck) and not ack.stuck  # working, within the bound
    ack = beats.request(Heartbeat("actor0", 1, "actor", 1.5), timeout_s=5)
    assert isinstance(ack, HeartbeatAck) and ack.stuck
    assert counters(server)["leases_expired"] == 1
    handed = other.request(LeaseRequest("actor1", 1, 0), timeout_s=5)
    assert isinstance(handed, Lease) and sorted(handed.prompt_ids) == sorted(lease.prompt_ids)
    assert server.stuck_peers == {"actor0#1"}


def test_a_worker_tiller_run_saw_exit_hands_its_lease_on_at_once(learner):
    server, client = learner
    actor, supervisor, other = client(), client(), client()
    lease = actor.request(LeaseRequest("actor0", 7, 0), timeout_s=5)
    assert isinstance(lease, Lease)
    supervisor.send(WorkerExited("actor0", -9))
    handed = other.request(LeaseRequest("actor1", 1, 0), timeout_s=5)
    assert isinstance(handed, Lease) and sorted(handed.prompt_ids) == sorted(lease.prompt_ids)
    assert counters(server)["leases_expired"] == 1 and server.workers_exited == 1
    assert "actor0#7" not in server.peers.identities.values()  # a shutdown will not wait to tell it


def test_a_stuck_worker_process_ends_itself_with_its_exit_code(learner):
    server, _ = learner
    worker = textwrap.dedent(f"""
        import time
        from tiller.actors.worker import HeartbeatThread
        beats = HeartbeatThread({server.address!r}, "actor0", 1, "actor", interval_s=0.1, missed_beats=5)
        beats.start()
        with beats.working():
            time.sleep(60)  # a hung generation: the main thread never comes back
    """)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True, timeout=60)
    assert done.returncode == STUCK_EXIT_CODE, done.stderr[-2000:]
    assert "declared this worker stuck" in done.stderr and time.monotonic() - started < 30
