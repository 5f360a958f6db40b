"""The loop every offline stage runs: seeded epochs of batches, one optimizer step each, evaluation on the
held-out rows, checkpoints and `--resume`, metrics, plots, a summary and `final/`.

    recipe = Recipe("sft", units=lambda e: sum(e.trained), loss=sft_loss, evaluate=sft_eval)
    summary = fit(cfg, recipe, engine, train_rows, held_out_rows, model_dir, resume=False)

A stage is the `Recipe` it passes (what its loss is averaged over, its micro-batch loss, its evaluation),
not a subclass: the loop knows nothing of tokens or pairs. A step's batch is cut into micro-batches
(`train.micro_batch_size`); each micro-batch's summed loss is divided by the whole batch's units (trained
tokens for SFT, pairs for RM and DPO), so the accumulated gradient is the batch mean whatever the cut. The
learning rate follows `train.schedule` after `train.warmup_steps`, set on the optimizer before each step.
The order of the rows is drawn from `seed` and the epoch, so a resumed run continues with the same batches.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from tiller.config import Config, ConfigError, dump_config
from tiller.records import RunRecord, provenance
from tiller.training import checkpoint
from tiller.training.engine import DTYPES, ModelEngine, OptimConfig, load_model
from tiller.training.precision import resolve_precision
from tiller.training.lora import with_lora
from tiller.training.schedule import lr_schedule

Loss = Callable[[list], tuple[torch.Tensor, dict[str, float]]]  # micro-batch -> (summed loss, summed metrics)


@dataclass(frozen=True)
class Recipe:
    name: str  # the stage: "sft", "rm", "dpo" (metric names and the console line say it)
    units: Callable[[Any], float]  # what one example adds to the batch the loss is averaged over
    loss: Loss  # summed over the micro-batch's units, with metrics summed the same way
    evaluate: Callable[[list], dict[str, float]]  # held-out rows -> metrics (averages), under no_grad


def split_held_out(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded `fraction` of the rows held out (at least one when any is asked for)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n = 0 if fraction <= 0 else max(1, round(fraction * len(rows)))
    if n >= len(rows):
        raise ValueError(f"train.eval_fraction {fraction} leaves no training rows of {len(rows)}")
    held = set(order[:n])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def batches(rows: list, batch_size: int, epoch: int, seed: int) -> list[list]:
    order = list(range(len(rows)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [[rows[i] for i in order[start:start + batch_size]] for start in range(0, len(order), batch_size)]


def micro_batches(batch: list, size: int) -> list[list]:
    return [batch] if size <= 0 or size >= len(batch) else [batch[i:i + size] for i in range(0, len(batch), size)]


def _step(recipe: Recipe, engine: ModelEngine, batch: list, micro: int) -> dict[str, float]:
    """One optimizer step on `batch`; returns the step's loss and metrics as batch means."""
    total = float(sum(recipe.units(row) for row in batch))
    sums: dict[str, float] = {}

    def chunk_loss(rows: list) -> torch.Tensor:
        loss, metrics = recipe.loss(rows)
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        return loss / total

    step = engine.step([partial(chunk_loss, rows) for rows in micro_batches(batch, micro)])
    return {**{f"train/{k}": v / total for k, v in sums.items()}, "train/grad_norm": step["grad_norm"],
            "train/skipped": step["skipped"], "train/units": total}


def _line(stage: str, total_steps: int, started: float, first_step: int):
    def line(m: dict[str, Any]) -> str:
        if m["step"] == 0:  # the held-out rows before any training: the baseline every later one compares with
            return f"{stage} before training | " + " | ".join(
                f"held-out {k.split('/', 1)[1]} {v:.3f}" for k, v in m.items() if k.startswith("eval/"))
        done = m["step"] - first_step + 1
        elapsed = time.monotonic() - started
        eta = elapsed / done * (total_steps - m["step"])
        extra = "".join(f" | {k.split('/', 1)[1]} {v:.3f}" for k, v in m.items()
                        if k.startswith("eval/") and isinstance(v, float))
        return (f"{stage} step {m['step']:>4}/{total_steps} | loss {m.get('train/loss', float('nan')):.4f} | "
                f"lr {m['train/lr']:.2e}{extra} | {elapsed:.0f} s elapsed, ETA {eta:.0f} s"
                + (" | SKIPPED: non-finite loss or gradient" if m.get("train/skipped") else ""))
    return line


