"""The learner process: train online DPO on what the actors generate and the judges score.

    tiller learner --config configs/demo.yaml

The recipe, top to bottom: build the prompt stream and the DeepSpeed policy, publish
version 0, start the socket thread, then for each step take `batch_size` judged prompts
(pairs for online DPO; dropping and re-leasing any older than `max_policy_lag`), run the
algorithm's step (`algorithms.py`), publish
new weights every `sync_every` steps, log, and checkpoint every `checkpoint_every` steps (with
`eval.every`, live evaluation runs beside it: live_eval.py). At the
end: tell workers to stop, save `runs/<name>/final/`, print a reward table and plot it.

Checkpoints (checkpoint.py) are durable and atomic; leftovers of a failed save are removed when the
learner starts. A periodic checkpoint that fails (a full disk) is logged and counted
(`checkpoint/failed_saves`) and training goes on, since the previous one is still whole and the next
may succeed; the pre-emption checkpoint and final/ fail the run loudly.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tiller.config import Config, ConfigError, dump_config
from tiller.learner.algorithms import ALGORITHMS, Algorithm
from tiller.learner.completions import COLUMNS as COMPLETION_COLUMNS, CompletionLog, example_line
from tiller.learner.coordinator import Coordinator, ScoredPrompt
from tiller.learner.lending import Lending
from tiller.learner.live_eval import LiveEval, eval_book, load_live_set
from tiller.learner.publish import WeightPublisher
from tiller.learner import checkpoint
from tiller.learner.model_card import model_card
from tiller.training.schedule import lr_schedule
from tiller.learner.metrics import (
    MetricsSink, first_last_tenth, keep_steps_up_to, plot_judges, plot_reward, reward_table, warm_plotting,
)
from tiller.learner.phases import StepClock
from tiller.learner.prompts import load_prompts
from tiller.learner.server import LearnerServer
from tiller.metric_names import grouped_row
from tiller.learner.trainer import PolicyTrainer
from tiller.models import load_tokenizer, prepare_model
from tiller.protocol.security import check_bind
from tiller.records import provenance, wandb_mode
from tiller.timeline import mark, since_start
from tiller.training.engine import DTYPES
from tiller.training.errors import NonFiniteTraining
from tiller.training.precision import generation_dtype

log = logging.getLogger(__name__)


class SampleRecord:
    """runs/<name>/samples.jsonl: what happened to every judged prompt (the exactly-once audit)."""

    def __init__(self, path: Path, resume_step: int = 0):
        if resume_step:
            keep_steps_up_to(path, resume_step)
        self._file = path.open("a" if resume_step else "w")

    def write(self, item: ScoredPrompt, step: int, version: int, outcome: str) -> None:
        row = {"prompt_id": item.prompt_id, "lease_id": item.lease_id, "policy_version": item.policy_version,
               "learner_version": version, "step": step, "outcome": outcome}
        self._file.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Preempted(Exception):
    """SIGTERM arrived: checkpoint and stop, leaving the workers waiting for a resumed learner."""


def take_batch(cfg: Config, algorithm: Algorithm, server: LearnerServer, version: int, step: int,
               record: SampleRecord, preempted: threading.Event, scored: queue.Queue | None = None):
    """Block until `batch_size` trainable prompts from `scored` (default: the socket thread's queue) are in
    hand; returns (trainable, all judged)."""
    scored = scored if scored is not None else server.scored
    trainable: list[ScoredPrompt] = []
    judged: list[ScoredPrompt] = []
    no_preference = 0
    waited_since = time.monotonic()
    while len(trainable) < cfg.learner.batch_size:
        if server.failure is not None or not server.alive:
            raise RuntimeError("the learner's socket thread stopped") from server.failure
        if preempted.is_set():
            server.release([p.prompt_id for p in judged])  # not trained: lease them again after resume
            raise Preempted()
        try:
            item: ScoredPrompt = scored.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() - waited_since > 30:
                waited_since = time.monotonic()
                print(f"step {step}: waiting for judged rollouts ({len(trainable)}/{cfg.learner.batch_size} in hand; "
                      f"{no_preference} judged prompts gave no preference pair)", flush=True)
            continue
        lag_bound = 0 if cfg.learner.mode == "sync" else cfg.learner.max_policy_lag
        if version - item.policy_version > lag_bound:
            server.release([item.prompt_id])  # never train on it; lease the prompt again
            record.write(item, step, version, "stale_released")
            continue
        judged.append(item)
        if algorithm.needs == "pairs" and not item.pairs:
            server.consumed([item.prompt_id])  # its credit goes to a new prompt at once
            no_preference += 1
            record.write(item, step, version, "no_preference")
            continue
        if cfg.learner.mode == "async":  # synchronous mode keeps the batch counted until it is trained
            server.consumed([item.prompt_id])
        record.write(item, step, version, "trained")
        trainable.append(item)
    return trainable, judged


def step_metrics(server: LearnerServer, step: int, version: int, staleness: list[int],
                 judged: list[ScoredPrompt], seconds: float) -> dict:
    rewards = np.concatenate([p.scores for p in judged])
    public = server.public  # a snapshot: the socket thread owns the coordinator
    c = SimpleNamespace(**public["counters"])
    return {
        "step": step,
        "policy_version": version,
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()),
        "samples_per_s": len(rewards) / max(seconds, 1e-6),
        "staleness/mean": float(np.mean(staleness)),
        "staleness/max": int(max(staleness)),
        "response_length/mean": float(np.mean([len(r) for p in judged for r in p.responses])),
        "leases/issued": c.leases_issued,
        "leases/expired": c.leases_expired,
        "leases/duplicates_dropped": c.duplicates_dropped,
        "leases/wrong_sender": c.wrong_sender,
        "leases/rollouts_invalid": c.rollouts_invalid,
        "leases/scores_invalid": c.scores_invalid,
        "leases/waits_peer_credit": c.waits_peer_credit,
        "prompts/released": c.prompts_released,
        "protocol/rejected": public["protocol"]["rejected"],
        "protocol/handler_errors": public["protocol"]["handler_errors"],
        "protocol/handshakes_failed": public["protocol"]["handshakes_failed"],
        "protocol/send_dropped": public["protocol"]["send_dropped"],
        "protocol/unregistered_refused": public["protocol"]["unregistered_refused"],
        "workers/stuck": public["protocol"]["workers_stuck"],
        "workers/exited": public["protocol"]["workers_exited"],
        "weights/readers_cut": public["protocol"]["weight_readers_cut"],
        "weights/superseded_held": public["protocol"]["superseded_held"],
        "protocol/peers_refused": public["protocol"]["peers_refused"],
        "security/impersonations": public["protocol"]["impersonations"],
        "actors/oldest_version": min(public["actor_versions"].values(), default=-1),
        "judge/pairs_invalid": c.pairs_invalid,
        "judge/failures": c.judge_failures,
        **server.judges.metrics(seconds),
    }


def save_checkpoint(cfg: Config, step: int, version: int, trainer: PolicyTrainer, server: LearnerServer,
                    sink: MetricsSink, record: SampleRecord) -> None:
    record.flush()
    state = {"version": version, "coordinator": server.coordinator_state(), "wandb_id": sink.wandb_id}
    path = checkpoint.save(cfg.run_dir, step, trainer, state)
    print(f"checkpoint: {path}", flush=True)


def periodic_checkpoint(cfg: Config, step: int, version: int, trainer: PolicyTrainer, server: LearnerServer,
                        sink: MetricsSink, record: SampleRecord) -> bool:
    """A checkpoint on the way; False when it failed. A failure (a full disk, a flaky mount) must not end
    a run whose last checkpoint is still whole and whose next one may succeed; non-finite weights still do,
    as they are a training failure, not a storage one."""
    try:
        save_checkpoint(cfg, step, version, trainer, server, sink, record)
        return True
    except NonFiniteTraining:
        raise
    except Exception as e:
        log.exception("checkpoint of step %d failed", step)
        print(f"checkpoint of step {step} FAILED ({type(e).__name__}: {e}); training on: `latest` still names "
              "the previous checkpoint, and the next one is tried as usual", flush=True)
        return False


def run(cfg: Config, resume: bool = False) -> dict | None:
    """Train to `learner.steps`; with `resume`, continue from the run's latest checkpoint.
    Returns the summary, or None when pre-empted by SIGTERM (a checkpoint was written)."""
    check_bind(cfg.learner.address, cfg.security)  # before any expensive work
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.clean_stale(run_dir)  # what a crash or a full disk left mid-write in an earlier life of this run
    latest = checkpoint.latest(run_dir) if resume else None
    if resume and latest is None:
        raise ConfigError(f"--resume: no complete checkpoint under {run_dir / 'checkpoints'}")
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    mark(run_dir, "learner", "imported")
    model_dir = prepare_model(cfg)
    tokenizer = load_tokenizer(model_dir)
    prompts = load_prompts(cfg.data, tokenizer, cfg.rollout.max_model_len - cfg.rollout.max_new_tokens)
    if cfg.learner.torch_threads > 0:
        torch.set_num_threads(cfg.learner.torch_threads)
    algorithm = ALGORITHMS[cfg.learner.algorithm]
    live_set = load_live_set(cfg, tokenizer, cfg.rollout.max_model_len - cfg.rollout.max_new_tokens,
                             chat=any(c is not None for c in prompts.conversations)) if cfg.eval.every else None
    trainer = PolicyTrainer(cfg, model_dir, with_critic=algorithm.critic,
                            reference_dir=checkpoint.reference_dir(run_dir) if latest else None)
    coordinator = Coordinator(prompts, cfg.learner, cfg.rollout, seed=cfg.seed, vocab_size=trainer.vocab_size,
                              needs=algorithm.needs, evals=eval_book(cfg, live_set))
    mark(run_dir, "learner", "models built")
    state = {"step": 0, "version": 0, "wandb_id": None}
    if latest is not None:
        state = checkpoint.restore(latest, trainer)
        coordinator.load_state_dict(state["coordinator"])
        print(f"resuming from {latest}: step {state['step']}, policy version {state['version']}", flush=True)
    server = LearnerServer(coordinator, cfg.learner.address, cfg.learner.heartbeat_s, cfg.learner.missed_beats,
                           cfg.security, max_superseded=cfg.learner.max_superseded_versions,
                           stuck_after_s=cfg.learner.stuck_after_s)
    actor_dtype = generation_dtype(cfg.rollout.dtype)
    server.model_card = model_card(trainer, model_dir, actor_dtype, coordinator.incarnation)
    live = LiveEval(cfg, live_set, tokenizer, server.eval_answers, server.open_eval) if live_set else None
    version = state["version"]
    publisher = WeightPublisher(trainer, DTYPES[actor_dtype], cfg.learner.weight_bucket_mb << 20)
    server.publish(publisher.snapshot(version)[0])
    server.start()
    lending = Lending(cfg, trainer, server, algorithm.needs)  # the actors' cores, if tiller run lent them
    mark(run_dir, "learner", "listening")
    warm_plotting(wandb_tables=bool(cfg.metrics.log_completions_every) and wandb_mode(cfg.metrics.wandb) != "disabled")
    print(f"learner listening on {server.address} ({len(prompts)} prompts, {cfg.learner.steps} steps)", flush=True)
    sink = MetricsSink(cfg, run_dir, resume_step=state["step"], wandb_id=state["wandb_id"])
    record = SampleRecord(run_dir / "samples.jsonl", resume_step=state["step"])
    completions = CompletionLog(run_dir / "completions.jsonl", tokenizer, cfg.metrics.log_completions_every,
                                cfg.metrics.completions_per_log, resume_step=state["step"])
    preempted = threading.Event()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.set())
    try:
        failed_saves = train(cfg, algorithm, trainer, publisher, server, sink, record, completions, state["step"],
                             version, tokenizer.pad_token_id, preempted, live, lending)
    except Preempted:
        done = sink.history[-1]["step"] if sink.history else 0  # the last step that finished
        save_checkpoint(cfg, done, sink.history[-1]["train/policy_version"] if sink.history else version,
                        trainer, server, sink, record)
        print("pre-empted: checkpoint written; resume with `tiller learner --resume`", flush=True)
        server.close()
        record.close()
        completions.close()
        sink.close()
        return None
    except Exception:
        # A failed run (non-finite training, a dead socket thread) still tells the workers to stop,
        # so hand-started actors and judges do not wait for a learner that is not coming back.
        server.shutdown(min(cfg.learner.shutdown_grace_s, 5.0))
        record.close()
        completions.close()
        sink.close()
        raise
    finally:
        lending.close()
        signal.signal(signal.SIGTERM, previous_handler)  # after training, SIGTERM stops the process again
    print("training finished; telling workers to stop", flush=True)
    mark(run_dir, "learner", "training finished")
    # The workers hear it as they next call in (an actor first finishes the batch it is generating):
    # the final save and the summary are made meanwhile, not after, so the run ends sooner.
    server.begin_shutdown(cfg.learner.shutdown_grace_s)
    record.close()
    completions.close()
    sink.close()
    trainer.save(run_dir / "final", tokenizer_dir=model_dir)
    summary = summarise(cfg, sink.history, server, trainer.skipped_steps, failed_saves, completions.before_after())
    server.wait_stopped(cfg.learner.shutdown_grace_s)
    mark(run_dir, "learner", "saved, summarised, workers told")
    return summary


def train(cfg: Config, algorithm: Algorithm, trainer: PolicyTrainer, publisher: WeightPublisher,
          server: LearnerServer, sink: MetricsSink, record: SampleRecord, completions: CompletionLog, done_steps: int,
          version: int, pad_id: int, preempted: threading.Event, live: LiveEval | None = None,
          lending: Lending | None = None) -> int:
    """The loop from step `done_steps` + 1 on: batch, step, publish, (live eval,) log, checkpoint. Returns how
    many periodic checkpoints failed."""
    clock = StepClock(server.public)
    failed_saves = 0  # a failure at step N shows in the rows from step N + 1 on, and in summary.json
    lag_bound = 0 if cfg.learner.mode == "sync" else cfg.learner.max_policy_lag
    lc = cfg.learner
    schedule = lr_schedule(lc.lr_schedule if lc.steps > lc.warmup_steps else "constant", lc.warmup_steps, lc.steps)
    if live is not None:
        live.start(done_steps)  # the reference round: the weights before this start's first step
    for step in range(done_steps + 1, cfg.learner.steps + 1):
        with clock.phase("wait"):
            trainable, judged = take_batch(cfg, algorithm, server, version, step, record, preempted,
                                           lending.scored if lending is not None else None)
        lags = [version - p.policy_version for p in trainable]  # versions behind the learner
        lr_factor = schedule(step - 1)  # optimizer steps already taken, as LambdaLR counts
        trainer.set_lr(cfg.learner.lr * lr_factor, cfg.learner.pg.critic_lr * lr_factor)
        with clock.phase("train"):
            metrics = algorithm.step(trainer, trainable, cfg, pad_id)
        metrics["lr"] = cfg.learner.lr * lr_factor
        metrics.update(trainer.thread_metrics())
        if step % cfg.learner.sync_every == 0:
            version += 1
            with clock.phase("publish"):
                snap, publish_metrics = publisher.snapshot(version)
                server.publish(snap)
            metrics.update(publish_metrics)
        if cfg.learner.mode == "sync":  # after the publish (commands run in order): the next round opens
            server.consumed([p.prompt_id for p in trainable])
        phases = clock.finish(server.public, lags, lag_bound, response_tokens(trainable, algorithm))
        metrics.update(step_metrics(server, step, version, lags, judged, phases["time/step_s"]))
        metrics.update(phases)
        if lending is not None:
            metrics.update(lending.after_step(step, phases))
        metrics["checkpoint/failed_saves"] = failed_saves
        if live is not None:  # after the publish: a round opened now asks for this step's weights
            metrics.update(live.after_step(step, metrics["reward/mean"]))
        metrics = grouped_row(metrics)  # from here on, the names they are logged and shown under
        server.progress = {"step": step, "steps": cfg.learner.steps, **metrics}  # for `tiller status`
        sink.log(metrics)
        for line in live.pop_news() if live is not None else ():
            print(line, flush=True)
        record.flush()
        if step == done_steps + 1:
            mark(cfg.run_dir, "learner", "first step trained")
        if completions.due(step):
            rows = completions.log(step, version, trainable)
            sink.log_table("completions", COMPLETION_COLUMNS, completions.table, step)
            print(f"step {step} sample (policy v{version}, best of its responses):\n{example_line(rows[0])}", flush=True)
        if cfg.learner.checkpoint_every and step % cfg.learner.checkpoint_every == 0:
            failed_saves += not periodic_checkpoint(cfg, step, version, trainer, server, sink, record)
    return failed_saves


def response_tokens(items: list[ScoredPrompt], algorithm: Algorithm) -> int:
    """Response tokens a step trained on: each pair's two sides (DPO) or every sample (PPO, GRPO, RLOO)."""
    if algorithm.needs == "pairs":
        return sum(len(p.candidate(c)) + len(p.candidate(r)) for p in items for c, r in p.pairs)
    return sum(len(r) for p in items for r in p.responses)


def by_worker_name(versions: dict[str, int]) -> dict[str, int]:
    """{"actor0#3f2a": 12} -> {"actor0": 12}; the newest version when a worker had several incarnations."""
    out: dict[str, int] = {}
    for name, version in versions.items():
        worker = name.rsplit("#", 1)[0]
        out[worker] = max(version, out.get(worker, version))
    return out


def summarise(cfg: Config, history: list[dict], server: LearnerServer, skipped: dict[str, int] | None = None,
              failed_saves: int = 0, examples: dict | None = None) -> dict:
    """summary.json; `skipped`: non-finite optimizer steps skipped per engine (policy, critic)."""
    skipped = skipped or {}
    first, last = first_last_tenth(history)
    plot = plot_reward(history, cfg.run_dir / "reward.png", f"{cfg.name}: {cfg.learner.algorithm}, mean judge reward")
    judges_plot = plot_judges(history, cfg.run_dir / "judges.png", f"{cfg.name}: the work of each judge")
    final = history[-1] if history else {}
    summary = {
        "name": cfg.name,
        "algorithm": cfg.learner.algorithm,
        "steps": len(history),
        "wall_s": round(since_start(), 1),  # since `tiller run` started (or this learner, started alone)
        "reward_first_10pct": first,
        "reward_last_10pct": last,
        "final_loss": final.get("train/loss"),
        "final_kl_per_response": final.get("objective/kl/sequence"),
        "final_policy_version": final.get("train/policy_version", 0),
        **provenance(cfg),
        # copies: the socket thread is still telling workers to stop, and counts any last result
        "actor_work": dict(server.actor_work),
        "judge_work": dict(server.judge_work),
        "judges": server.judges.summary(),
        # by worker name; a restarted worker's incarnations (name#id) count as one
        "actor_versions": by_worker_name(server.public["actor_versions"]),
        "protocol_rejected": server.public["protocol"]["rejected"],
        "refusals": server.public["refusals"],  # validation.py's reasons, counted
        "skipped_nonfinite_steps": sum(skipped.values()),  # every engine's, together
        "skipped_nonfinite_by_engine": dict(skipped),
        "checkpoint_failed_saves": failed_saves,
        "dead_peers": server.public["dead_peers"],
        "curve_refused": server.endpoint.authorized.denied if server.endpoint.authorized else 0,
        "final_checkpoint": str(cfg.run_dir / "final"),
        "plot": str(plot) if plot else None,
        "judges_plot": str(judges_plot) if judges_plot else None,
        "examples": examples or {},  # completions.jsonl's first and last logged steps, best response each
    }
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n" + reward_table(history))
    print(f"\nmean reward: first 10% of steps {first:.3f} -> last 10% {last:.3f} ({last - first:+.3f})")
    for when in ("first", "last"):
        for ex in (examples or {}).get(when, []):
            print(f"{when} logged step {ex['step']}: {ex['prompt'][:60]!r} -> {ex['best'][:120]!r}"
                  + (f" ({ex['score']:.2f})" if ex["score"] is not None else ""))
    print(f"plot: {plot}   checkpoint: {summary['final_checkpoint']}   metrics: {cfg.run_dir / 'metrics.jsonl'}")
    return summary
