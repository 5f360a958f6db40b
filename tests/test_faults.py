"""Parts die mid-run, or strangers send garbage: the run still completes, and every prompt is
trained on exactly once. Real processes on 127.0.0.1, bounded in time."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from tiller.protocol import encode
from tiller.protocol.messages import Lease, LeaseRequest, Rollout, Scores, WeightsRequest, WorkRequest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]')")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]


class Run:
    """A learner and workers started by hand, each with its own log file."""

    live: list["Run"] = []  # killed after each test, passed or failed (a leftover learner holds its ports)

    def __init__(self, tmp_path: Path, model_dir: Path, address: str, steps: int, extra: list[str] = ()):
        Run.live.append(self)
        self.tmp, self.address = tmp_path, address
        self.args = [
            "name=faults", f"output_dir={tmp_path}", f"model.path={model_dir}", f"learner.address={address}",
            f"learner.steps={steps}", "learner.batch_size=8", "learner.lease_prompts=4",
            "learner.max_inflight_prompts=16", "learner.lr=3e-4", "learner.lease_timeout_s=8",
            "learner.shutdown_grace_s=5", "rollout.max_model_len=64", "rollout.learner_timeout_s=60",
            "judge.learner_timeout_s=60", *extra,
        ]
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: str) -> None:
        ident = [] if command == "learner" else ["--id", name, "--learner", self.address]
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tiller", command, *ident, "--config", "configs/demo.yaml", *self.args],
            cwd=ROOT, stdout=(self.tmp / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
        )

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def wait_for_log(self, name: str, text: str, timeout_s: float = 240, start: str = "") -> None:
        """Wait until `text` is in process `name`'s log (on a line beginning with `start`); fail if the
        process ends first or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(line.startswith(start) and text in line for line in self.log(name).splitlines()):
                return
            assert self.procs[name].poll() is None, self.log(name)[-3000:]
            time.sleep(0.3)
        raise AssertionError(f"{name} never logged {text!r}:\n{self.log(name)[-3000:]}")

    def wait_for_step(self, step: int, timeout_s: float = 240) -> None:
        self.wait_for_log("learner", f" {step}/", timeout_s, start="step ")

    def finish(self, timeout_s: float = 300) -> dict:
        try:
            assert self.procs["learner"].wait(timeout=timeout_s) == 0, self.log("learner")[-3000:]
            for proc in self.procs.values():
                if proc.returncode is None:
                    proc.wait(timeout=60)
        finally:
            for proc in self.procs.values():
                proc.kill()
        return json.loads((self.tmp / "faults" / "summary.json").read_text())

    def records(self) -> list[dict]:
        return [json.loads(line) for line in (self.tmp / "faults" / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    yield
    for run in Run.live:
        for proc in run.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    Run.live.clear()


def assert_exactly_once(run: Run, steps: int) -> None:
    records = run.records()
    used = Counter(r["prompt_id"] for r in records if r["outcome"] in ("trained", "no_preference"))
    assert not [p for p, n in used.items() if n > 1], "a prompt was trained twice"
    assert sum(r["outcome"] == "trained" for r in records) == steps * 8
    assert all(r["learner_version"] - r["policy_version"] <= 2 for r in records if r["outcome"] == "trained")


def take_a_lease_and_vanish(address: str) -> Lease:
    """An actor that leases prompts and dies before returning them: its lease must expire."""
    from tiller.protocol.transport import LearnerClient

    client = LearnerClient(address)
    try:
        reply = client.request(LeaseRequest("doomed", 1, -1), timeout_s=120)
    finally:
        client.close()
    assert isinstance(reply, Lease), reply
    return reply


def _death_line(log: str, name: str) -> str:
    return next((line for line in log.splitlines() if f"{name}#" in line and "declared dead" in line), "")


def test_kill_an_actor_and_the_judge_mid_run(tiny_policy_dir, tmp_path, free_address):
    steps = 14
    run = Run(tmp_path, tiny_policy_dir, free_address, steps)
    run.start("learner", "learner")
    doomed = take_a_lease_and_vanish(free_address)
    for name in ("actor0", "actor1"):
        run.start(name, "actor")
    run.start("judge0", "judge")
    run.wait_for_step(3)
    # the other actor can reach step 3 alone: kill this one only once it has fetched weights (the learner knows it)
    run.wait_for_log("actor0", "loaded policy version")
    os.kill(run.procs["actor0"].pid, signal.SIGKILL)
    os.kill(run.procs["judge0"].pid, signal.SIGKILL)
    # No judge is left, so training waits; the learner must notice both deaths by their heartbeats.
    deadline = time.monotonic() + 60
    dead = lambda: all(_death_line(run.log("learner"), name) for name in ("actor0", "judge0"))  # noqa: E731
    while time.monotonic() < deadline and not dead():
        time.sleep(0.5)
    assert dead(), run.log("learner")[-3000:]
    run.start("judge1", "judge")  # a fresh judge takes over the dead one's tasks
    summary = run.finish()
    assert summary["steps"] == steps
    assert "judge1" in summary["judge_work"] and "actor1" in summary["actor_work"]
    assert {p.split("#")[0] for p in summary["dead_peers"]} >= {"actor0", "judge0"}
    assert_exactly_once(run, steps)
    last = json.loads((tmp_path / "faults" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["system/leases/expired"] >= 1
    trained = {r["prompt_id"] for r in run.records() if r["outcome"] in ("trained", "no_preference")}
    assert set(doomed.prompt_ids.tolist()) <= trained  # the vanished lease's prompts were leased again


def garbage_frames(rng: random.Random) -> list[bytes]:
    """Random bytes, or a valid message with bytes flipped, cut short or fields swapped."""
    valid = [
        encode(LeaseRequest("fuzz", 1, 0)), encode(WorkRequest("fuzz", 1, "rule")), encode(WeightsRequest(0, 0, 0)),
        encode(Scores("fuzz", 1, rng.randrange(50), np.zeros(16, np.float32), np.zeros(4, np.int32),
                      np.zeros(4, np.int32), np.ones(4, np.int32), np.zeros(3, np.int32),
                      np.array([3] + [-1] * 15, np.int32), 0.0, {"tasks": 1.0})),
        encode(Rollout("fuzz", 1, rng.randrange(50), 1, 0, np.zeros(400, np.int32), np.full(16, 25, np.int32),
                       np.zeros(400, np.float32), np.zeros(16, bool), 0.0)),
    ]
    choice = rng.random()
    if choice < 0.3:
        return [rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 4))]
    frames = [bytes(memoryview(f)) for f in rng.choice(valid)]
    if choice < 0.6:
        body = bytearray(frames[0])
        for _ in range(rng.randrange(1, 5)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        frames[0] = bytes(body)
    elif choice < 0.75:
        frames[0] = frames[0][: rng.randrange(len(frames[0]))]
    elif choice < 0.9:
        items = msgpack.unpackb(frames[0], raw=False)
        items[rng.randrange(2, len(items))] = rng.choice([None, -1, 2**63, "x" * 50, [1, [2, [3]]], {"a": 1}, 1.5])
        frames[0] = msgpack.packb(items)
    else:
        frames = frames + [rng.randbytes(64)] if rng.random() < 0.5 else frames[:1]
    return frames


def test_fuzzing_the_learner_socket_during_a_run(tiny_policy_dir, tmp_path, free_address):
    """10,000 random and mutated frames at the learner while a real run goes on beside them.

    Messages that decode but carry nonsense (bogus lease ids, wrong sizes) are dropped by the
    coordinator; the rest are rejected by the codec. Nothing crashes, and the run completes.
    """
    steps = 8
    run = Run(tmp_path, tiny_policy_dir, free_address, steps)
    run.start("learner", "learner")
    for name in ("actor0", "judge0"):
        run.start(name, "actor" if name.startswith("actor") else "judge")
    run.wait_for_step(1)
    rng = random.Random(1234)
    context = zmq.Context.instance()
    sent = 0
    deadline = time.monotonic() + 120
    while sent < 10_000 and time.monotonic() < deadline:
        sock = context.socket(zmq.DEALER)  # a new stranger every 100 frames
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(free_address)
        for _ in range(100):
            sock.send_multipart(garbage_frames(rng))
            sent += 1
        time.sleep(0.01)
        sock.close()
    assert sent == 10_000
    summary = run.finish()
    assert summary["steps"] == steps
    assert summary["protocol_rejected"] > 3000  # the codec's share; the learner logged each one
    assert "Traceback" not in run.log("learner")
    assert_exactly_once(run, steps)


def test_an_authenticated_run_completes_while_a_stranger_is_refused(tiny_policy_dir, tmp_path, free_address):
    from tiller.config import SecurityConfig
    from tiller.protocol.security import create_keys
    from tiller.protocol.transport import LearnerClient

    _, learner_secret = create_keys(tmp_path / "keys", "learner")
    worker_public, worker_secret = create_keys(tmp_path / "keys", "worker")
    _, stranger_secret = create_keys(tmp_path / "stranger", "stranger")
    (tmp_path / "authorized").mkdir()
    (tmp_path / "authorized" / "worker.key").write_bytes(worker_public.read_bytes())
    learner_public = tmp_path / "keys" / "learner.key"
    security = [f"security.server_secret_key={learner_secret}", f"security.authorized_keys_dir={tmp_path / 'authorized'}",
                f"security.client_secret_key={worker_secret}", f"security.server_public_key={learner_public}"]
    steps = 4
    run = Run(tmp_path, tiny_policy_dir, free_address, steps, extra=security)
    run.start("learner", "learner")
    run.start("actor0", "actor")
    run.start("judge0", "judge")
    deadline = time.monotonic() + 120
    while "learner listening" not in run.log("learner") and time.monotonic() < deadline:
        time.sleep(0.3)
    stranger = LearnerClient(free_address, security=SecurityConfig(client_secret_key=str(stranger_secret),
                                                                   server_public_key=str(learner_public)))
    try:
        assert stranger.request(LeaseRequest("stranger", 1, 0), timeout_s=3.0) is None
    finally:
        stranger.close()
    summary = run.finish()
    assert summary["steps"] == steps and summary["curve_refused"] >= 1
    assert "unknown key" in run.log("learner")
    assert_exactly_once(run, steps)


def test_kill_the_learner_and_resume_it(tiny_policy_dir, tmp_path, free_address):
    """kill -9 the learner after a checkpoint; `tiller learner --resume` continues step, version and
    data position, and the actors (never restarted) reconnect by themselves: a fetch or a lease request
    the dead learner never answered is asked again of the resumed one as soon as the heartbeats see it,
    and every worker leaves within seconds of the end."""
    steps = 16
    run = Run(tmp_path, tiny_policy_dir, free_address, steps, extra=["learner.checkpoint_every=3"])
    run.start("learner", "learner")
    run.start("actor0", "actor")
    run.start("actor1", "actor")
    run.start("judge0", "judge")
    run.wait_for_step(7)
    os.kill(run.procs["learner"].pid, signal.SIGKILL)
    run.procs["learner"].wait()
    checkpoint = (tmp_path / "faults" / "checkpoints" / "latest").read_text().strip()
    resumed_at = int(checkpoint.split("-")[1])
    assert resumed_at >= 6
    run.procs["learner"] = subprocess.Popen(
        [sys.executable, "-m", "tiller", "learner", "--resume", str(tmp_path / "faults")],
        cwd=ROOT, stdout=(tmp_path / "learner.log").open("a"), stderr=subprocess.STDOUT)
    assert run.procs["learner"].wait(timeout=300) == 0, run.log("learner")[-3000:]
    ended = time.monotonic()
    for name in ("actor0", "actor1", "judge0"):
        assert run.procs[name].wait(timeout=60) == 0, run.log(name)[-3000:]
    assert time.monotonic() - ended < 20, "a worker did not leave within seconds of the end"
    summary = run.finish()
    assert "resuming from" in run.log("learner")
    assert {"actor0", "actor1"} <= set(summary["actor_work"])  # both did work for the resumed learner
    metrics = [json.loads(line) for line in (tmp_path / "faults" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))  # no step lost or repeated
    assert [m["train/policy_version"] for m in metrics] == list(range(1, steps + 1))
    assert summary["steps"] == steps and "actor0" in summary["actor_work"]  # the same actor, reconnected
    assert_exactly_once(run, steps)
    used = sorted(r["prompt_id"] for r in run.records() if r["outcome"] in ("trained", "no_preference"))
    assert used[-1] < len(used) + 16 + 4, "prompts were skipped across the restart"
