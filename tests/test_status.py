"""`tiller status`: a running learner's socket answers with its progress and each worker's share."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from tiller.cli import app
from tiller.config import LearnerConfig, RolloutConfig
from tiller.learner.coordinator import Coordinator
from tiller.learner.prompts import PromptStream
from tiller.learner.server import LearnerServer, WeightSnapshot
from tiller.protocol.messages import Heartbeat, Lease, LeaseRequest, Rollout, Status, StatusRequest
from tiller.protocol.transport import LearnerClient

K = 2


def test_status_reports_the_learner_and_its_workers(free_address):
    prompts = PromptStream([np.array([3, 4], np.int32)] * 100, [""] * 100)
    coordinator = Coordinator(prompts, LearnerConfig(lease_prompts=2, max_inflight_prompts=8),
                              RolloutConfig(samples_per_prompt=K, max_new_tokens=3), vocab_size=64)
    server = LearnerServer(coordinator, free_address, heartbeat_s=0.5, missed_beats=20)
    server.publish(WeightSnapshot(0, []))
    server.start()
    actor = LearnerClient(free_address)
    try:
        assert actor.request(Heartbeat("actor-7", 1, "actor"), 10) is not None  # known to the learner
        first = actor.request(LeaseRequest("actor-7", 1, 0), 10)
        second = actor.request(LeaseRequest("actor-7", 1, 0), 10)
        assert isinstance(first, Lease) and isinstance(second, Lease)
        n = len(first.prompt_ids) * K
        actor.send(Rollout("actor-7", 1, first.lease_id, 1, 0, np.ones(n, np.int32), np.ones(n, np.int32),
                           np.zeros(n, np.float32), np.zeros(n, bool), 0.1))
        server.progress = {"step": 3, "steps": 10, "perf/samples_per_s": 12.5, "reward/mean": 0.25}
        asker = LearnerClient(free_address)
        reply = None
        for _ in range(20):  # bounded: the rollout is handled before a later request
            reply = asker.request(StatusRequest("test"), 10)
            if isinstance(reply, Status) and reply.actor_rollouts == [1]:
                break
        asker.close()
        assert isinstance(reply, Status)
        assert (reply.step, reply.steps, reply.samples_per_s, reply.reward_mean) == (3, 10, 12.5, 0.25)
        assert reply.actors == ["actor-7"] and reply.actor_leases == [1] and reply.actor_rollouts == [1]
        assert reply.awaiting_judges == 1 and reply.counters["leases_issued"] == 2.0
        result = CliRunner().invoke(app, ["status", "--learner", free_address])
        assert result.exit_code == 0, result.output
        assert "step 3/10" in result.output and "actor-7" in result.output
    finally:
        actor.close()
        server.close()


def test_status_says_when_no_learner_answers(free_address):
    result = CliRunner().invoke(app, ["status", "--learner", free_address, "--timeout", "0.3"])
    assert result.exit_code == 1 and "no answer from a learner" in result.output


def test_status_prints_worker_names_without_control_characters():
    """Workers name themselves; a name is wire data and must not drive the operator's terminal."""
    from tiller.cli.status import format_status

    hostile = ["actor\x1b[2J\x1b[1;1Hlearner: all fine", "line\nbreak", "rtl\u202egnp.exe", "bell\x07\x00\x7f"]
    status = Status(learner_incarnation=1, policy_version=3, step=3, steps=10, samples_per_s=1.0, reward_mean=0.5,
                    inflight_prompts=0, awaiting_judges=0, actors=hostile, actor_versions=[3] * 4,
                    actor_leases=[0] * 4, actor_rollouts=[1] * 4, judges=["judge\r\x1b]0;pwned\x07"], judge_tasks=[2],
                    counters={"rejected\x1b[31m": 1.0})
    out = format_status(status)
    assert all(c.isprintable() for line in out.splitlines() for c in line)
    assert len(out.splitlines()) == 3 + 1 + 4 + 2 + 1 + 2  # header, actor table, judge table, counters: no extra line
    for name in ("actor[2J[1;1Hlearner: all fine", "linebreak", "rtlgnp.exe", "bell", "judge]0;pwned", "rejected[31m"):
        assert name in out