def fit(cfg: Config, recipe: Recipe, engine: ModelEngine, train: list, held_out: list, model_dir: Path,
        resume: bool = False) -> dict[str, Any]:
    """Train to `train.epochs` (or `train.max_steps`), evaluating, checkpointing and logging as configured;
    writes `final/` (the model and `model_dir`'s tokenizer) and summary.json; returns the summary."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.clean_stale(run_dir)  # what a crash or a full disk left mid-write in an earlier life of this run
    total = cfg.train.max_steps or cfg.train.epochs * math.ceil(len(train) / cfg.train.batch_size)
    state = _resumed(run_dir, recipe, engine, total) if resume else {"step": 0, "wandb_id": None}
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    started = time.monotonic()
    record = RunRecord(cfg, run_dir, resume_step=state["step"], wandb_id=state["wandb_id"],
                       line=_line(recipe.name, total, started, state["step"] + 1))
    print(f"{recipe.name}: {len(train)} training rows, {len(held_out)} held out; {total} steps of "
          f"{cfg.train.batch_size}", flush=True)
    try:
        _train(cfg, recipe, engine, train, held_out, record, state["step"], total)
    finally:
        record.close()
    engine.save(run_dir / "final", tokenizer_dir=model_dir, merge=cfg.model.lora.merge)
    summary = _summary(cfg, recipe.name, record.history, time.monotonic() - started, engine)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(run_dir)
    print(f"{recipe.name} done: {run_dir / 'final'} ({summary['wall_s']:.0f} s)", flush=True)
    return summary


def _resumed(run_dir: Path, recipe: Recipe, engine: ModelEngine, total: int) -> dict[str, Any]:
    latest = checkpoint.latest(run_dir)
    if latest is None:
        raise ConfigError(f"--resume: no complete checkpoint under {run_dir / 'checkpoints'}")
    state = checkpoint.restore(latest, {recipe.name: engine.engine})
    print(f"resuming from {latest}: step {state['step']} of {total}", flush=True)
    return state


def _train(cfg: Config, recipe: Recipe, engine: ModelEngine, train: list, held_out: list, record: RunRecord,
           step: int, total: int) -> None:
    """Steps `step + 1` to `total`: the batch, the learning rate, the step, evaluation, the record, checkpoints."""
    tc = cfg.train
    per_epoch = math.ceil(len(train) / tc.batch_size)
    # a run shorter than its warmup has nothing left to decay: it warms up and stays
    factor = lr_schedule(tc.schedule if total > tc.warmup_steps else "constant", tc.warmup_steps, total)
    if held_out and step == 0:  # the baseline every later evaluation is compared with
        baseline = _evaluate(recipe, engine, held_out)
        record.log({"step": 0, "epoch": 0.0, **{f"eval/{k}": v for k, v in baseline.items()}})
    while step < total:
        epoch, index = divmod(step, per_epoch)
        lr = tc.lr * factor(step)
        engine.set_lr(lr)
        metrics = {"step": step + 1, "epoch": epoch + (index + 1) / per_epoch, "train/lr": lr,
                   **_step(recipe, engine, batches(train, tc.batch_size, epoch, cfg.seed)[index], tc.micro_batch_size)}
        step += 1
        due = tc.eval_every and step % tc.eval_every == 0
        if held_out and (due or (not tc.eval_every and step % per_epoch == 0) or step == total):
            metrics.update({f"eval/{k}": v for k, v in _evaluate(recipe, engine, held_out).items()})
        record.log(metrics)
        if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < total:
            # NaN weights are refused before they are written (a checkpoint of them would poison a resume)
            checkpoint.save(cfg.run_dir, step, {recipe.name: engine.engine}, {"wandb_id": record.wandb_id},
                            weights=engine.weight_buckets(256 << 20))


def _evaluate(recipe: Recipe, engine: ModelEngine, held_out: list) -> dict[str, float]:
    engine.engine.eval()
    try:
        with torch.no_grad():
            return recipe.evaluate(held_out)
    finally:
        engine.engine.train()


def _summary(cfg: Config, stage: str, history: list[dict], wall_s: float, engine: ModelEngine) -> dict[str, Any]:
    last = history[-1] if history else {}
    evals = [m for m in history if any(k.startswith("eval/") for k in m)]
    return {"stage": stage, "name": cfg.name, "steps": last.get("step", 0), "wall_s": round(wall_s, 2),
            "final_train_loss": last.get("train/loss"), "skipped_nonfinite_steps": engine.guard.skipped,
            "eval": {k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else {},
            "first_eval": {k: v for k, v in evals[0].items() if k.startswith("eval/")} if evals else {},
            "final": str(cfg.run_dir / "final"), **provenance(cfg)}


def _plot(run_dir: Path) -> None:
    from tiller.plots import plot_run

    try:
        plot_run(run_dir)
    except Exception as exc:  # noqa: BLE001 - a chart is never worth a failed stage
        print(f"plots skipped: {exc}", flush=True)


def stage_engine(cfg: Config, model_dir: Path, auto_class=None, freeze=None, task_type: str = "CAUSAL_LM",
                 **config_kwargs) -> ModelEngine:
    """The stage's model in a DeepSpeed engine with the `train` section's optimizer settings; `freeze(model)`
    may set requires_grad before the optimizer is built (`rm.unfrozen_layers`, `sft.unfrozen_layers`)."""
    if auto_class is None:
        from transformers import AutoModelForCausalLM as auto_class
    tc = cfg.train
    precision = resolve_precision(tc.precision)
    model = load_model(auto_class, model_dir, DTYPES[precision], **config_kwargs)
    if freeze is not None:
        freeze(model)
    model = with_lora(model, cfg.model.lora, task_type)
    torch.manual_seed(cfg.seed)
    optim = OptimConfig(lr=tc.lr, weight_decay=tc.weight_decay, max_grad_norm=tc.max_grad_norm,
                        zero_stage=tc.zero_stage, precision=precision, batch_size=tc.batch_size,
                        micro_batch_size=tc.micro_batch_size)
    return ModelEngine(model, optim, name="policy", setting="train (non-finite steps in a row)",
                       gradient_checkpointing=tc.gradient_checkpointing)


def max_length(cfg: Config, model_dir: Path) -> int:
    """`train.max_length`, bounded by the model's own positions: a row longer than the model can read is
    refused by the data reader (naming it), never cut silently or sent past the position table."""
    from tiller.model_files import config_of

    positions = config_of(model_dir).get("max_position_embeddings") or cfg.train.max_length
    return min(cfg.train.max_length, int(positions))

