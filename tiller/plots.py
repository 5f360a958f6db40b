"""Charts of a run from its `metrics.jsonl`: what people would rather see than read.

    tiller plot runs/demo          # writes runs/demo/plots/{reward,kl,loss,throughput,staleness,phases}.png
                                   # and timeline.png from runs/demo/timeline.jsonl (start-up and end)

Each chart is drawn only from metrics the run has (a DPO run has no `objective/kl/token`, a run from before
phase timings has no phases); a value logged as null (not finite) is left out of its line.
Imports matplotlib only when called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any



@dataclass(frozen=True)
class Chart:
    title: str
    panels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # per panel: (y label, ((metric, legend), ...))
    stacked: bool = False


def _one(ylabel: str, *lines: tuple[str, str]) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    return ((ylabel, lines),)


# chart name -> what it draws, by the grouped names of tiller/metric_names.py (older runs are read through it)
CHARTS: dict[str, Chart] = {
    "reward": Chart("mean judge reward", _one("reward", ("reward/mean", "mean reward"), ("reward/chosen", "chosen"),
                                               ("reward/rejected", "rejected"))),
    "kl": Chart("KL to the reference", _one("nats", ("objective/kl/sequence", "per response (k1 sum)"),
                                              ("objective/kl/token", "per token"))),
    "loss": Chart("loss and gradient", _one("value", ("train/loss", "loss"), ("train/grad_norm", "pre-clip gradient norm"),
                                             ("eval/loss", "held-out loss"))),
    "lr": Chart("learning rate", _one("learning rate", ("train/lr", "learning rate"))),
    # the offline stages (tiller sft / rm / dpo)
    "accuracy": Chart("accuracy", _one("fraction", ("train/accuracy", "training pairs ranked right"),
                                       ("eval/accuracy", "held-out pairs ranked right"),
                                       ("train/rewards/accuracy", "training pairs, implicit reward"),
                                       ("eval/rewards/accuracy", "held-out pairs, implicit reward"),
                                       ("eval/token_accuracy", "held-out next-token accuracy"))),
    "margins": Chart("reward margins", _one("chosen - rejected", ("train/margin", "training"), ("eval/margin", "held-out"),
                                            ("train/rewards/margin", "training, implicit reward"),
                                            ("eval/rewards/margin", "held-out, implicit reward"))),
    # samples and tokens differ 30-fold: one panel each, so neither line is flattened
    "throughput": Chart("throughput", (("judged samples / s", (("perf/samples_per_s", "judged samples"),)),
                                       ("tokens / s", (("perf/tokens_generated_per_s", "generated"),
                                                       ("perf/tokens_trained_per_s", "trained"))))),
    # online DPO: what shows instability coming (pair accuracy falling, responses shrinking, log-probs diving)
    "pairs": Chart("preference pairs", _one("value", ("objective/pair_accuracy", "pair accuracy"),
                                            ("objective/offpolicy/logratio", "log pi - log pi_behaviour per token"))),
    "length": Chart("response length", _one("tokens", ("train/response_length", "mean response"))),
    "logps": Chart("policy log-probs of trained pairs", _one("nats (summed)", ("objective/logps/chosen", "chosen"),
                                                             ("objective/logps/rejected", "rejected"))),
    "staleness": Chart("policy lag of trained samples", _one("share of the batch")),  # one line per lag, filled in
    "phases": Chart("where a learner step's time goes", _one("seconds", ("perf/time/wait_s", "waiting for data"),
                                                             ("perf/time/train_s", "training"),
                                                             ("perf/time/publish_s", "publishing weights")),
                    stacked=True),
}


def lag_label(lag: int) -> str:
    return "current policy" if lag == 0 else f"{lag} version{'s' if lag > 1 else ''} old"


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display here, and no GUI toolkit import),
    imported on first use: 0.7 s that a process which never plots should not pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl under the grouped names (a run logged before them reads the same)."""
    from tiller.metric_names import grouped_row

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run directory?)")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(grouped_row(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
    return rows


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(m["step"], m[key]) for m in history if isinstance(m.get(key), (int, float))]
    return [s for s, _ in points], [float(v) for _, v in points]


def kl_warning_level(run_dir: Path) -> float:
    """The run's `metrics.kl_warn_nats` from its config.yaml (0 when it has none)."""
    import yaml

    path = run_dir / "config.yaml"
    try:
        return float(((yaml.safe_load(path.read_text()) or {}).get("metrics") or {}).get("kl_warn_nats") or 0.0)
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return 0.0


