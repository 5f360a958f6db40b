"""`tiller run` supervises: kill -9 its only judge, then its only actor, mid-run; each is started
again, the run finishes with exit 0, and every prompt is still trained on exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]')")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]


def wait_for_line(path: Path, pattern: str, proc: subprocess.Popen, timeout_s: float = 240) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text(errors="replace"))
        if match:
            return match
        assert proc.poll() is None, path.read_text(errors="replace")[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"{pattern!r} not seen:\n{path.read_text(errors='replace')[-3000:]}")


def test_tiller_run_restarts_a_killed_judge_and_a_killed_actor(tiny_policy_dir, tmp_path, free_address):
    steps, batch = 14, 8
    out = tmp_path / "run.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiller", "run", "configs/demo.yaml", f"output_dir={tmp_path}", "name=supervised",
         f"model.path={tiny_policy_dir}", f"learner.address={free_address}", f"learner.steps={steps}",
         f"learner.batch_size={batch}", "learner.lease_prompts=4", "learner.max_inflight_prompts=16",
         "learner.lr=3e-4", "learner.heartbeat_s=1", "learner.missed_beats=3", "rollout.max_model_len=64",
         "run.actors=1", "run.judges=1", "run.restart_backoff_s=0.5"],
        cwd=ROOT, stdout=out.open("w"), stderr=subprocess.STDOUT)
    try:
        pids = dict(re.findall(r"(actor0|judge0) (\d+)", wait_for_line(out, r"started \d+ processes \(.*\)", proc)[0]))
        wait_for_line(out, r"step\s+3/\d+ \|", proc)
        os.kill(int(pids["judge0"]), signal.SIGKILL)
        wait_for_line(out, r"judge0 restarted", proc)
        wait_for_line(out, r"step\s+7/\d+ \|", proc)
        os.kill(int(pids["actor0"]), signal.SIGKILL)
        wait_for_line(out, r"actor0 restarted", proc)
        assert proc.wait(timeout=400) == 0, out.read_text()[-3000:]
    finally:
        proc.kill()
    log = out.read_text()
    assert "judge0 died (exit -9); restarting it" in log and "actor0 died (exit -9); restarting it" in log
    # the learner heard of each death from `tiller run` at once, not after missed heartbeats
    assert "judge0 exited (code -9)" in log and "actor0 exited (code -9)" in log
    summary = json.loads((tmp_path / "supervised" / "summary.json").read_text())
    assert summary["steps"] == steps
    records = [json.loads(line) for line in (tmp_path / "supervised" / "samples.jsonl").read_text().splitlines()]
    used = Counter(r["prompt_id"] for r in records if r["outcome"] in ("trained", "no_preference"))
    assert max(used.values()) == 1, "a prompt was trained twice"
    assert sum(r["outcome"] == "trained" for r in records) == steps * batch
