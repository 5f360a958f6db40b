"""End to end: a learner, two vLLM rollout actors and a judge as real OS processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tiller import timeline
from tiller.metric_names import GROUPS

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]')")
pytestmark = pytest.mark.slow

STEPS, BATCH = 8, 8


def overrides(tmp_path: Path, model_dir: Path, address: str, name: str) -> list[str]:
    return [
        f"name={name}", f"output_dir={tmp_path}", f"model.path={model_dir}", f"learner.address={address}",
        f"learner.steps={STEPS}", f"learner.batch_size={BATCH}", "learner.lease_prompts=4",
        "learner.max_inflight_prompts=16", "learner.lr=3e-4", "learner.shutdown_grace_s=10",
        "rollout.max_model_len=64", "rollout.learner_timeout_s=120", "judge.learner_timeout_s=120",
    ]


def check_run(run_dir: Path, actors_with_work: int = 2) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    # the policy version advanced with every step, and the actors picked the new versions up
    assert [m["train/policy_version"] for m in metrics] == list(range(1, STEPS + 1))
    # Both actors joined; the busy one swapped new versions in while running. (A late actor whose
    # first generation warms vLLM up may see the run end before it asks again, so not "both".)
    assert len(summary["actor_versions"]) == 2 and max(summary["actor_versions"].values()) >= STEPS // 2
    assert len(summary["actor_work"]) >= actors_with_work
    # exactly once: no prompt is trained (or judged without preference) twice
    used = [r["prompt_id"] for r in records if r["outcome"] in ("trained", "no_preference")]
    assert not [p for p, n in Counter(used).items() if n > 1]
    assert sum(r["outcome"] == "trained" for r in records) == STEPS * BATCH
    assert all(r["learner_version"] - r["policy_version"] <= 2 for r in records if r["outcome"] == "trained")
    for key in ("step", "train/policy_version", "reward/mean", "train/loss", "perf/samples_per_s",
                "train/staleness/mean", "perf/time/wait_s", "perf/time/train_s", "perf/time/publish_s",
                "perf/learner_idle_frac", "perf/actors/idle_frac", "perf/tokens_trained_per_s",
                "system/queue/inflight_prompts", "train/staleness/lag_0", "perf/weights/publish_gbps", "train/lr"):
        assert key in metrics[-1], key
    # every logged name sits in one of the groups (tiller/metric_names.py), none under its old name
    assert all(k == "step" or k.split("/")[0] in GROUPS for m in metrics for k in m), sorted(metrics[-1])
    # where the time went: the first step is timed from the start, the actors' phases arrive with rollouts
    assert 0 < metrics[0]["perf/time/first_step_s"] < 300
    assert all("perf/time/first_step_s" not in m for m in metrics[1:])
    assert sum(m["perf/actors/generate_s"] for m in metrics) > 0
    assert sum(m["perf/tokens_generated_per_s"] for m in metrics) > 0
    assert all(0 <= m["perf/learner_idle_frac"] <= 1 for m in metrics)
    # completions people can read: the first step and every log_completions_every-th, decoded
    rows = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert rows and rows[0]["step"] == 1 and all(r["prompt"] and r["responses"] for r in rows)
    assert all(isinstance(x["text"], str) and isinstance(x["score"], float) for r in rows for x in r["responses"])
    assert summary["examples"]["first"] and summary["examples"]["last"] and summary["commit"]
    assert summary["wall_s"] > 0 and summary["final_loss"] is not None and "#" not in "".join(summary["actor_versions"])
    assert (run_dir / "final" / "model.safetensors").exists() and (run_dir / "reward.png").exists()
    assert any((run_dir / "wandb").glob("offline-run-*"))
    return summary


def test_tiller_run_trains_with_two_actors_and_a_judge(tiny_policy_dir, tmp_path, free_address):
    # two actors on purpose: placement auto would start one on a 2-core machine (placement.auto_actors)
    first, last = min(os.sched_getaffinity(0)), max(os.sched_getaffinity(0))
    cores = f"{{learner: [{first}], actor0: [{last}], actor1: [{last}], judge0: [{first}]}}"
    args = overrides(tmp_path, tiny_policy_dir, free_address, "e2e-run") + ["run.placement=manual", f"run.cores={cores}"]
    done = subprocess.run([sys.executable, "-m", "tiller", "run", "configs/demo.yaml", *args],
                          capture_output=True, text=True, timeout=420, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "placement:" in done.stdout and f"step {STEPS}/{STEPS} |" in done.stdout and "sample (policy v" in done.stdout
    assert "mean reward: first 10%" in done.stdout  # the learner's last lines were flushed before its quick exit
    check_run(tmp_path / "e2e-run")
    first = json.loads((tmp_path / "e2e-run" / "metrics.jsonl").read_text().splitlines()[0])
    check_timeline(tmp_path / "e2e-run", first["perf/time/first_step_s"])
    for log in (tmp_path / "e2e-run" / "logs").glob("*.log"):  # every worker heard the shutdown, and left cleanly
        text = log.read_text()
        assert "stopping: training finished" in text, log
        assert text.rstrip().splitlines()[-1].startswith(("actor done:", "judge done:")), text[-2000:]


def check_timeline(run_dir: Path, first_step_s: float) -> None:
    """Every process marked its start and its end on the run's one clock, in the order they depend on each other."""
    marks = timeline.read(run_dir)
    at = {(m["process"], m["event"]): m["s"] for m in marks}
    assert at["launcher", "configured"] <= at["launcher", "workers started"] <= at["launcher", "learner started"]
    assert at["launcher", "learner started"] <= at["learner", "imported"] <= at["learner", "models built"]
    assert at["learner", "models built"] <= at["learner", "listening"] <= at["learner", "first step trained"]
    # the learner's first step waited for a rollout from an actor whose engine had been built and loaded
    first_rollout = min(s for (process, event), s in at.items() if event == "first rollout sent")
    assert first_rollout <= at["learner", "first step trained"]
    for actor in ("actor0", "actor1"):
        assert at["launcher", "workers started"] <= at[actor, "imported"] <= at[actor, "engine built"]
    assert at["judge0", "judge built"] <= at["judge0", "first task judged"] <= at["learner", "first step trained"]
    # time/first_step_s is the same moment on the same clock
    assert abs(at["learner", "first step trained"] - first_step_s) < 1.0
    # the end: training finished, every worker told, the learner out, then everyone
    told = [s for (process, event), s in at.items() if event == "told to stop"]
    assert len(told) == 3 and min(told) >= at["learner", "training finished"]
    assert at["learner", "saved, summarised, workers told"] <= at["launcher", "learner exited"]
    assert marks[-1]["process"] == "launcher" and marks[-1]["event"] == "every process exited"


