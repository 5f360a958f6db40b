"""`tiller run`'s restart rules, on stand-in processes: the learner hears of every death at once, a failure
a restart would repeat ends the run with its message, and a worker that was healthy for a while starts its
restart count again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tiller import placement
from tiller.cli.run import Child, WorkerCannotStart, _tend
from tiller.config import Config, RunConfig


class Exited:
    """A process that has ended with `code` (what `_tend` reads of a Popen)."""

    def __init__(self, code: int):
        self.returncode, self.pid = code, 1

    def poll(self) -> int:
        return self.returncode


def child(tmp_path: Path, code: int, last_line: str, ran_s: float) -> Child:
    log = tmp_path / "actor0.log"
    log.write_text(f"starting\n{last_line}\n")
    c = Child("actor0", placement.Slot("actor0", ()), ["actor"], log, Exited(code))
    c.started_at = time.monotonic() - ran_s
    return c


CFG = Config(run=RunConfig(max_restarts=5, restart_backoff_s=0.0, healthy_after_s=60.0))


def test_every_death_is_told_to_the_learner_and_restarted(tmp_path):
    heard = []
    c = child(tmp_path, -9, "killed", ran_s=5)
    _tend(CFG, c, lambda role, code: heard.append((role, code)))
    assert heard == [("actor0", -9)] and c.restarts == 1 and c.restart_at is not None


@pytest.mark.parametrize("code", [2, 3])  # a config error; weights that do not fit the actor's model
def test_a_failure_a_restart_cannot_fix_ends_the_run_with_its_message(tmp_path, code):
    c = child(tmp_path, code, "error: model.path models/x holds no config.json", ran_s=3)
    with pytest.raises(WorkerCannotStart, match=rf"actor0 failed \(exit {code}\): error: model.path models/x"):
        _tend(CFG, c)


def test_the_same_failure_twice_at_start_ends_the_run(tmp_path):
    c = child(tmp_path, 1, "RuntimeError: the engine could not allocate its KV cache", ran_s=3)
    _tend(CFG, c)  # once: perhaps the machine was busy; restarted
    assert c.restarts == 1
    c.restart_at, c.process, c.started_at = None, Exited(1), time.monotonic() - 3
    with pytest.raises(WorkerCannotStart, match="the same failure twice at start"):
        _tend(CFG, c)


def test_different_failures_or_late_ones_are_restarted(tmp_path):
    c = child(tmp_path, 1, "first error", ran_s=3)
    _tend(CFG, c)
    (tmp_path / "actor0.log").write_text("second, different error\n")
    c.restart_at, c.process, c.started_at = None, Exited(1), time.monotonic() - 3
    _tend(CFG, c)
    assert c.restarts == 2


def test_a_worker_healthy_for_a_while_starts_its_restart_count_again(tmp_path):
    c = child(tmp_path, 1, "lost the connection", ran_s=3)
    c.restarts = 5  # every restart used up by earlier, early deaths
    c.started_at = time.monotonic() - 600  # but this one had run for ten minutes
    _tend(CFG, c)
    assert c.restarts == 1 and not c.gave_up and c.restart_at is not None
