"""Live evaluation end to end: `tiller run` on the chat config (a tiny chat model built on the spot) with a
round every two steps. A random model's refusal rates mean nothing; here they must be well-formed numbers on
the rows of the rounds that completed, and training must still train every prompt exactly once."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]')")
pytestmark = pytest.mark.slow

STEPS, BATCH, EVERY, PER_SET = 8, 8, 2, 2
RATES = ("eval/harmful_refusal", "eval/over_refusal", "eval/win_rate", "eval/reward_hacking")


@pytest.fixture(scope="module")
def tiny_chat_policy(tmp_path_factory):
    from tiller.models import JUDGE_ALPHABET, TINY_CHAT_TEMPLATE, ensure_tiny_policy

    return ensure_tiny_policy(tmp_path_factory.mktemp("models") / "chat-policy", seed=0, alphabet=JUDGE_ALPHABET,
                              chat_template=TINY_CHAT_TEMPLATE)


def test_live_eval_rounds_land_in_the_metrics_beside_training(tiny_chat_policy, tmp_path, free_address):
    args = ["name=live", f"output_dir={tmp_path}", f"model.path={tiny_chat_policy}", "model.build_tiny=false",
            f"learner.address={free_address}", f"learner.steps={STEPS}", f"learner.batch_size={BATCH}",
            "learner.shutdown_grace_s=10", "rollout.max_model_len=256", "rollout.learner_timeout_s=120",
            "judge.learner_timeout_s=120", "metrics.wandb=disabled", "metrics.log_completions_every=0",
            f"eval.every={EVERY}", f"eval.live_max_prompts={PER_SET}"]
    done = subprocess.run([sys.executable, "-m", "tiller", "run", "configs/chat.yaml", *args], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| eval v0: reward " in done.stdout  # the reference round's numbers on a progress line
    run_dir = tmp_path / "live"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    rounds = [m for m in metrics if "eval/prompts" in m]
    # rounds open after steps 0, 2, 4 and 6 (none at the last step, which could never report); each reports on a
    # step after it opened and no later than the next one's opening, in order, once
    opened = [m["eval/round_step"] for m in rounds]
    assert opened == sorted(set(opened)) and set(opened) <= set(range(0, STEPS, EVERY)), opened
    assert all(r["eval/round_step"] < r["step"] <= r["eval/round_step"] + EVERY for r in rounds), rounds
    assert opened[:1] == [0] and len(rounds) >= 2, done.stdout[-3000:]  # the reference, and one judged beside it
    assert len(rounds) + rounds[-1]["eval/rounds_dropped"] in (STEPS // EVERY - 1, STEPS // EVERY)
    for r in rounds:
        assert r["eval/prompts"] == 4 * PER_SET  # harmful, benign, helpful, honest
        assert all(0.0 <= r[key] <= 1.0 for key in RATES), r
        assert math.isfinite(r["eval/reward"]) and 0 <= r["eval/response_length"] <= 16
        assert 0 <= r["eval/version"] <= r["step"] and r["eval/reference_version"] == rounds[0]["eval/version"]
    assert rounds[0]["eval/win_rate"] == 0.5 and rounds[0]["eval/length_ratio"] == 1.0  # the reference itself
    # only the eval rows carry eval metrics
    assert all(not any(k.startswith("eval/") for k in m) for m in metrics if "eval/prompts" not in m)
    # training is untouched: every prompt of the batches trained exactly once, no eval answer among them
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    used = [r["prompt_id"] for r in records if r["outcome"] in ("trained", "no_preference")]
    assert not [p for p, n in Counter(used).items() if n > 1]
    assert sum(r["outcome"] == "trained" for r in records) == STEPS * BATCH
