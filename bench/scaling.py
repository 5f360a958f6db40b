"""Scaling and placement: trained prompts/s with 1, 2 and 3 rollout actors, pinned by the placement
plan and unpinned (`run.placement: off`), one run each, back to back.

    python bench/scaling.py                         # configs/demo.yaml, 40 steps per run
    python bench/scaling.py --actors 1 2 --steps 30 learner.batch_size=32

"Plan" is the placement `auto` would make for that many actors if it did not cap them at one per
free core (it does: this bench is where that cap's measurements come from): every busy process its
own cores where there are enough, the learner a core of its own otherwise, the rest sharing.
Reported per run: steady-state prompts/s, time to the first trained step, the wall time of the
whole run and its tail (the end of the last step to the exit of every process).
Writes bench/results/scaling.json and scaling.png.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import yaml

from _runs import demo_parser, save, save_figure, tiller_run


def planned_cores(actors: int) -> str:
    """The placement plan for `actors` actors and one rule judge, as a run.cores override."""
    from tiller.placement import plan

    slots = plan(actors, 1, heavy_judges=False)
    return "run.cores=" + yaml.safe_dump({s.role: list(s.cores) for s in slots}, default_flow_style=True).strip()


def plot(result: dict, path: Path) -> None:
    from tiller.plots import pyplot
    plt = pyplot()

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for placement, marker in (("plan", "o-"), ("off", "s--")):
        runs = [r for r in result["runs"] if r["placement"] == placement]
        ax.plot([r["actors"] for r in runs], [r["prompts_per_s"] for r in runs], marker, label=placement)
        bx.plot([r["actors"] for r in runs], [r["first_step_s"] for r in runs], marker, label=placement)
    ax.set_ylabel("steady-state prompts/s")
    bx.set_ylabel("seconds to the first trained step")
    for a in (ax, bx):
        a.set_xlabel("rollout actors")
        a.set_xticks(result["actors"])
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle(f"{result['config']} on {result['cores']} cores")
    save_figure(fig, path)


def main() -> None:
    parser = demo_parser(__doc__, 40)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="tiller-scaling-"))
    cores = len(os.sched_getaffinity(0))
    result = {"date": time.strftime("%Y-%m-%d"), "config": args.config, "steps": args.steps, "cores": cores,
              "actors": args.actors, "runs": []}
    for actors in args.actors:
        for placement in ("plan", "off"):
            where = ["run.placement=manual", planned_cores(actors)] if placement == "plan" else ["run.placement=off"]
            print(f"{actors} actor(s), placement {placement} ...", flush=True)
            run = tiller_run(args.config, f"scaling-{actors}-{placement}", out,
                             [f"run.actors={actors}", f"learner.steps={args.steps}", *where, *args.overrides])
            result["runs"].append({"actors": actors, "placement": placement, "prompts_per_s": run.per_s,
                                   "first_step_s": run.first_step_s, "wall_s": run.wall_s, "tail_s": run.tail_s,
                                   "reward_last": run.steady[-1]["reward/mean"],
                                   "actors_idle_frac": run.mean("perf/actors/idle_frac"),
                                   "learner_idle_frac": run.mean("perf/learner_idle_frac")})
    path = save(result, "scaling")
    plot(result, path.with_suffix(".png"))
    base = next(r for r in result["runs"] if r["actors"] == args.actors[0] and r["placement"] == "plan")
    print(f"\n{'actors':>6} {'placement':<10}{'prompts/s':>10}{'vs first':>9}{'1st step s':>11}{'wall s':>8}{'tail s':>8}"
          f"{'learner idle':>13}{'actors idle':>12}")
    for r in result["runs"]:
        print(f"{r['actors']:>6} {r['placement']:<10}{r['prompts_per_s']:>10.2f}"
              f"{r['prompts_per_s'] / base['prompts_per_s']:>8.2f}x{r['first_step_s'] or 0:>11.1f}{r['wall_s']:>8.1f}"
              f"{r['tail_s'] or 0:>8.1f}"
              f"{r['learner_idle_frac']:>13.2f}{r['actors_idle_frac']:>12.2f}")
    print(f"written: {path}, {path.with_suffix('.png')}")
    from report import write_result
    write_result("scaling", ["actors", "placement", "prompts/s", "vs first planned", "first step s", "wall s",
                             "tail s"],
                 [[r["actors"], r["placement"], r["prompts_per_s"], f"{r['prompts_per_s'] / base['prompts_per_s']:.2f}×",
                   r["first_step_s"], r["wall_s"], r["tail_s"]] for r in result["runs"]],
                 note=f"{args.config} on {cores} cores, {args.steps} steps per run, one run each.",
                 plot=path.with_suffix(".png"), data=result)


if __name__ == "__main__":
    main()