def _draw_lines(ax, history: list[dict[str, Any]], lines: list[tuple[str, str]]) -> None:
    for n, (key, label) in enumerate(lines):
        xs, ys = _series(history, key)
        colour = f"C{n}"
        if len(xs) < 30:  # evaluations come every few steps: points, so one or two of them still show
            ax.plot(xs, ys, label=label, color=colour, marker="o", markersize=3)
            continue
        window = max(2, len(xs) // 25)
        ax.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8)  # the raw series, faint, behind
        ax.plot(xs, smoothed(ys, window), color=colour, label=f"{label} ({window}-step mean)")


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every chart the run's metrics allow; returns the PNGs written."""
    plt = pyplot()

    run_dir = Path(run_dir)
    history = read_metrics(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    lags = sorted({int(k.rsplit("_", 1)[1]) for m in history for k in m if k.startswith("train/staleness/lag_")})
    written = []
    for name, chart in CHARTS.items():
        panels = chart.panels
        if name == "staleness":
            panels = ((panels[0][0], tuple((f"train/staleness/lag_{lag}", lag_label(lag)) for lag in lags)),)
        panels = [(ylabel, [(k, lb) for k, lb in lines if _series(history, k)[0]]) for ylabel, lines in panels]
        panels = [(ylabel, lines) for ylabel, lines in panels if lines]
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
        for ax, (ylabel, present) in zip(axes[0], panels):
            if chart.stacked:
                rows = [m for m in history if all(isinstance(m.get(k), (int, float)) for k, _ in present)]
                ax.stackplot([m["step"] for m in rows], *[[float(m[k]) for m in rows] for k, _ in present],
                             labels=[lb for _, lb in present], alpha=0.8)
            else:
                _draw_lines(ax, history, present)
            if name == "kl" and (level := kl_warning_level(run_dir)) and any(k == "objective/kl/sequence"
                                                                             for k, _ in present):
                ax.axhline(level, color="red", linestyle="--", linewidth=1, label=f"warning level {level:g} nats")
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.legend(loc="best", fontsize=8)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{run_dir.name}: {chart.title}")
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    from tiller import timeline

    marks = timeline.read(run_dir)
    if marks:
        written.append(plot_timeline(marks, out / "timeline.png", f"{run_dir.name}: where start-up and the end go"))
    return written


def started_at(marks: list[dict[str, Any]], process: str) -> float:
    """When the launcher started `process` (0 for the launcher itself, or for a process started by hand)."""
    event = {"launcher": None, "learner": "learner started"}.get(process, "workers started")
    return next((m["s"] for m in marks if m["process"] == "launcher" and m["event"] == event), 0.0)


def plot_timeline(marks: list[dict[str, Any]], path: Path, title: str,
                  baseline: tuple[str, float] | None = None) -> Path:
    """One bar per process, one segment per milestone, each named inside it when wide enough to read (the
    JSON lines have them all); `baseline` adds a grey bar (label, seconds) to compare with."""
    plt = pyplot()

    processes = list(dict.fromkeys(m["process"] for m in marks))
    end = max(max(m["s"] for m in marks), baseline[1] if baseline else 0.0)
    rows = len(processes) + (1 if baseline else 0)
    fig, ax = plt.subplots(figsize=(12, 0.7 * rows + 2.0))
    colours = plt.get_cmap("tab20")
    for row, process in enumerate(processes):
        start = started_at(marks, process)
        for n, m in enumerate(m for m in marks if m["process"] == process):
            width = m["s"] - start
            ax.barh(row, width, left=start, color=colours(n % 20), edgecolor="white")
            if width >= 0.06 * end:
                ax.text(start + width / 2, row, f"→ {m['event']}", fontsize=7, ha="center", va="center")
            start = m["s"]
    labels = list(processes)
    if baseline:
        ax.barh(len(processes), baseline[1], color="lightgrey")
        ax.text(baseline[1] / 2, len(processes), baseline[0], fontsize=7, ha="center", va="center")
        labels.append("baseline")
    first = next((m["s"] for m in marks if m["event"] == "first step trained"), None)
    if first is not None:
        ax.axvline(first, color="black", linestyle="--", linewidth=1)
        ax.text(first, -0.6, f" first trained step {first:.1f} s", fontsize=8)
    ax.set_yticks(range(rows), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run started (each segment ends at the milestone it names)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
