"""Charts of a run from its `metrics.jsonl`: what people would rather see than read.

    tiller plot runs/demo          # writes runs/demo/plots/{reward,kl,loss,throughput,staleness,phases}.png
                                   # and timeline.png from runs/demo/timeline.jsonl (start-up and end)

Each chart is drawn only from metrics the run has (a DPO run has no `kl/mean`, a run from before
phase timings has no phases); a value logged as null (not finite) is left out of its line.
Imports matplotlib only when called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# chart name -> (title, y label, [(metric, legend label)], stacked)
CHARTS: dict[str, tuple[str, str, list[tuple[str, str]], bool]] = {
    "reward": ("mean judge reward", "reward", [("reward/mean", "mean reward"), ("reward/chosen", "chosen"),
                                               ("reward/rejected", "rejected")], False),
    "kl": ("KL to the reference", "nats", [("kl/sequence", "per response (k1 sum)"), ("kl/mean", "per token")], False),
    "loss": ("loss and gradient", "value", [("loss", "loss"), ("grad_norm", "pre-clip gradient norm"),
                                            ("train/loss", "training loss"), ("eval/loss", "held-out loss"),
                                            ("train/grad_norm", "pre-clip gradient norm")], False),
    # the offline stages (tiller sft / rm / dpo)
    "lr": ("learning rate", "learning rate", [("train/lr", "learning rate")], False),
    "accuracy": ("accuracy", "fraction", [("train/accuracy", "training pairs ranked right"),
                                          ("eval/accuracy", "held-out pairs ranked right"),
                                          ("train/rewards/accuracy", "training pairs, implicit reward"),
                                          ("eval/rewards/accuracy", "held-out pairs, implicit reward"),
                                          ("eval/token_accuracy", "held-out next-token accuracy")], False),
    "margins": ("reward margins", "chosen - rejected", [("train/margin", "training"), ("eval/margin", "held-out"),
                                                         ("train/rewards/margin", "training, implicit reward"),
                                                         ("eval/rewards/margin", "held-out, implicit reward")], False),
    "throughput": ("throughput", "per second", [("samples_per_s", "judged samples"),
                                                 ("tokens/generated_per_s", "tokens generated"),
                                                 ("tokens/trained_per_s", "tokens trained")], False),
    # online DPO: what shows instability coming (pair accuracy falling, responses shrinking, log-probs diving)
    "pairs": ("preference pairs", "value", [("rewards/accuracy", "pair accuracy"),
                                            ("offpolicy/logratio", "log pi - log pi_behaviour per token")], False),
    "length": ("response length", "tokens", [("response_length/mean", "mean response")], False),
    "logps": ("policy log-probs of trained pairs", "nats (summed)", [("logps/chosen", "chosen"),
                                                                      ("logps/rejected", "rejected")], False),
    "staleness": ("policy lag of trained samples", "share of the batch", [], True),  # staleness/lag_*, filled in
    "phases": ("where a learner step's time goes", "seconds", [("time/wait_s", "waiting for data"),
                                                               ("time/train_s", "training"),
                                                               ("time/publish_s", "publishing weights")], True),
}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display here, and no GUI toolkit import),
    imported on first use: 0.7 s that a process which never plots should not pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run directory?)")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
    return rows


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(m["step"], m[key]) for m in history if isinstance(m.get(key), (int, float))]
    return [s for s, _ in points], [float(v) for _, v in points]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every chart the run's metrics allow; returns the PNGs written."""
    plt = pyplot()

    run_dir = Path(run_dir)
    history = read_metrics(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    lags = sorted({k for m in history for k in m if k.startswith("staleness/lag_")}, key=lambda k: int(k.rsplit("_", 1)[1]))
    written = []
    for name, (title, ylabel, lines, stacked) in CHARTS.items():
        if name == "staleness":
            lines = [(k, f"{k.rsplit('_', 1)[1]} versions old") for k in lags]
        present = [(key, label) for key, label in lines if _series(history, key)[0]]
        if not present:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        if stacked:
            steps = [m["step"] for m in history if all(isinstance(m.get(k), (int, float)) for k, _ in present)]
            rows = [m for m in history if m["step"] in set(steps)]
            ax.stackplot(steps, *[[float(m[k]) for m in rows] for k, _ in present], labels=[lb for _, lb in present],
                         alpha=0.8)
        else:
            for key, label in present:
                xs, ys = _series(history, key)
                # evaluations come every few steps: points, so one or two of them still show
                ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{run_dir.name}: {title}")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
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
