"""Plot harmful refusal against over-refusal for several `tiller eval` runs: where each recipe lands on the
trade-off, with 95% intervals, and the issue's target corner (>= 90% refused, <= 10% over-refused).

    python scripts/plot_refusal_tradeoff.py OUT.png LABEL=runs/<eval-run> [LABEL=runs/<eval-run> ...]

Each run directory holds the report.json that `tiller eval` writes; the model's numbers are plotted (and the
baseline's once, from the first run that has one). The points printed are the plotted ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET_REFUSED, TARGET_OVER = 0.90, 0.10


def point(metrics: dict) -> tuple[float, float, float, float, float, float]:
    """(over, over_low, over_high, refused, refused_low, refused_high) from one model's metrics."""
    over, harm = metrics["over_refusal"], metrics["harmful_refusal"]
    return over["value"], over["low"], over["high"], harm["value"], harm["low"], harm["high"]


def read(run: Path) -> dict:
    path = run / "report.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (a `tiller eval` run directory holds report.json)")
    return json.loads(path.read_text(encoding="utf-8"))["metrics"]


def main(argv: list[str]) -> None:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        raise SystemExit(__doc__)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out = Path(argv[0])
    runs = [(label, Path(path)) for label, path in (a.split("=", 1) for a in argv[1:])]
    points = []  # (name, point); the baseline once, from the first run that has one
    for label, run in runs:
        metrics = read(run)
        if "baseline" in metrics and not any(name == "base model" for name, _ in points):
            points.append(("base model", point(metrics["baseline"])))
        points.append((label, point(metrics["model"])))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.add_patch(Rectangle((0, TARGET_REFUSED), TARGET_OVER, 1.02 - TARGET_REFUSED, color="tab:green", alpha=0.15,
                           label="target"))
    trained = [p for name, p in points if name != "base model"]
    floor = min(p[4] for p in trained) - 0.1
    drawn = []
    for name, (x, xl, xh, y, yl, yh) in points:
        print(f"{name:<40} over-refusal {x:6.1%}  harmful refused {y:6.1%}")
        if name == "base model" and y < floor:
            # an untrained model sits far below every recipe: named in the corner, not drawn, so the recipes
            # are not squeezed into the top of the plot
            ax.text(0.01, 0.02, f"base model: {y:.1%} refused, {x:.1%} over-refused", transform=ax.transAxes,
                    ha="left", va="bottom", fontsize=8)
            continue
        ax.errorbar(x, y, xerr=[[x - xl], [xh - x]], yerr=[[y - yl], [yh - y]], fmt="o", capsize=3, alpha=0.85,
                    label=f"{name} ({y:.1%}, {x:.1%})")
        drawn.append((x, xl, xh, y, yl, yh))
    ax.set_xlim(0, max(0.3, max(p[2] for p in drawn) + 0.05))
    ax.set_ylim(max(0.0, min(p[4] for p in drawn) - 0.05), 1.02)
    ax.set_xlabel("over-refusal of benign look-alikes (lower is better)")
    ax.set_ylabel("refusal of harmful requests (higher is better)")
    ax.set_title("Where each recipe lands (95% intervals; legend: refused, over-refused)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