def wait_for(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in {path} after {timeout_s} s:\n{path.read_text()[-2000:]}")


def test_parts_started_by_hand_in_any_order_join_the_run(tiny_policy_dir, tmp_path, free_address):
    """An actor before the learner, a second actor after it, and the judge last: all join the run.

    Nothing can be trained until the judge arrives, so both actors are surely part of the run.
    """
    base = [sys.executable, "-m", "tiller"]
    args = overrides(tmp_path, tiny_policy_dir, free_address, "e2e-hand")
    cwd = Path(__file__).parents[1]
    logs = {name: tmp_path / f"{name}.log" for name in ("actor0", "learner", "actor1", "judge0")}

    def start(name, *cmd):
        return subprocess.Popen([*base, *cmd, "--config", "configs/demo.yaml", *args], cwd=cwd,
                                stdout=logs[name].open("w"), stderr=subprocess.STDOUT)

    procs = {"actor0": start("actor0", "actor", "--id", "actor0", "--learner", free_address)}
    try:
        time.sleep(2)
        procs["learner"] = start("learner", "learner")
        procs["actor1"] = start("actor1", "actor", "--id", "actor1", "--learner", free_address)
        for actor in ("actor0", "actor1"):
            wait_for(logs[actor], "loaded policy version 0", 180)
        procs["judge0"] = start("judge0", "judge", "--id", "judge0", "--learner", free_address)
        for name, proc in procs.items():
            assert proc.wait(timeout=300) == 0, logs[name].read_text()[-3000:]
    finally:
        for proc in procs.values():
            proc.kill()
    summary = check_run(tmp_path / "e2e-hand", actors_with_work=1)
    assert set(summary["judge_work"]) == {"judge0"}
    assert {a.split("#")[0] for a in summary["actor_versions"]} == {"actor0", "actor1"}


def test_online_dpo_with_an_llm_pairwise_judge_process(tiny_policy_dir, tmp_path, free_address):
    """RLAIF plumbing end to end: the judge process serves a (tiny, random) judge LLM with vLLM.
    (Position swapping is off in configs/rlaif.yaml: a random judge's only preference is for a
    position, which the swap correctly turns into no preference, so nothing would be trained.)"""
    args = overrides(tmp_path, tiny_policy_dir, free_address, "e2e-rlaif") + [
        "learner.steps=2", "learner.batch_size=4", "rollout.samples_per_prompt=2",
        f"judge.model_path={tmp_path / 'judge-model'}", "judge.max_model_len=512"]
    done = subprocess.run([sys.executable, "-m", "tiller", "run", "configs/rlaif.yaml", *args, "run.actors=1"],
                          capture_output=True, text=True, timeout=420, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "e2e-rlaif" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["judge_work"].get("judge0", 0) >= 1


def test_online_dpo_with_two_cai_judge_processes_sharing_the_work(tiny_policy_dir, tmp_path, free_address):
    """Constitutional AI end to end, with two judge processes (each serving the judge model with
    vLLM): revisions come back as chosen responses and are trained on, and the learner's metrics
    show both judges doing work."""
    steps = 6
    args = overrides(tmp_path, tiny_policy_dir, free_address, "e2e-cai") + [
        f"learner.steps={steps}", "learner.batch_size=8", f"judge.model_path={tmp_path / 'judge-model'}"]
    done = subprocess.run([sys.executable, "-m", "tiller", "run", "configs/cai.yaml", *args],
                          capture_output=True, text=True, timeout=420, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "e2e-cai"
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == steps and set(summary["judge_work"]) == {"judge0", "judge1"}
    assert (run_dir / "judges.png").stat().st_size > 0
    for judge in ("judge0", "judge1"):  # both seen working, in the metrics the learner logs
        assert metrics[-1][f"perf/judge/{judge}/tasks"] >= 1
        assert any(f"perf/judge/{judge}/judgements_per_s" in m for m in metrics)
        rows = [json.loads(line) for line in (run_dir / "judges" / f"{judge}.jsonl").read_text().splitlines()]
        assert rows and all(len(r["critiques"]) == 1 and r["principles"] for r in rows)
    assert 0 < metrics[-1]["reward/judge/revision_differs"] <= 1 and metrics[-1]["reward/pairs_per_prompt"] > 0
    assert all(m["train/pairs"] >= 8 for m in metrics)  # every trained prompt gave at least one revision pair
    for judge in ("judge0", "judge1"):  # each stopped its vLLM engine and closed its transcript before leaving
        log = (run_dir / "logs" / f"{judge}.log").read_text()
        assert log.rstrip().splitlines()[-1].startswith("judge done:"), log[-3000:]  # nothing went wrong after
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert sum(r["outcome"] == "trained" for r in records) == steps * 8


def test_a_warm_actor_serves_one_run_after_another_with_its_engine_started_once(tiny_policy_dir, tmp_path,
                                                                              free_address):
    """`tiller actor --stay` outlives the learner: two `tiller run --actors 0` in a row are served by the
    one actor, whose vLLM engine is built once; it ends when interrupted."""
    import signal

    cwd = Path(__file__).parents[1]
    first, last = min(os.sched_getaffinity(0)), max(os.sched_getaffinity(0))
    log = tmp_path / "warm0.log"
    actor = subprocess.Popen(
        [sys.executable, "-m", "tiller", "actor", "--config", "configs/demo.yaml", "--stay", "--id", "warm0",
         "--learner", free_address, *overrides(tmp_path, tiny_policy_dir, free_address, "warm-actor")],
        cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "TILLER_CORES": str(last)})
    try:
        for name in ("warm-1", "warm-2"):
            args = overrides(tmp_path, tiny_policy_dir, free_address, name) + [
                "run.actors=0", "run.placement=manual", f"run.cores={{learner: [{first}], judge0: [{first}]}}"]
            done = subprocess.run([sys.executable, "-m", "tiller", "run", "configs/demo.yaml", *args],
                                  capture_output=True, text=True, timeout=300, cwd=cwd)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log.read_text()[-3000:]
            summary = json.loads((tmp_path / name / "summary.json").read_text())
            assert set(summary["actor_work"]) == {"warm0"}
            records = [json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]
            assert sum(r["outcome"] == "trained" for r in records) == STEPS * BATCH
            wait_for(log, "waiting for a learner", 60)  # told to stop, it stays
            assert actor.poll() is None
        text = log.read_text()
        assert text.count("waiting for a learner") == 3 and text.count("loaded policy version 0") == 2
        built = [m for m in timeline.read(tmp_path / "warm-actor") if m["event"] == "engine built"]
        assert len(built) == 1
        actor.send_signal(signal.SIGTERM)  # what `tiller run`, `kill` and a container's stop send
        assert actor.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert log.read_text().rstrip().splitlines()[-1] == "actor stopped: interrupted (SIGTERM)"
    finally:
        actor.kill()


def test_a_warm_actor_waiting_for_a_learner_ends_cleanly_on_ctrl_c(tiny_policy_dir, tmp_path, free_address):
    """Ctrl-C (SIGINT) ends a `--stay` actor as SIGTERM does: engine closed, exit code 0, one last line."""
    import signal

    log = tmp_path / "ctrl-c.log"
    # A shell hands a background job SIGINT ignored, and the child inherits that (this suite may run as
    # one); a handler in this process is reset to the default across exec, so the actor sees Ctrl-C.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        actor = subprocess.Popen(
            [sys.executable, "-m", "tiller", "actor", "--config", "configs/demo.yaml", "--stay", "--id", "c0",
             "--learner", free_address, *overrides(tmp_path, tiny_policy_dir, free_address, "ctrl-c")],
            cwd=Path(__file__).parents[1], stdout=log.open("w"), stderr=subprocess.STDOUT)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        wait_for(log, "waiting for a learner", 180)  # its engine is built; no learner ever answers
        actor.send_signal(signal.SIGINT)
        assert actor.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert log.read_text().rstrip().splitlines()[-1] == "actor stopped: interrupted (SIGINT)"
    finally:
        actor.kill()
