"""Where the learner's numbers go: a progress line, `metrics.jsonl`, W&B, and a closing summary.

The file and W&B are written by `tiller.records.RunRecord`, as every stage's are.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

from tiller.config import Config
from tiller.records import RunRecord, keep_steps_up_to  # noqa: F401 - keep_steps_up_to: main.py reads it here

log = logging.getLogger(__name__)


class MetricsSink(RunRecord):
    """The online learner's record: `RunRecord` with its progress line (and its KL warning level)."""

    def __init__(self, cfg: Config, run_dir: Path, resume_step: int = 0, wandb_id: str | None = None):
        self.kl_warn_nats = cfg.metrics.kl_warn_nats
        super().__init__(cfg, run_dir, resume_step, wandb_id, line=lambda m: progress_line(m, self.kl_warn_nats))


def progress_line(m: dict[str, Any], kl_warn_nats: float = 0.0) -> str:
    if "rewards/margin" in m:  # online DPO: what shows instability coming (pair accuracy falling, KL and length drifting)
        detail = (f"margin {m['rewards/margin']:+.3f} | acc {m['rewards/accuracy']:.2f}"
                  + (f" | kl {m['kl/sequence']:.1f}" if "kl/sequence" in m else "")
                  + (f" | len {m['response_length/mean']:.1f}" if "response_length/mean" in m else ""))
    else:
        detail = f"kl {m.get('kl/mean', float('nan')):.4f} | clipfrac {m.get('policy/clipfrac', float('nan')):.3f}"
    return (
        f"step {m['step']:>4} | v{m['policy_version']:<4} | reward {m['reward/mean']:.3f} "
        f"| loss {m['loss']:.4f} | {detail} "
        f"| {m['samples_per_s']:.1f} samples/s | staleness {m['staleness/mean']:.2f}"
        + (" | SKIPPED: non-finite loss or gradient" if m.get("skipped") else "")
        + (f" | WARNING: KL to the reference {m['kl/sequence']:.1f} nats per response (> {kl_warn_nats:g})"
           if kl_warn_nats and m.get("kl/sequence", 0.0) > kl_warn_nats else "")
    )


def reward_table(history: list[dict[str, Any]], rows: int = 10) -> str:
    """Mean reward over `rows` equal spans of steps, as a small text table."""
    if not history:
        return "(no steps)"
    span = max(1, math.ceil(len(history) / rows))
    lines = ["steps        mean reward", "-----------  -----------"]
    for start in range(0, len(history), span):
        chunk = history[start:start + span]
        mean = sum(m["reward/mean"] for m in chunk) / len(chunk)
        lines.append(f"{chunk[0]['step']:>4}-{chunk[-1]['step']:<6}  {mean:11.3f}")
    return "\n".join(lines)


def first_last_tenth(history: list[dict[str, Any]]) -> tuple[float, float]:
    n = max(1, len(history) // 10)
    first = sum(m["reward/mean"] for m in history[:n]) / n
    last = sum(m["reward/mean"] for m in history[-n:]) / n
    return first, last


def warm_plotting() -> threading.Thread:
    """Import matplotlib (0.7 s of CPU) in a background thread. Started while the learner waits for its
    first batch (the actors start slower than the learner), so the closing plots do not add it to the
    end of the run."""
    from tiller.plots import pyplot

    thread = threading.Thread(target=pyplot, name="tiller-warm-plotting", daemon=True)
    thread.start()
    return thread


def plot_reward(history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Mean reward per step (and a moving average) as a PNG."""
    if not history:
        return None
    from tiller.plots import pyplot
    plt = pyplot()

    steps = [m["step"] for m in history]
    rewards = [m["reward/mean"] for m in history]
    window = max(1, len(rewards) // 20)
    smooth = [sum(rewards[max(0, i - window + 1):i + 1]) / len(rewards[max(0, i - window + 1):i + 1])
              for i in range(len(rewards))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, rewards, alpha=0.35, label="mean reward per step")
    ax.plot(steps, smooth, label=f"moving average ({window} steps)")
    ax.set_xlabel("learner step")
    ax.set_ylabel("mean judge reward")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_judges(history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Each judge's throughput per step and its tasks so far, as a PNG (None if no judge reported)."""
    judges = sorted({key.split("/")[1] for m in history for key in m
                     if key.startswith("judge/") and key.endswith("/tasks")})
    if not judges:
        return None
    from tiller.plots import pyplot
    plt = pyplot()

    fig, (rate, tasks) = plt.subplots(1, 2, figsize=(11, 4))
    for judge in judges:
        rows = [m for m in history if f"judge/{judge}/judgements_per_s" in m]
        rate.plot([m["step"] for m in rows], [m[f"judge/{judge}/judgements_per_s"] for m in rows], ".-", label=judge)
        rows = [m for m in history if f"judge/{judge}/tasks" in m]
        tasks.plot([m["step"] for m in rows], [m[f"judge/{judge}/tasks"] for m in rows], label=judge)
    rate.set_ylabel("judged samples / s")
    rate.set_ylim(bottom=0)
    tasks.set_ylabel("tasks judged, cumulative")
    for ax in (rate, tasks):
        ax.set_xlabel("learner step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
