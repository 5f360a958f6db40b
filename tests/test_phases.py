"""Per-phase timings: the learner's own phases, the actors' reported ones, queues, staleness histogram."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tiller.config import LearnerConfig, RolloutConfig
from tiller.learner.coordinator import Coordinator
from tiller import timeline
from tiller.learner.phases import StepClock
from tiller.timeline import STARTED_ENV
from tiller.learner.prompts import PromptStream
from tiller.protocol.messages import LeaseRequest, Rollout

K = 2


def rollout(lease, generate=0.5, load=0.25, idle=0.125) -> Rollout:
    n = len(lease.prompt_ids) * K
    return Rollout("a", 1, lease.lease_id, 1, 0, np.ones(n * 3, np.int32), np.full(n, 3, np.int32),
                   np.zeros(n * 3, np.float32), np.zeros(n, bool), generate, load, idle)


def test_the_coordinator_sums_what_accepted_rollouts_report_and_clamps_nonsense():
    prompts = PromptStream([np.array([3, 4], np.int32)] * 10, [""] * 10)
    c = Coordinator(prompts, LearnerConfig(lease_prompts=2, max_inflight_prompts=8),
                    RolloutConfig(samples_per_prompt=K, max_new_tokens=3))
    first, second = (c.on_lease_request(LeaseRequest("a", 1, 0)) for _ in range(2))
    assert c.on_rollout(rollout(first))
    assert c.on_rollout(rollout(second, generate=-5.0, load=1e9))  # an actor's report is not trusted blindly
    assert not c.on_rollout(rollout(first))  # a duplicate adds nothing
    assert c.phases.generate_s == 0.5 and c.phases.load_s == 0.25 + 3600.0 and c.phases.idle_s == 0.25
    assert c.phases.tokens_generated == 2 * 2 * K * 3
    assert c.awaiting_judges == 2


def test_a_step_reports_its_phases_the_actors_differences_queues_and_lags(monkeypatch):
    monkeypatch.setenv(STARTED_ENV, str(time.time() - 5.0))
    public = {"phases": {"generate_s": 1.0, "load_s": 0.0, "idle_s": 0.0, "tokens_generated": 100}}
    clock = StepClock(public)
    with clock.phase("wait"):
        time.sleep(0.05)
    with clock.phase("train"):
        time.sleep(0.02)
    later = {"phases": {"generate_s": 4.0, "load_s": 0.5, "idle_s": 0.5, "tokens_generated": 400},
             "queues": {"awaiting_judges": 3, "inflight_prompts": 12}}
    m = clock.finish(later, lags=[0, 1, 1, 2], lag_bound=2, trained_tokens=50)
    assert 0.05 <= m["time/wait_s"] < 1.0 and 0.02 <= m["time/train_s"] < 1.0  # sleeps overshoot on a busy host
    assert m["time/step_s"] >= m["time/wait_s"] + m["time/train_s"]
    assert 0.5 < m["learner/idle_frac"] < 1.0
    assert (m["actors/generate_s"], m["actors/load_s"], m["actors/idle_s"]) == (3.0, 0.5, 0.5)
    assert m["actors/idle_frac"] == pytest.approx(0.5 / 4.0)
    assert m["tokens/generated_per_s"] == pytest.approx(300 / m["time/step_s"])
    assert m["tokens/trained_per_s"] == pytest.approx(50 / m["time/step_s"])
    assert (m["queue/awaiting_judges"], m["queue/inflight_prompts"]) == (3, 12)
    assert (m["staleness/lag_0"], m["staleness/lag_1"], m["staleness/lag_2"]) == (0.25, 0.5, 0.25)
    assert m["time/first_step_s"] == pytest.approx(5.0, abs=1.0)
    again = clock.finish(later, lags=[0], lag_bound=2, trained_tokens=0)
    assert "time/first_step_s" not in again and again["actors/generate_s"] == 0.0


def test_tiller_plot_draws_what_the_metrics_hold(tmp_path):
    import json

    from typer.testing import CliRunner

    from tiller.cli import app

    rows = [{"step": s, "policy_version": s, "reward/mean": 0.1 * s, "loss": 1.0 / s, "grad_norm": None,
             "samples_per_s": 100.0, "tokens/generated_per_s": 900.0, "tokens/trained_per_s": 800.0,
             "staleness/lag_0": 0.25, "staleness/lag_1": 0.75, "time/wait_s": 0.1, "time/train_s": 0.2,
             "time/publish_s": 0.01} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert names == ["loss.png", "phases.png", "reward.png", "staleness.png", "throughput.png"]  # no KL in DPO rows
    assert all((tmp_path / "plots" / n).stat().st_size > 5000 for n in names)
    dpo = [{**r, "rewards/accuracy": 0.75, "response_length/mean": 20.0 - r["step"], "logps/chosen": -9.0,
            "logps/rejected": -12.0, "offpolicy/logratio": -0.01, "kl/sequence": 2.0 * r["step"]} for r in rows]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dpo))
    assert CliRunner().invoke(app, ["plot", str(tmp_path)]).exit_code == 0
    assert {p.name for p in (tmp_path / "plots").glob("*.png")} == set(names) | {"kl.png", "pairs.png", "length.png",
                                                                                "logps.png"}
    # a run's milestones (tiller/timeline.py) become a timeline chart beside them
    marks = [("launcher", "workers started", 0.5), ("actor0", "engine built", 9.0), ("launcher", "learner started", 2.0),
             ("learner", "listening", 8.0), ("learner", "first step trained", 10.0)]
    (tmp_path / timeline.FILE).write_text("".join(json.dumps({"process": p, "event": e, "s": s}) + "\n"
                                                  for p, e, s in marks))
    result = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 0 and "timeline.png" in result.output
    assert (tmp_path / "plots" / "timeline.png").stat().st_size > 5000
    missing = CliRunner().invoke(app, ["plot", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no metrics" in missing.output


def test_milestones_share_the_runs_clock_and_survive_a_torn_line_and_an_unwritable_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(STARTED_ENV, str(time.time() - 3.0))  # `tiller run` started 3 s ago
    assert timeline.mark(tmp_path, "actor0", "engine built") == pytest.approx(3.0, abs=1.0)
    monkeypatch.setenv(STARTED_ENV, str(time.time() - 1.0))  # a second process, on the same clock
    timeline.mark(tmp_path, "learner", "listening")
    with open(tmp_path / timeline.FILE, "a") as out:
        out.write('{"process": "judge0", "ev')  # a process killed mid-write
    marks = timeline.read(tmp_path)
    assert [(m["process"], m["event"]) for m in marks] == [("learner", "listening"), ("actor0", "engine built")]
    assert timeline.read(tmp_path / "nowhere") == []
    timeline.mark(tmp_path / "fresh", "actor0", "imported")  # a worker started by hand may be first: made
    assert [m["event"] for m in timeline.read(tmp_path / "fresh")] == ["imported"]
    (tmp_path / "a file").write_text("")
    timeline.mark(tmp_path / "a file" / "run", "actor0", "imported")  # logged, never raised: a run is not failed by this
