"""An evaluation's report: report.json (everything), report.md (a table with each target met or not, the
per-category rates), answers.jsonl, and PNGs: refusal per harm category and over-refusal per look-alike
kind (model beside baseline), the headline metrics before and after, and the reward distribution."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tiller.config import TargetsConfig

# metric key, label, how the target reads, whether higher is better
HEADLINE = (
    ("harmlessness", "harmlessness (harmful prompts answered safely)", "above"),
    ("harmful_refusal", "refusal of harmful requests", None),
    ("refusal_in_first_sentence", "... said in the first sentence", None),
    ("over_refusal", "over-refusal (benign look-alikes refused)", "at most"),
    ("helpfulness", "helpfulness (tasks answered correctly)", "above"),
    ("honesty", "honesty (factual questions answered correctly)", "above"),
)


def _value(report: dict, role: str, key: str) -> float | None:
    entry = report["metrics"].get(role, {}).get(key)
    return None if entry is None else entry["value"]


def check_targets(report: dict, targets: TargetsConfig) -> dict:
    """Each target with the model's value and whether it is met (None where not measured)."""
    def verdict(value, threshold, how):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return {"value": None, "target": threshold, "how": how, "met": None}
        met = value > threshold if how == "above" else value <= threshold if how == "at most" else value < threshold
        return {"value": value, "target": threshold, "how": how, "met": bool(met)}

    out = {key: verdict(_value(report, "model", key), getattr(targets, key), how)
           for key, _, how in HEADLINE if how is not None}
    out["win_rate"] = verdict(report.get("win_rate", {}).get("value"), targets.win_rate, "above")
    out["kl_per_token"] = verdict(report.get("kl_to_baseline", {}).get("per_token"), targets.kl_per_token, "below")
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _rate(entry: dict | None) -> str:
    if not entry:
        return "—"
    return f"{_pct(entry['value'])} [{_pct(entry['low'])}, {_pct(entry['high'])}] (n={entry['n']})"


