"""`run.lend_actor_cores: reference` in a real `tiller run`: learner, vLLM actor and judge as OS processes.
(Its own file, away from test_e2e's hand-started processes, whose ports can still be closing.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from test_e2e import BATCH, STEPS, overrides

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]')")
pytestmark = pytest.mark.slow


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="lending needs an actor core apart from the learner's")
def test_the_actors_idle_core_computes_the_reference_ahead_of_each_batch(tiny_policy_dir, tmp_path, free_address):
    """`run.lend_actor_cores: reference`: every judged prompt passes the reference thread on the actor's core,
    every step trains on reference log-probs computed there, and each prompt is still trained exactly once."""
    args = overrides(tmp_path, tiny_policy_dir, free_address, "e2e-lend") + [
        "run.actors=1", "run.lend_actor_cores=reference"]
    done = subprocess.run([sys.executable, "-m", "tiller", "run", "configs/demo.yaml", *args],
                          capture_output=True, text=True, timeout=420, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    actor_core = max(os.sched_getaffinity(0))
    assert f"(lent cores {actor_core}: run.lend_actor_cores)" in done.stdout  # the plan printed
    assert f"the reference's log-probs computed ahead of each batch on core(s) {actor_core}" in done.stdout
    run_dir = tmp_path / "e2e-lend"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["perf/reference_ahead"] for m in metrics] == [1.0] * STEPS
    assert sum(m["perf/reference_ahead_prompts"] for m in metrics) >= STEPS * BATCH  # tied ones pass it too
    assert all(m["perf/reference_ahead_s"] >= 0 for m in metrics) and sum(m["perf/reference_ahead_s"] for m in metrics) > 0
    # step 1's policy is the reference: log-probs computed on the other core match the policy's own to float error
    assert abs(metrics[0]["objective/kl/sequence"]) < 1e-3
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    used = [r["prompt_id"] for r in records if r["outcome"] in ("trained", "no_preference")]
    assert not [p for p, n in Counter(used).items() if n > 1]
    assert sum(r["outcome"] == "trained" for r in records) == STEPS * BATCH
