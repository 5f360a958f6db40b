"""The safety pipeline on the real SmolLM2-135M-Instruct, shortened to a step or a few prompts per stage
(`pytest -m real_model` runs it alone): every stage's output loads and feeds the next, as in
scripts/align-smollm2.sh. The full pipeline is a command with numbers in the README, not a test."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAFETY = ROOT / "configs" / "safety"


def _tiller(args: list[str], cwd: Path, timeout: float = 600) -> str:
    env = {**os.environ, "WANDB_MODE": "offline", "VLLM_CPU_KVCACHE_SPACE": "1"}
    out = subprocess.run([sys.executable, "-m", "tiller", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env=env)
    assert out.returncode == 0, f"tiller {args[0]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out.stdout


@pytest.mark.slow
@pytest.mark.real_model
def test_each_stage_feeds_the_next_on_the_real_model(imported, tmp_path):
    base, _ = imported
    runs = tmp_path / "runs"
    common = [f"output_dir={runs}", "metrics.wandb=disabled"]
    one_step = ["train.max_steps=1", "train.batch_size=2", "train.eval_fraction=0"]

    # the base model's own answers to benign prompts: the SFT stage's anchor
    _tiller(["self-data", str(SAFETY / "self-data.yaml"), f"model.path={base}", *common, "datagen.max_prompts=6",
             "datagen.generation.max_new_tokens=32", "datagen.generation.max_model_len=512"], tmp_path)
    anchor = runs / "safety-self-data" / "self-data.jsonl"
    made = json.loads((runs / "safety-self-data" / "self-data.summary.json").read_text())
    assert made["prompts"] == 6 and made["rows_written"] == sum(1 for _ in anchor.open()) >= 1
    refusals = ROOT / "configs/data/safety/refusals.jsonl"
    sft_data = f"[{{path: {refusals}, weight: 0.05}}, {{path: {anchor}, anchor_kl: 3.0}}]"  # as shipped
    said = _tiller(["sft", str(SAFETY / "sft.yaml"), f"model.path={base}", f"sft.data={sft_data}", *common, *one_step],
                   tmp_path)
    # the anchor's reference on the real model: its top 15 blocks on the policy's frozen 15, checked exact
    assert "anchor_kl reference: the top 15 blocks of the starting model on the policy's 15 frozen" in said
    sft = runs / "safety-sft" / "final"
    assert (sft / "config.json").exists() and (sft / "tokenizer_config.json").exists()

    shipped = ROOT / "configs/data/safety/preferences.jsonl"
    _tiller(["rm", str(SAFETY / "rm.yaml"), f"model.path={sft}", f"rm.data=[{{path: {shipped}, weight: 0.05}}]",
             *common, *one_step], tmp_path)
    rm = runs / "safety-rm" / "final"
    assert len(json.loads((rm / "config.json").read_text())["id2label"]) == 1  # one score

    # online DPO judged by the labelled safety scorer and the reward model, composed (as shipped)
    scorers = f"[{{kind: safety, weight: 1.0}}, {{kind: reward_model, reward_model_path: {rm}, weight: 0.1}}]"
    _tiller(["run", str(SAFETY / "online.yaml"), f"model.path={sft}", f"judge.scorers={scorers}", *common,
             "learner.steps=1", "learner.batch_size=2", "learner.lease_prompts=2", "rollout.max_new_tokens=16",
             "judge.min_margin=0", "learner.address=tcp://127.0.0.1:5583"], tmp_path)
    online = runs / "safety-online" / "final"
    assert (online / "config.json").exists()

    # the optional loop: a model's failures on the training prompts become pairs for offline DPO
    small_eval = ["eval.max_prompts=1", "eval.generation.max_new_tokens=16", "eval.generation.max_model_len=512"]
    _tiller(["eval", str(SAFETY / "train-prompts.yaml"), "name=pairs", f"model.path={base}", *common,
             *small_eval], tmp_path)
    pairs = runs / "pairs" / "failures.preferences.jsonl"
    assert sum(1 for _ in pairs.open()) >= 1
    _tiller(["dpo", str(SAFETY / "dpo.yaml"), f"model.path={sft}", f"dpo.data=[{{path: {pairs}}}]", *common,
             *one_step], tmp_path)
    assert (runs / "safety-dpo" / "final" / "config.json").exists()

    _tiller(["eval", str(SAFETY / "eval.yaml"), "name=after", f"model.path={online}", f"eval.baseline_path={base}",
             "judge.kind=reward_model", f"judge.reward_model_path={rm}", f"eval.reward_model_path={rm}",
             "eval.kl_samples=4", *common, *small_eval], tmp_path)
    report = json.loads((runs / "after" / "report.json").read_text())
    assert report["win_rate"]["n"] == 8 and "reward model" in report["win_rate"]["judge"]  # 6 benign kinds + 2
    kl = report["kl_to_baseline"]  # k3 > 0 for any change at all: one step moved the model a little
    assert kl["responses"] == 4 and kl["estimator"] == "k3" and kl["per_token"] > 0 and math.isfinite(kl["per_token_k1"])
    assert set(report["metrics"]) == {"model", "baseline"}
    assert all(set(report["metrics"][r]["reward"]) == {"harmful", "benign", "helpful", "honest"}
               for r in ("model", "baseline"))