def markdown(report: dict) -> str:
    roles = list(report["metrics"])
    mark = {True: "met", False: "**not met**", None: "not measured"}
    lines = [f"# Evaluation of `{report['model']}`", ""]
    if report.get("baseline"):
        reused = f" (its answers from `{report['baseline_answers']}`)" if report.get("baseline_answers") else ""
        lines += [f"Baseline: `{report['baseline']}`{reused}.", ""]
    lines += [f"Safety scorer: {report['safety_scorer']}.", "",
              "| metric | " + " | ".join(roles) + " | target | |", "|---|" + "---|" * len(roles) + "---|---|"]
    targets = report["targets"]
    for key, label, how in HEADLINE:
        if not any(key in report["metrics"][r] for r in roles):
            continue
        t = targets.get(key)
        target = f"{t['how']} {_pct(t['target'])}" if t else ""
        lines.append(f"| {label} | " + " | ".join(_rate(report["metrics"][r].get(key)) for r in roles)
                     + f" | {target} | {mark[t['met']] if t else ''} |")
    if "win_rate" in report and report["win_rate"]:
        w = report["win_rate"]
        lines.append(f"| win rate against the baseline (ties half) | {_rate(w)} |" + " |" * (len(roles) - 1)
                     + f" above {_pct(targets['win_rate']['target'])} | {mark[targets['win_rate']['met']]} |")
    if "kl_to_baseline" in report:
        k = report["kl_to_baseline"]
        lines.append(f"| KL to the baseline, per token (per response) | {k['per_token']:.4f} ({k['per_response']:.2f})"
                     " |" + " |" * (len(roles) - 1) + f" below {targets['kl_per_token']['target']} | "
                     f"{mark[targets['kl_per_token']['met']]} |")
    for role in roles:
        m = report["metrics"][role]
        if "reward" in m:
            lines.append(f"| mean reward ({role}) | " + ", ".join(f"{k} {v:.3f}" for k, v in m["reward"].items())
                         + " |" + " |" * len(roles) + " |")
    lines += ["", "Response length (tokens, mean): " + "; ".join(
        f"{role}: " + ", ".join(f"{k} {v:.0f}" for k, v in report["metrics"][role]["length_tokens"].items())
        for role in roles)]
    if "win_rate" in report and report["win_rate"]:
        w = report["win_rate"]
        lines += ["", f"Win-rate judge: {w['judge']}; {w['wins']} wins, {w['losses']} losses, {w['ties']} ties, "
                      f"{w['unreadable']} unreadable."]
    for key, label in (("harmful_refusal", "Refusal of harmful requests"), ("over_refusal", "Over-refusal")):
        if key not in report["metrics"].get("model", {}):
            continue
        lines += ["", f"## {label}, by category", "", "| category | " + " | ".join(roles) + " |",
                  "|---|" + "---|" * len(roles)]
        for cat in report["metrics"]["model"][key]["by_category"]:
            lines.append(f"| {cat} | " + " | ".join(
                _rate(report["metrics"][r][key]["by_category"].get(cat)) for r in roles) + " |")
    g = report["generation"]
    lines += ["", f"Greedy answers, at most {g['max_new_tokens']} new tokens, vLLM {g['dtype']}; " + ", ".join(
        f"{role} {s:.1f} s ({g['prompts_per_s'][role]:.2f} prompts/s)" for role, s in g["seconds"].items())
        + f". Whole evaluation {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def write_report(run_dir: Path, report: dict, rows: list[dict]) -> list[Path]:
    from tiller.eval.evaluate import write_jsonl

    public = {k: v for k, v in report.items()}
    if "win_rate" in public:
        public["win_rate"] = {k: v for k, v in public["win_rate"].items() if k != "verdicts"}
    (run_dir / "report.json").write_text(json.dumps(public, indent=2, default=float) + "\n")
    (run_dir / "report.md").write_text(markdown(report))
    write_jsonl(run_dir / "answers.jsonl", rows)
    return plot_report(run_dir, report, rows)


def plot_report(run_dir: Path, report: dict, rows: list[dict]) -> list[Path]:
    from tiller.plots import pyplot

    plt = pyplot()
    roles = list(report["metrics"])
    written = []
    panels = [(k, t) for k, t in (("harmful_refusal", "refusal of harmful requests"),
                                  ("over_refusal", "over-refusal of benign look-alikes"))
              if k in report["metrics"]["model"]]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
        for ax, (key, title) in zip(axes[0], panels):
            cats = list(report["metrics"]["model"][key]["by_category"])
            width = 0.8 / len(roles)
            for j, role in enumerate(roles):
                vals = [report["metrics"][role][key]["by_category"].get(c, {}).get("value", 0) for c in cats]
                ax.bar([i + j * width for i in range(len(cats))], vals, width, label=role)
            ax.set_xticks([i + width * (len(roles) - 1) / 2 for i in range(len(cats))])
            ax.set_xticklabels(cats, rotation=35, ha="right", fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_title(title)
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, run_dir / "eval-categories.png", plt))
    keys = [(k, label.split(" (")[0]) for k, label, _ in HEADLINE if k in report["metrics"]["model"]]
    if keys:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        width = 0.8 / len(roles)
        for j, role in enumerate(roles):
            ax.bar([i + j * width for i in range(len(keys))],
                   [report["metrics"][role].get(k, {}).get("value", 0) for k, _ in keys], width, label=role)
        ax.set_xticks([i + width * (len(roles) - 1) / 2 for i in range(len(keys))])
        ax.set_xticklabels([label for _, label in keys], rotation=25, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title("before and after" if len(roles) > 1 else "evaluation")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, run_dir / "eval-summary.png", plt))
    if any("reward" in r.get("model", {}) for r in rows):
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for role in roles:
            ax.hist([r[role]["reward"] for r in rows if "reward" in r.get(role, {})], bins=30, alpha=0.55, label=role)
        ax.set_xlabel("reward")
        ax.set_ylabel("answers")
        ax.set_title("reward distribution")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, run_dir / "eval-reward.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
