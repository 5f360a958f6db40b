"""Concurrency and bookkeeping found in review: each of these failed before its fix."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tiller.config import LearnerConfig, RolloutConfig
from tiller.learner import checkpoint
from tiller.learner.coordinator import Coordinator
from tiller.learner.prompts import PromptStream
from tiller.learner.server import LearnerServer, WeightSnapshot
from tiller.protocol.messages import LeaseRequest, Shutdown, WorkRequest
from tiller.protocol.transport import LearnerClient


class FilesOnlyTrainer:
    """Writes what a checkpoint holds, as small files: enough for the directory protocol."""

    critic = None

    class _Engine:
        def save_checkpoint(self, path: str, tag: str) -> None:
            Path(path, tag).mkdir(parents=True)
            Path(path, tag, "state.pt").write_bytes(b"weights")

    class _Reference:
        def save_pretrained(self, path: str) -> None:
            Path(path).mkdir(parents=True)

    engine, reference = _Engine(), _Reference()

    def weight_buckets(self, _bytes: int):
        yield [("w", torch.ones(2))]


def test_saving_the_same_step_again_never_removes_what_latest_names(tmp_path, monkeypatch):
    trainer = FilesOnlyTrainer()
    first = checkpoint.save(tmp_path, 3, trainer, {"version": 3})
    assert checkpoint.latest(tmp_path) == first
    real_rename = os.rename

    def crash_on_rename(src, dst):  # the process dies between writing and publishing the new one
        raise OSError("killed")

    monkeypatch.setattr(os, "rename", crash_on_rename)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 3, trainer, {"version": 3})
    assert checkpoint.latest(tmp_path) == first  # still complete: it used to be deleted before the rename
    monkeypatch.setattr(os, "rename", real_rename)
    second = checkpoint.save(tmp_path, 3, trainer, {"version": 4})
    assert second != first and checkpoint.latest(tmp_path) == second
    assert json.loads((second / "learner_state.json").read_text())["version"] == 4
    checkpoint.save(tmp_path, 4, trainer, {"version": 5})
    assert not first.exists()  # KEEP = 2: the oldest of the same step went first


def live_server(address: str) -> LearnerServer:
    prompts = PromptStream([np.array([3, 4], np.int32)] * 50, [""] * 50)
    coordinator = Coordinator(prompts, LearnerConfig(lease_prompts=2, max_inflight_prompts=8), RolloutConfig())
    server = LearnerServer(coordinator, address)
    server.publish(WeightSnapshot(0, []))
    server.start()
    return server


def test_the_socket_thread_closes_its_own_socket(free_address):
    server = live_server(free_address)
    closed_in: list[str] = []
    close = server.endpoint.close
    server.endpoint.close = lambda: (closed_in.append(threading.current_thread().name), close())
    server.shutdown(0.5)
    assert closed_in == ["tiller-learner-server"]  # not the training thread
    assert server.endpoint.socket.closed


def test_the_training_loop_reads_a_snapshot_not_the_live_coordinator(free_address):
    server = live_server(free_address)
    client = LearnerClient(free_address)
    try:
        client.request(LeaseRequest("a", 1, 0), timeout_s=5)
        deadline = time.monotonic() + 5
        while server.public["counters"]["leases_issued"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        snapshot = server.public
        assert snapshot["counters"]["leases_issued"] == 1 and snapshot["actor_versions"] == {"a#1": 0}
        assert snapshot["actor_versions"] is not server.coordinator.actor_versions  # a copy, replaced whole
    finally:
        client.close()
        server.close()


@pytest.mark.slow
def test_a_learner_that_fails_still_tells_waiting_workers_to_stop(tiny_policy_dir, tmp_path, free_address,
                                                                monkeypatch):
    """Any exception in training (not only pre-emption) ends with Shutdown to the workers, so a
    hand-started judge does not wait `learner_timeout_s` (600 s) for a learner that is gone."""
    from tiller.config import load_config
    from tiller.learner import main

    cfg = load_config(None, [f"output_dir={tmp_path}", f"model.path={tiny_policy_dir}", f"learner.address={free_address}",
                             "learner.shutdown_grace_s=3", "metrics.wandb=disabled"])
    heard: list = []

    def judge_then_fail(*args, **kwargs):
        judge = LearnerClient(free_address)
        judge.send(WorkRequest("judge0", 1, "rule"))  # parked: no work yet
        threading.Thread(target=lambda: heard.append(judge.receive(10.0)), daemon=True).start()
        time.sleep(0.5)
        raise RuntimeError("something broke mid-run")

    monkeypatch.setattr(main, "train", judge_then_fail)
    with pytest.raises(RuntimeError, match="broke mid-run"):
        main.run(cfg)
    deadline = time.monotonic() + 10
    while not heard and time.monotonic() < deadline:
        time.sleep(0.05)
    assert heard and isinstance(heard[0], Shutdown)
