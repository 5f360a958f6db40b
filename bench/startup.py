"""Where the time to the first trained step goes: every process's start-up milestones on one clock,
against the floor of a bare vLLM start measured in the same run.

    python bench/startup.py                    # configs/demo.yaml, 5 steps, 2 runs, then 2 with a warm actor
    python bench/startup.py --runs 3 --warm-runs 0 learner.mode=sync

The baseline is what any system that samples with vLLM pays before its first token on this machine:
one process, pinned to one core, that imports vLLM, builds an `LLM` on the same model with the same
settings and generates one token (plain vLLM, no Tiller code). Then `tiller run` is started as a user
would; its processes record milestones in `runs/<name>/timeline.jsonl` (tiller/timeline.py), which
are printed as a timeline and drawn as one bar per process. The ratio printed is
`perf/time/first_step_s` over the bare vLLM start.

Then the same runs with a warm actor: `tiller actor --stay` started once, on the core the plan gives
the actor, its engine built before the timed runs; each `tiller run --actors 0` it serves starts no
vLLM of its own (the judge goes on the actor's core, idle until the learner listens).
Writes bench/results/startup.json, startup.png and startup_warm.png.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _runs import ROOT, demo_parser, save, tiller_run

from tiller import timeline
from tiller.plots import plot_timeline, started_at

BARE_VLLM = """
import json, os, sys, time
started = time.time()
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
from vllm import LLM, SamplingParams
imported = time.time()
llm = LLM(model=sys.argv[1], skip_tokenizer_init=True, dtype="float32", enforce_eager=True,
          max_model_len=int(sys.argv[2]), seed=0)
built = time.time()
llm.generate([{"prompt_token_ids": [3, 4, 5]}], SamplingParams(max_tokens=1, logprobs=0, detokenize=False),
             use_tqdm=False)
done = time.time()
print(json.dumps({"import_s": imported - started, "engine_s": built - imported, "first_token_s": done - built,
                  "total_s": done - started}))
"""


def bare_vllm(model: str, max_model_len: int, core: int) -> dict:
    """The floor: a fresh interpreter importing vLLM, building an engine, generating one token (one core)."""
    done = subprocess.run([sys.executable, "-c", BARE_VLLM, model, str(max_model_len)], capture_output=True,
                          text=True, timeout=600, preexec_fn=lambda: os.sched_setaffinity(0, {core}),
                          env={**os.environ, "VLLM_CPU_OMP_THREADS_BIND": str(core)})
    if done.returncode != 0:
        raise SystemExit(f"bare vLLM start failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_timeline(marks: list[dict]) -> None:
    """Each milestone with the time since that process's previous one (or since it was started)."""
    previous: dict[str, float] = {}
    print(f"{'at':>7}  {'+':>6}  process / milestone")
    for m in marks:
        before = previous.get(m["process"], started_at(marks, m["process"]))
        print(f"{m['s']:>6.1f}s  {m['s'] - before:>5.1f}s  {m['process']}: {m['event']}")
        previous[m["process"]] = m["s"]


def plot(runs: list[dict], bare: dict, path: Path, what: str = "") -> None:
    first = runs[-1]["first_step_s"]
    plot_timeline(runs[-1]["timeline"], path, f"where the time to the first trained step goes{what}: {first:.1f} s "
                  f"(a bare vLLM start: {bare['total_s']:.1f} s)",
                  baseline=("bare vLLM: import, build an engine, generate 1 token", bare["total_s"]))


def timed_runs(config: str, prefix: str, count: int, out: Path, overrides: list[str]) -> list[dict]:
    runs = []
    for n in range(count):
        name = f"{prefix}{n}"
        run = tiller_run(config, name, out, overrides)
        marks = timeline.read(out / name)
        print(f"\n{name}: first trained step at {run.first_step_s:.1f} s, every process exited at {run.wall_s:.1f} s "
              f"(tail {run.tail_s:.1f} s)")
        print_timeline(marks)
        runs.append({"first_step_s": run.first_step_s, "wall_s": run.wall_s, "tail_s": run.tail_s, "timeline": marks})
    return runs


