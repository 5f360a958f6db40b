"""The learner process: train online DPO on what the actors generate and the judges score.

    tiller learner --config configs/demo.yaml

The recipe, top to bottom: build the prompt stream and the DeepSpeed policy, publish
version 0, start the socket thread, then for each step take `batch_size` judged prompts
(pairs for online DPO; dropping and re-leasing any older than `max_policy_lag`), run the
algorithm's step (`algorithms.py`), publish
new weights every `sync_every` steps, and log. At the end: tell workers to stop, save
`runs/<name>/final/`, print a reward table and plot it.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from pathlib import Path

import numpy as np
import torch

from tiller.config import Config, dump_config
from tiller.learner.algorithms import ALGORITHMS, Algorithm
from tiller.learner.coordinator import Coordinator, ScoredPrompt
from tiller.learner.engine import PolicyTrainer
from tiller.learner.metrics import MetricsSink, first_last_tenth, plot_reward, reward_table
from tiller.learner.prompts import load_prompts
from tiller.learner.server import LearnerServer, WeightSnapshot
from tiller.models import ensure_tiny_policy, load_tokenizer
from tiller.protocol.security import check_bind

log = logging.getLogger(__name__)


def prepare_model(cfg: Config) -> Path:
    path = Path(cfg.model.path)
    if not (path / "config.json").exists():
        if not cfg.model.build_tiny:
            raise FileNotFoundError(f"model.path: {path} has no config.json (set model.build_tiny: true to build one)")
        ensure_tiny_policy(path, seed=cfg.model.seed)
    return path


def snapshot(trainer: PolicyTrainer, version: int, bucket_mb: int) -> WeightSnapshot:
    buckets = [([n for n, _ in b], [t for _, t in b]) for b in trainer.weight_buckets(bucket_mb << 20)]
    return WeightSnapshot(version, buckets)


class SampleRecord:
    """runs/<name>/samples.jsonl: what happened to every judged prompt (the exactly-once audit)."""

    def __init__(self, path: Path):
        self._file = path.open("w")

    def write(self, item: ScoredPrompt, step: int, version: int, outcome: str) -> None:
        row = {"prompt_id": item.prompt_id, "lease_id": item.lease_id, "policy_version": item.policy_version,
               "learner_version": version, "step": step, "outcome": outcome}
        self._file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._file.close()


def take_batch(cfg: Config, algorithm: Algorithm, server: LearnerServer, version: int, step: int,
               record: SampleRecord):
    """Block until `batch_size` trainable prompts are in hand; returns (trainable, all judged)."""
    trainable: list[ScoredPrompt] = []
    judged: list[ScoredPrompt] = []
    no_preference = 0
    waited_since = time.monotonic()
    while len(trainable) < cfg.learner.batch_size:
        if server.failure is not None or not server.alive:
            raise RuntimeError("the learner's socket thread stopped") from server.failure
        try:
            item: ScoredPrompt = server.scored.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() - waited_since > 30:
                waited_since = time.monotonic()
                print(f"step {step}: waiting for scored rollouts ({len(trainable)}/{cfg.learner.batch_size} in hand; "
                      f"{no_preference} prompts had all k samples scored alike)", flush=True)
            continue
        if version - item.policy_version > cfg.learner.max_policy_lag:
            server.release([item.prompt_id])  # never train on it; lease the prompt again
            record.write(item, step, version, "stale_released")
            continue
        server.consumed(1)
        judged.append(item)
        if algorithm.needs == "pairs" and item.chosen < 0:
            no_preference += 1
            record.write(item, step, version, "no_preference")
            continue
        record.write(item, step, version, "trained")
        trainable.append(item)
    return trainable, judged


def run(cfg: Config) -> dict:
    check_bind(cfg.learner.address, cfg.security)  # before any expensive work
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    model_dir = prepare_model(cfg)
    tokenizer = load_tokenizer(model_dir)
    prompts = load_prompts(cfg.data, tokenizer, cfg.rollout.max_model_len - cfg.rollout.max_new_tokens)
    if cfg.learner.torch_threads > 0:
        torch.set_num_threads(cfg.learner.torch_threads)
    algorithm = ALGORITHMS[cfg.learner.algorithm]
    trainer = PolicyTrainer(cfg, model_dir, with_critic=algorithm.critic)
    coordinator = Coordinator(prompts, cfg.learner, cfg.rollout, seed=cfg.seed)
    server = LearnerServer(coordinator, cfg.learner.address, cfg.learner.heartbeat_s, cfg.learner.missed_beats,
                           cfg.security)
    version = 0
    server.publish(snapshot(trainer, version, cfg.learner.weight_bucket_mb))
    server.start()
    print(f"learner listening on {server.address} ({len(prompts)} prompts, {cfg.learner.steps} steps)", flush=True)

    sink = MetricsSink(cfg, run_dir)
    record = SampleRecord(run_dir / "samples.jsonl")
    pad_id = tokenizer.pad_token_id
    last = time.monotonic()
    try:
        for step in range(1, cfg.learner.steps + 1):
            trainable, judged = take_batch(cfg, algorithm, server, version, step, record)
            staleness = [version - p.policy_version for p in trainable]  # versions behind the learner
            metrics = algorithm.step(trainer, trainable, cfg, pad_id)
            if step % cfg.learner.sync_every == 0:
                version += 1
                server.publish(snapshot(trainer, version, cfg.learner.weight_bucket_mb))
            now = time.monotonic()
            rewards = np.concatenate([p.scores for p in judged])
            c = coordinator.counters
            metrics.update({
                "step": step,
                "policy_version": version,
                "reward/mean": float(rewards.mean()),
                "reward/std": float(rewards.std()),
                "samples_per_s": len(rewards) / max(now - last, 1e-6),
                "staleness/mean": float(np.mean(staleness)),
                "staleness/max": int(max(staleness)),
                "response_length/mean": float(np.mean([len(r) for p in judged for r in p.responses])),
                "leases/issued": c.leases_issued,
                "leases/expired": c.leases_expired,
                "leases/duplicates_dropped": c.duplicates_dropped,
                "prompts/released": c.prompts_released,
                "protocol/rejected": server.endpoint.stats.rejected,
                "actors/oldest_version": min(coordinator.actor_versions.values(), default=-1),
            })
            last = now
            sink.log(metrics)
    finally:
        print("training finished; telling workers to stop", flush=True)
        server.shutdown(cfg.learner.shutdown_grace_s)
        record.close()
        sink.close()
    trainer.save(run_dir / "final", tokenizer_dir=model_dir)
    return summarise(cfg, sink.history, server)


def summarise(cfg: Config, history: list[dict], server: LearnerServer) -> dict:
    first, last = first_last_tenth(history)
    plot = plot_reward(history, cfg.run_dir / "reward.png", f"{cfg.name}: {cfg.learner.algorithm}, mean judge reward")
    summary = {
        "algorithm": cfg.learner.algorithm,
        "steps": len(history),
        "reward_first_10pct": first,
        "reward_last_10pct": last,
        "final_policy_version": history[-1]["policy_version"] if history else 0,
        "actor_work": server.actor_work,
        "judge_work": server.judge_work,
        "actor_versions": dict(server.coordinator.actor_versions),
        "protocol_rejected": server.endpoint.stats.rejected,
        "dead_peers": server.dead_peers,
        "curve_refused": server.endpoint.authorized.denied if server.endpoint.authorized else 0,
        "final_checkpoint": str(cfg.run_dir / "final"),
        "plot": str(plot) if plot else None,
    }
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n" + reward_table(history))
    print(f"\nmean reward: first 10% of steps {first:.3f} -> last 10% {last:.3f} ({last - first:+.3f})")
    print(f"plot: {plot}   checkpoint: {summary['final_checkpoint']}   metrics: {cfg.run_dir / 'metrics.jsonl'}")
    return summary
