"""Synchronous mode (`learner.mode: sync`): generate -> judge -> train -> publish strictly in turn.
Every sample comes from the current policy, and the same config and seed with one actor give the
same samples and the same metrics, run after run (sampling seeds follow the config seed and the
lease's place in the run, not the clock)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]')")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
KEYS = ("step", "train/policy_version", "reward/mean", "train/response_length", "train/loss", "objective/kl/sequence",
        "objective/implicit_reward/margin")


def sync_run(tmp_path: Path, name: str, seed: int, model_dir: Path) -> tuple[list[tuple], list[tuple]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    done = subprocess.run(
        [sys.executable, "-m", "tiller", "run", "configs/demo.yaml", f"output_dir={tmp_path}", f"name={name}",
         f"seed={seed}", f"model.path={model_dir}", f"learner.address={address}", "learner.mode=sync",
         "learner.steps=6", "learner.batch_size=8", "learner.lease_prompts=4", "run.actors=1"],
        capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert all(m["train/staleness/max"] == 0 for m in metrics)  # every trained sample from the current policy
    # ... so the learner's log-probs of each pair are the ones vLLM sampled it with (per token, fp32)
    assert all(abs(m["objective/offpolicy/logratio"]) < 1e-3 for m in metrics), [m["objective/offpolicy/logratio"] for m in metrics]
    samples = [json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]
    return [tuple(m[k] for k in KEYS) for m in metrics], [(r["prompt_id"], r["outcome"]) for r in samples]


def test_same_config_and_seed_give_the_same_samples_and_metrics(tiny_policy_dir, tmp_path):
    first = sync_run(tmp_path, "first", 0, tiny_policy_dir)
    again = sync_run(tmp_path, "again", 0, tiny_policy_dir)
    assert again == first
    other = sync_run(tmp_path, "other", 1, tiny_policy_dir)
    assert other[0] != first[0]  # another seed samples other responses
