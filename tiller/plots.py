"""Charts of a run from its `metrics.jsonl`: what people would rather see than read.

    tiller plot runs/demo          # writes runs/demo/plots/{reward,kl,loss,throughput,staleness,phases}.png

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
    "loss": ("loss and gradient", "value", [("loss", "loss"), ("grad_norm", "pre-clip gradient norm")], False),
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
                ax.plot(*_series(history, key), label=label)
        ax.set_xlabel("learner step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{run_dir.name}: {title}")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
