"""Does asynchrony pay? The same job in synchronous and asynchronous mode, back to back in one run.

    python bench/overlap.py                       # configs/demo.yaml, 60 steps each
    python bench/overlap.py --config configs/demo-grpo.yaml --steps 40

Each mode runs as `tiller run CONFIG learner.mode=...` (learner, actors and judge as processes).
Throughput is steady-state trained prompts per second over the steps after the first five
(start-up is bench/startup's business, not this one's). The ideal gain of overlapping is
(G + T) / max(G, T), with G the time a synchronous step waits for generation and judging and T
the time it trains and publishes, both measured in the synchronous run. Goal (issue #12): the
asynchronous gain >= 0.9 x ideal. Writes bench/results/overlap.json and overlap.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
SKIP = 5  # start-up steps left out of the steady state


def run_mode(config: str, mode: str, steps: int, out: Path, extra: list[str]) -> dict:
    name = f"overlap-{mode}"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tiller", "run", config, f"name={name}", f"output_dir={out}",
                           f"learner.mode={mode}", f"learner.steps={steps}", "metrics.wandb=disabled", *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=1800)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    batch = yaml.safe_load((out / name / "config.yaml").read_text())["learner"]["batch_size"]
    steady = metrics[SKIP:]
    seconds = sum(m["time/step_s"] for m in steady)
    mean = lambda key: statistics.fmean(m.get(key, 0.0) for m in steady)  # noqa: E731
    return {
        "mode": mode, "steps": len(metrics), "wall_s": wall, "first_step_s": metrics[0].get("time/first_step_s"),
        "prompts_per_s": batch * len(steady) / seconds,
        "wait_s": mean("time/wait_s"), "train_s": mean("time/train_s"), "publish_s": mean("time/publish_s"),
        "learner_idle_frac": mean("learner/idle_frac"), "actors_idle_frac": mean("actors/idle_frac"),
        "reward_last": statistics.fmean(m["reward/mean"] for m in metrics[-max(1, len(metrics) // 10):]),
        "step_s": [m["time/step_s"] for m in metrics],
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode in ("sync", "async"):
        r = result[mode]
        ax.plot(range(1, len(r["step_s"]) + 1), r["step_s"], label=f"{mode}: {r['prompts_per_s']:.1f} prompts/s")
    ax.set_xlabel("learner step")
    ax.set_ylabel("seconds per step")
    ax.set_title(f"async / sync = {result['gain']:.2f}x (ideal {result['ideal_gain']:.2f}x)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for both runs")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="tiller-overlap-"))
    result = {"date": time.strftime("%Y-%m-%d"), "config": args.config, "steps": args.steps}
    for mode in ("sync", "async"):
        print(f"running {mode} ...", flush=True)
        result[mode] = run_mode(args.config, mode, args.steps, out, args.overrides)
    sync = result["sync"]
    generate, train = sync["wait_s"], sync["train_s"] + sync["publish_s"]
    result["ideal_gain"] = (generate + train) / max(generate, train)
    result["gain"] = result["async"]["prompts_per_s"] / sync["prompts_per_s"]
    result["of_ideal"] = result["gain"] / result["ideal_gain"]
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "overlap.json").write_text(json.dumps(result, indent=2))
    plot(result, results / "overlap.png")
    print(f"\n{'':10}{'prompts/s':>11}{'wall s':>9}{'wait s':>9}{'train s':>9}{'learner idle':>14}{'actors idle':>13}"
          f"{'reward (last 10%)':>19}")
    for mode in ("sync", "async"):
        r = result[mode]
        print(f"{mode:10}{r['prompts_per_s']:>11.2f}{r['wall_s']:>9.1f}{r['wait_s']:>9.3f}{r['train_s']:>9.3f}"
              f"{r['learner_idle_frac']:>14.2f}{r['actors_idle_frac']:>13.2f}{r['reward_last']:>19.3f}")
    print(f"\nasync / sync = {result['gain']:.2f}x; ideal (G+T)/max(G,T) from the sync run's phases = "
          f"{result['ideal_gain']:.2f}x (G {generate:.3f} s, T {train:.3f} s); {result['of_ideal']:.2f} of ideal "
          f"(goal >= 0.9)")
    print(f"written: {results / 'overlap.json'}, {results / 'overlap.png'}")


if __name__ == "__main__":
    main()
