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

import tempfile
import time
from pathlib import Path

from _runs import demo_parser, save, save_figure, tiller_run


def run_mode(config: str, mode: str, steps: int, out: Path, extra: list[str]) -> dict:
    run = tiller_run(config, f"overlap-{mode}", out, [f"learner.mode={mode}", f"learner.steps={steps}", *extra],
                     timeout_s=1800)
    tail = run.metrics[-max(1, len(run.metrics) // 10):]
    return {
        "mode": mode, "steps": len(run.metrics), "wall_s": run.wall_s, "first_step_s": run.first_step_s,
        "prompts_per_s": run.per_s, "wait_s": run.mean("perf/time/wait_s"), "train_s": run.mean("perf/time/train_s"),
        "publish_s": run.mean("perf/time/publish_s"), "learner_idle_frac": run.mean("perf/learner_idle_frac"),
        "actors_idle_frac": run.mean("perf/actors/idle_frac"),
        "reward_last": sum(m["reward/mean"] for m in tail) / len(tail), "step_s": run.series("perf/time/step_s"),
    }


def plot(result: dict, path: Path) -> None:
    from tiller.plots import pyplot
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode in ("sync", "async"):
        r = result[mode]
        ax.plot(range(1, len(r["step_s"]) + 1), r["step_s"], label=f"{mode}: {r['prompts_per_s']:.1f} prompts/s")
    ax.set_xlabel("learner step")
    ax.set_ylabel("seconds per step")
    ax.set_title(f"async / sync = {result['gain']:.2f}x (ideal {result['ideal_gain']:.2f}x)")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main() -> None:
    parser = demo_parser(__doc__, 60)
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
    path = save(result, "overlap")
    plot(result, path.with_suffix(".png"))
    print(f"\n{'':10}{'prompts/s':>11}{'wall s':>9}{'wait s':>9}{'train s':>9}{'learner idle':>14}{'actors idle':>13}"
          f"{'reward (last 10%)':>19}")
    for mode in ("sync", "async"):
        r = result[mode]
        print(f"{mode:10}{r['prompts_per_s']:>11.2f}{r['wall_s']:>9.1f}{r['wait_s']:>9.3f}{r['train_s']:>9.3f}"
              f"{r['learner_idle_frac']:>14.2f}{r['actors_idle_frac']:>13.2f}{r['reward_last']:>19.3f}")
    print(f"\nasync / sync = {result['gain']:.2f}x; ideal (G+T)/max(G,T) from the sync run's phases = "
          f"{result['ideal_gain']:.2f}x (G {generate:.3f} s, T {train:.3f} s); {result['of_ideal']:.2f} of ideal "
          f"(goal >= 0.9)")
    print(f"written: {path}, {path.with_suffix('.png')}")
    from report import write_result
    write_result("overlap", ["mode", "prompts/s", "wall s", "wait s (G)", "train + publish s (T)", "learner idle",
                             "actors idle", "reward, last 10%"],
                 [[m, result[m]["prompts_per_s"], result[m]["wall_s"], result[m]["wait_s"],
                   result[m]["train_s"] + result[m]["publish_s"], result[m]["learner_idle_frac"],
                   result[m]["actors_idle_frac"], result[m]["reward_last"]] for m in ("sync", "async")],
                 note=f"async / sync = {result['gain']:.2f}×; ideal (G + T) / max(G, T) from the sync run = "
                      f"{result['ideal_gain']:.2f}×: {result['of_ideal']:.2f} of ideal (goal ≥ 0.9).",
                 plot=path.with_suffix(".png"), data=result)


if __name__ == "__main__":
    main()