def warm_actor(config: str, out: Path, core: int, overrides: list[str]) -> subprocess.Popen:
    """`tiller actor --stay` on `core`, returned once its engine is built and it waits for a learner."""
    log = out / "warm-actor.log"
    actor = subprocess.Popen([sys.executable, "-m", "tiller", "actor", "--config", config, "--stay", "--id", "actor0",
                              f"output_dir={out}", "name=warm-actor", *overrides], cwd=ROOT,
                             stdout=log.open("w"), stderr=subprocess.STDOUT,
                             env={**os.environ, "TILLER_CORES": str(core)})
    deadline = time.monotonic() + 300
    while "waiting for a learner" not in log.read_text(errors="replace"):
        if actor.poll() is not None or time.monotonic() > deadline:
            actor.kill()
            raise SystemExit(f"the warm actor did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return actor


def main() -> None:
    parser = demo_parser(__doc__, steps=5)
    parser.add_argument("--runs", type=int, default=2, help="tiller runs (the first also warms the OS's caches)")
    parser.add_argument("--warm-runs", type=int, default=2, help="tiller runs served by a warm actor (0: none)")
    args = parser.parse_args()
    import yaml

    cfg = yaml.safe_load((ROOT / args.config).read_text())
    model = str(ROOT / cfg["model"]["path"])
    if not (Path(model) / "config.json").exists():  # the demo model is built by its first run
        tiller_run(args.config, "startup-build", Path(tempfile.mkdtemp()), ["learner.steps=1"])
    max_model_len = cfg.get("rollout", {}).get("max_model_len", 256)
    core = max(os.sched_getaffinity(0))
    bare = bare_vllm(model, max_model_len, core)
    print(f"bare vLLM on core {core}: import {bare['import_s']:.1f} s, engine {bare['engine_s']:.1f} s, "
          f"first token {bare['first_token_s']:.1f} s: {bare['total_s']:.1f} s", flush=True)
    out = Path(tempfile.mkdtemp(prefix="tiller-startup-"))
    overrides = [f"learner.steps={args.steps}", *args.overrides]
    runs = timed_runs(args.config, "startup", args.runs, out, overrides)
    warm: list[dict] = []
    if args.warm_runs:
        first_core = min(os.sched_getaffinity(0))
        actor = warm_actor(args.config, out, core, args.overrides)
        try:
            # the judge beside the warm actor, whose core is idle until a learner listens (beside the learner,
            # its start slowed the learner's: first step 11.6-11.8 s instead of 7.7-8.9 s, measured)
            placed = ["run.actors=0", "run.placement=manual",
                      f"run.cores={{learner: [{first_core}], judge0: [{core}]}}"]
            warm = timed_runs(args.config, "startup-warm", args.warm_runs, out, overrides + placed)
        finally:
            actor.send_signal(signal.SIGINT)
            try:
                actor.wait(60)
            except subprocess.TimeoutExpired:
                actor.kill()
    first = statistics.median(r["first_step_s"] for r in runs)
    print(f"\nfirst trained step: median {first:.1f} s over {len(runs)} runs = {first / bare['total_s']:.2f}x "
          f"the bare vLLM start ({bare['total_s']:.1f} s); goal (issue #12): <= 10 s")
    result = {"config": args.config, "steps": args.steps, "overrides": args.overrides, "bare_vllm": bare,
              "first_step_s_median": first, "vs_bare_vllm": first / bare["total_s"], "runs": runs}
    if warm:
        warm_first = statistics.median(r["first_step_s"] for r in warm)
        print(f"with a warm actor (tiller actor --stay): median {warm_first:.1f} s over {len(warm)} runs = "
              f"{warm_first / bare['total_s']:.2f}x the bare vLLM start, {warm_first / first:.2f}x a cold start")
        result.update(warm_first_step_s_median=warm_first, warm_vs_cold=warm_first / first, warm_runs=warm)
    path = save(result, "startup")
    plot(runs, bare, path.with_suffix(".png"))
    if warm:
        plot(warm, bare, path.with_name("startup_warm.png"), " with a warm actor")
    print(f"written: {path} and its charts")
    from report import write_result
    each = lambda rs, key: ", ".join(f"{r[key]:.1f}" if r[key] is not None else "—" for r in rs)  # noqa: E731
    rows = [["bare vLLM start", f"{bare['total_s']:.1f}", bare["total_s"], "1.00×", None, None],
            ["tiller run, cold", each(runs, "first_step_s"), first, f"{first / bare['total_s']:.2f}×", None,
             each(runs, "tail_s")]]
    if warm:
        rows.append(["tiller run, warm actor", each(warm, "first_step_s"), warm_first,
                     f"{warm_first / bare['total_s']:.2f}×", f"{warm_first / first:.2f}×", each(warm, "tail_s")])
    write_result("startup", ["start", "first trained step, each run (s)", "median (s)", "vs bare vLLM", "vs cold",
                             "tail, each run (s)"], rows,
                 note=f"Goal (first trained step ≤ 10 s): from a cold start {'met' if first <= 10 else 'not met'}"
                      + (f", with a warm actor {'met' if warm_first <= 10 else 'not met'}" if warm else "") + ".",
                 plot=[path.with_suffix(".png")] + ([path.with_name("startup_warm.png")] if warm else []), data=result)


if __name__ == "__main__":
    main()
