"""CURVE: authorised workers get in, unknown keys get nothing (and are logged); binding rules."""

from __future__ import annotations

import logging
import time

import pytest

from tiller.config import SecurityConfig
from tiller.protocol import LearnerClient, RouterEndpoint
from tiller.protocol.messages import LeaseRequest, Shutdown
from tiller.protocol.security import SecurityError, check_bind, create_keys, is_loopback


@pytest.mark.parametrize("address,loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:1", True), ("tcp://[::1]:5555", True),
    ("ipc:///tmp/tiller.sock", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False),
    ("tcp://10.1.2.3:5555", False), ("tcp://eth0:5555", False),
])
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_binding_beyond_loopback_needs_keys_or_the_loud_flag(tmp_path):
    with pytest.raises(SecurityError, match="tiller keys"):
        check_bind("tcp://0.0.0.0:5555", SecurityConfig())
    check_bind("tcp://0.0.0.0:5555", SecurityConfig(allow_insecure_network=True))
    check_bind("tcp://0.0.0.0:5555", SecurityConfig(server_secret_key="x"))
    check_bind("tcp://127.0.0.1:5555", SecurityConfig())


@pytest.fixture
def keyring(tmp_path):
    _, server_secret = create_keys(tmp_path / "learner", "learner")
    worker_public, worker_secret = create_keys(tmp_path / "worker", "worker")
    other_public, other_secret = create_keys(tmp_path / "other", "other")
    _, stranger_secret = create_keys(tmp_path / "stranger", "stranger")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "worker.key").write_bytes(worker_public.read_bytes())
    (authorized / "other.key").write_bytes(other_public.read_bytes())
    server = SecurityConfig(server_secret_key=str(server_secret), authorized_keys_dir=str(authorized))
    learner_public = str(tmp_path / "learner" / "learner.key")
    return {
        "server": server,
        "worker": SecurityConfig(client_secret_key=str(worker_secret), server_public_key=learner_public),
        "stranger": SecurityConfig(client_secret_key=str(stranger_secret), server_public_key=learner_public),
        "other": SecurityConfig(client_secret_key=str(other_secret), server_public_key=learner_public),
    }


def test_curve_admits_authorised_keys_only(keyring, free_address, caplog):
    server = RouterEndpoint(free_address, security=keyring["server"])
    stranger = LearnerClient(free_address, security=keyring["stranger"])
    plain = LearnerClient(free_address)  # no CURVE at all
    worker = LearnerClient(free_address, security=keyring["worker"])
    try:
        with caplog.at_level(logging.WARNING, logger="tiller.protocol.security"):
            stranger.send(LeaseRequest("stranger", 1, 0))
            plain.send(LeaseRequest("plain", 1, 0))
            assert not server.poll(2000), "an unauthorised client got a message through"
            assert server.authorized.denied >= 1
            assert "unknown key" in caplog.text
        worker.send(LeaseRequest("worker", 1, 0))
        assert server.poll(5000)
        identity, message = server.recv()
        assert message == LeaseRequest("worker", 1, 0)
        server.send(identity, Shutdown("bye"))
        assert worker.receive(5.0) == Shutdown("bye")
        assert stranger.receive(0.5) is None and plain.receive(0.5) is None
    finally:
        for client in (stranger, plain, worker):
            client.close()
        server.close()


def test_missing_key_files_are_clear_errors(tmp_path, free_address):
    bad = SecurityConfig(server_secret_key=str(tmp_path / "nope.key_secret"), authorized_keys_dir=str(tmp_path))
    with pytest.raises(SecurityError, match="does not exist"):
        RouterEndpoint(free_address, security=bad)


def test_tiller_keys_writes_key_pairs(tmp_path):
    from typer.testing import CliRunner

    from tiller.cli import app

    result = CliRunner().invoke(app, ["keys", str(tmp_path), "--name", "learner", "--name", "actor7"])
    assert result.exit_code == 0, result.output
    for name in ("learner", "actor7"):
        assert (tmp_path / f"{name}.key").exists() and (tmp_path / f"{name}.key_secret").exists()
    assert "secret-key" not in (tmp_path / "actor7.key").read_text()  # the public file holds no secret
    assert "secret-key" in (tmp_path / "actor7.key_secret").read_text()


def test_a_name_belongs_to_its_key_and_plaintext_attempts_are_counted(keyring, free_address):
    """Under CURVE an authorized key cannot act under a name another key uses, and clients that do
    not speak CURVE at all (dropped silently by ZeroMQ) are counted and logged."""
    import numpy as np

    from tiller.config import LearnerConfig, RolloutConfig
    from tiller.learner.coordinator import Coordinator
    from tiller.learner.prompts import PromptStream
    from tiller.learner.server import LearnerServer, WeightSnapshot
    import zmq

    from tiller.protocol import encode
    from tiller.protocol.messages import Lease

    prompts = PromptStream([np.array([3, 4], np.int32)] * 100, [""] * 100)
    coordinator = Coordinator(prompts, LearnerConfig(lease_prompts=2, max_inflight_prompts=16), RolloutConfig())
    server = LearnerServer(coordinator, free_address, security=keyring["server"])
    server.publish(WeightSnapshot(0, []))
    server.start()
    worker = LearnerClient(free_address, security=keyring["worker"])
    other = LearnerClient(free_address, security=keyring["other"])
    plain = [LearnerClient(free_address) for _ in range(3)]
    try:
        assert isinstance(worker.request(LeaseRequest("worker", 1, 0), timeout_s=10), Lease)
        assert other.request(LeaseRequest("worker", 2, 0), timeout_s=2) is None  # another key, the same name
        assert isinstance(other.request(LeaseRequest("other", 1, 0), timeout_s=10), Lease)  # its own name is fine
        for client in plain:  # their handshakes fail at connect; a send may find no connection to leave by
            try:
                client.socket.send_multipart(encode(LeaseRequest("plain", 1, 0)), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        deadline = time.monotonic() + 10
        while server.endpoint.stats.handshakes_failed < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.peers.impersonations == 1 and server.endpoint.stats.handshakes_failed >= 3
        assert server.alive and server.handler_errors == 0
    finally:
        for client in (worker, other, *plain):
            client.close()
        server.close()


def test_a_worker_send_that_cannot_leave_gives_up_instead_of_hanging(keyring, free_address, monkeypatch):
    """A plaintext DEALER whose handshake the CURVE learner refused has no connection to send on and
    used to block forever in send(); now it drops the message after SEND_TIMEOUT_S and goes on."""
    from tiller.protocol import transport

    monkeypatch.setattr(transport, "SEND_TIMEOUT_S", 0.3)
    server = RouterEndpoint(free_address, security=keyring["server"])
    plain = LearnerClient(free_address)
    try:
        started = time.monotonic()
        for _ in range(5):
            plain.send(LeaseRequest("plain", 1, 0))
            time.sleep(0.2)
        assert time.monotonic() - started < 10
        assert not server.poll(500)
    finally:
        plain.close()
        server.close()
