"""Where the learner's numbers go: a progress line, `metrics.jsonl`, W&B, and a closing summary.

The file and W&B are written by `tiller.records.RunRecord`, as every stage's are.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from tiller.config import Config
from tiller.metric_names import grouped_row
from tiller.records import RunRecord, keep_steps_up_to  # noqa: F401 - keep_steps_up_to: main.py reads it here

log = logging.getLogger(__name__)


class MetricsSink(RunRecord):
    """The online learner's record: `RunRecord` with its progress line and KL warning. Rows arrive under
    the grouped names of tiller/metric_names.py (a resumed run's earlier rows are read through it too)."""

    def __init__(self, cfg: Config, run_dir: Path, resume_step: int = 0, wandb_id: str | None = None):
        self.total_steps = cfg.learner.steps
        self.kl_warning = KLWarning(cfg.metrics.kl_warn_nats)
        self.started = time.monotonic()
        self.first_step = resume_step + 1
        super().__init__(cfg, run_dir, resume_step, wandb_id, line=self._line)
        self.history = [grouped_row(m) for m in self.history]

    def _line(self, m: dict[str, Any]) -> str:
        elapsed = time.monotonic() - self.started
        done = m["step"] - self.first_step + 1  # steps this process has trained
        eta = elapsed / done * (self.total_steps - m["step"]) if done > 0 else float("nan")
        return progress_line(m, self.total_steps, elapsed, eta, self.kl_warning.check(m.get("objective/kl/sequence")))


class KLWarning:
    """Warns when the KL to the reference crosses `level` nats per response, and after that only when
    it has grown by `growth` (a quarter) over the value last warned about, until it falls back below the
    level: a warning repeated on every step teaches people to ignore it; a KL that keeps climbing still
    gets one now and then."""

    def __init__(self, level: float, growth: float = 0.25):
        self.level, self.growth = level, growth
        self.warned_at: float | None = None

    def check(self, kl: float | None) -> str:
        if not self.level or kl is None or not math.isfinite(kl):
            return ""
        if kl <= self.level:
            self.warned_at = None  # back under: the next crossing is news again
            return ""
        if self.warned_at is not None and kl < self.warned_at * (1 + self.growth):
            return ""
        first = self.warned_at is None
        self.warned_at = kl
        return (f" | WARNING: KL to the reference {kl:.1f} nats per response "
                + (f"(> metrics.kl_warn_nats {self.level:g})" if first else f"(still growing; > {self.level:g})"))


def clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_line(m: dict[str, Any], total_steps: int, elapsed_s: float, eta_s: float, warning: str = "") -> str:
    if "objective/implicit_reward/margin" in m:  # online DPO: what shows instability coming (pair accuracy
        # falling, KL and length drifting)
        detail = (f"margin {m['objective/implicit_reward/margin']:+.3f} | acc {m['objective/pair_accuracy']:.2f}"
                  + (f" | kl {m['objective/kl/sequence']:.1f}" if "objective/kl/sequence" in m else "")
                  + (f" | len {m['train/response_length']:.1f}" if "train/response_length" in m else ""))
    else:
        detail = (f"kl {m.get('objective/kl/token', float('nan')):.4f} "
                  f"| clipfrac {m.get('objective/policy/clipfrac', float('nan')):.3f}")
    return (
        f"step {m['step']:>{len(str(total_steps))}}/{total_steps} | {clock(elapsed_s)} elapsed, eta {clock(eta_s)} "
        f"| v{m['train/policy_version']:<4} | reward {m['reward/mean']:.3f} | loss {m['train/loss']:.4f} | {detail} "
        f"| {m['perf/samples_per_s']:.1f} samples/s | staleness {m['train/staleness/mean']:.2f}"
        + (" | SKIPPED: non-finite loss or gradient" if m.get("train/skipped") else "")
        + live_eval_part(m)
        + warning
    )


def live_eval_part(m: dict[str, Any]) -> str:
    """A live-evaluation round's numbers, on the step it completed (tiller/learner/live_eval.py)."""
    if "eval/reward" not in m:
        return ""
    rates = "".join(f", {label} {m[key]:.2f}" for key, label in (
        ("eval/harmful_refusal", "refuses harmful"), ("eval/over_refusal", "over-refusal"),
        ("eval/win_rate", "win rate")) if m.get(key) is not None)
    return f" | eval v{m['eval/version']}: reward {m['eval/reward']:.3f}{rates}, length x{m['eval/length_ratio']:.2f}"


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


def warm_plotting(wandb_tables: bool) -> threading.Thread:
    """Import matplotlib (0.7 s of CPU) and W&B's tables in a background thread. Started while the learner waits for its
    first batch (the actors start slower than the learner), so the closing plots do not add it to the
    end of the run."""
    from tiller.plots import pyplot

    def warm() -> None:
        pyplot()
        if not wandb_tables:  # W&B off: importing it would only take CPU from the learner's start
            return
        try:  # W&B's first Table costs 0.5 s of imports: not on step 1's completions log
            import wandb

            wandb.Table(columns=["warm"], data=[[0]])
        except Exception:  # noqa: BLE001 - only a warm-up
            pass

    thread = threading.Thread(target=warm, name="tiller-warm-plotting", daemon=True)
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
    judges = sorted({key.split("/")[2] for m in history for key in m
                     if key.startswith("perf/judge/") and key.endswith("/tasks")})
    if not judges:
        return None
    from tiller.plots import pyplot
    plt = pyplot()

    fig, (rate, tasks) = plt.subplots(1, 2, figsize=(11, 4))
    for judge in judges:
        rows = [m for m in history if f"perf/judge/{judge}/judgements_per_s" in m]
        rate.plot([m["step"] for m in rows], [m[f"perf/judge/{judge}/judgements_per_s"] for m in rows], ".-", label=judge)
        rows = [m for m in history if f"perf/judge/{judge}/tasks" in m]
        tasks.plot([m["step"] for m in rows], [m[f"perf/judge/{judge}/tasks"] for m in rows], label=judge)
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
