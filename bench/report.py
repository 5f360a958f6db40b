"""Benchmark results as tables: every bench/results/*.json in, docs/benchmarks.md out.

    python bench/report.py            # writes docs/benchmarks.md
    python bench/report.py --check    # exit 1 if docs/benchmarks.md is not what the results render

Each bench script ends with `write_result(...)`, which writes bench/results/<name>.json: whatever the
script measured (`data`), plus the fields this report reads:

    benchmark        the script, bench/<benchmark>.py
    date, commit     the day it ran and `git rev-parse --short HEAD` at the time
    command          the command line that produced it
    columns, rows    its table (cells are strings, numbers or null)
    note             optional: one sentence on what the numbers show
    plot             optional: a PNG under docs/ (a list for several) drawn by the same run

docs/benchmarks.md is generated from these files and nothing else (tests/test_readme.py checks it), so a
number changes there only when a bench run changes its result file. A result file that a newer run of
another name replaces is deleted by hand.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
REQUIRED = ("benchmark", "date", "commit", "command", "columns", "rows")

# Sections in this order (by result file name); files not named here follow, alphabetically.
ORDER = ["codec", "weight_transfer", "overlap", "startup", "scaling", "slow_reader", "vs_trl_bf16",
         "vs_trl_overhead_bf16", "vs_trl_smollm2_bf16", "vs_trl", "vs_trl_overhead", "vs_trl_smollm2",
         "offline_vs_trl", "offline_vs_trl_vocab32k",
         "anchor_reference", "eval_throughput", "learner_gpu-cpu", "learner_gpu-cuda"]
# What each benchmark compares, by script (the results say what it found).
ABOUT = {
    "codec": "Encode + decode of one rollout of 256 responses × 512 tokens with behaviour log-probs: Tiller's "
             "codec (arrays as zero-copy frames, every field checked) against msgpack of the same data as "
             "Python lists, in one run.",
    "weight_transfer": "Weights from a live `LearnerServer` to an actor process over loopback ZeroMQ and into its "
                       "running vLLM engine, against raw zero-copy frames of the same buckets between the same "
                       "processes and a memory copy: fetch (the actor's `WeightStream`), sync streamed (fetch and "
                       "load layer by layer, what an actor does) and sync whole (fetch everything, then load); "
                       "medians of 5 timed rounds, then the actor's memory growth in one round each.",
    "overlap": "The same job in `learner.mode: sync` and `async`, back to back: steady-state trained prompts/s "
               "after step 5, against the ideal gain (G + T) / max(G, T) from the synchronous run's own phase "
               "times (G: waiting for generation and judging, T: training and publishing).",
    "startup": "Seconds from `tiller run` to the first trained step, cold and served by a warm actor "
               "(`tiller actor --stay`), against a bare vLLM start in the same run (import vLLM, build an "
               "`LLM` on the same model, generate one token, on one core).",
    "scaling": "Trained prompts/s with 1, 2 and 3 rollout actors on one machine, each process pinned as the "
               "placement plan would pin it (\"plan\") and unpinned (\"off\"), one run each, back to back.",
    "slow_reader": "A demo run while a peer sends 1,200 weight requests and reads none of the answers for one "
                   "window: steps trained in the window before, while it sits and after it leaves, and an "
                   "honest status request answered in the middle of each window.",
    "vs_trl": "Tiller (`tiller run`) against TRL 1.16's synchronous `OnlineDPOTrainer` (HF generate, its only "
              "choice without a GPU): same random-init model, prompts, vowel reward, k = 2, 8 pairs per step, "
              "lengths, lr, β, temperature 1 and a constant learning rate for both; steady-state trained "
              "pairs/s after step 5 and the wall time of the whole process.",
    "offline_vs_trl": "`tiller sft`, `tiller rm` and `tiller dpo` beside TRL 1.16's `SFTTrainer`, `RewardTrainer` "
                      "and `DPOTrainer` on the same random-init Qwen2-shaped model (fp32, 2 threads, each "
                      "trainer in its own process), data, batches and hyper-parameters; ratios are Tiller / TRL.",
    "eval_throughput": "`tiller eval`'s generation against a plain loop that templates, tokenizes, calls vLLM's "
                       "`LLM.generate` on every prompt at once and decodes, greedy, same engine.",
    "learner_gpu": "Tiller's online-DPO step (`dpo_step` on a `PolicyTrainer`) and weight publishing against a "
                   "hand-written PyTorch step and a pinned (GPU) or host (CPU) copy of the same bytes, in one run. "
                   "Made for a CUDA GPU; on a CPU it only checks the script.",
    "anchor_reference": "What `anchor_kl` adds to a SmolLM2 SFT step of configs/safety/sft.yaml's batches (forward "
                        "and backward, no optimizer): the base model run whole against its top blocks on the "
                        "policy's frozen trunk (training/shared_reference.py); the three take turns on the same "
                        "batches, medians.",
}
TITLES = {
    "codec": "Wire codec", "weight_transfer": "Weight transfer into a running engine",
    "overlap": "Asynchronous against synchronous", "startup": "Start-up", "scaling": "Scaling and placement",
    "slow_reader": "A peer that never reads", "vs_trl": "Online DPO against TRL",
    "offline_vs_trl": "Offline stages against TRL", "eval_throughput": "Evaluation throughput",
    "learner_gpu": "Learner step and weight publishing", "anchor_reference": "The SFT anchor's reference",
}
HEADER = """\
<!-- generated by python bench/report.py from bench/results/; do not edit by hand -->
# Benchmarks

Each section is one result file in `bench/results/`, written by the bench script named in its heading:
the date it ran, the commit, the exact command, what it compares, its table and what the numbers show.
Every ratio is against a baseline measured in the same run. Unless a section says otherwise, they ran on
this project's CPU machine (2 cores, no GPU), a shared host: compare ratios within one section, not
absolute numbers across sections. A dash is a value that run did not record.
Studies that are not benchmarks are on their own pages: [demos](demos.md),
[online DPO under asynchrony](dpo-async.md), [the SmolLM2 safety pipeline](safety-pipeline.md).
"""


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _command() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return "python " + shlex.join([str(script), *sys.argv[1:]])


def write_result(name: str, columns: list[str], rows: list[list], command: str | None = None,
                 note: str | None = None, plot: str | Path | list | None = None, data: dict | None = None) -> Path:
    """bench/results/NAME.json: `data` (what the script measured) with the report's fields; returns its path.

    date and commit are filled in, and the command from sys.argv unless given. A plot outside docs/ is copied
    into docs/ (so that docs/benchmarks.md can show it from a clean checkout) and named there."""
    plots = [] if plot is None else [plot] if isinstance(plot, (str, Path)) else list(plot)
    shown = []
    for p in plots:
        p = Path(p) if Path(p).is_absolute() else ROOT / p
        if p.parent != ROOT / "docs" and p.exists():
            shutil.copyfile(p, ROOT / "docs" / p.name)
        shown.append(f"docs/{p.name}")
    result = {**(data or {}), "benchmark": Path(sys.argv[0]).stem, "date": time.strftime("%Y-%m-%d"),
              "commit": _git_commit(), "command": command or _command(), "columns": list(columns),
              "rows": [list(r) for r in rows]}
    if note:
        result["note"] = note
    if shown:
        result["plot"] = shown[0] if len(shown) == 1 else shown
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"result: {path} (python bench/report.py renders docs/benchmarks.md from it)")
    return path


def cell(value) -> str:
    """A table cell: strings as they are, numbers to three significant digits (thousands separated)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def load(results: Path = RESULTS) -> list[tuple[str, dict]]:
    """(name, result) for every result file, in report order; raises ValueError naming a file that lacks a field."""
    found = []
    for path in sorted(results.glob("*.json")):
        result = json.loads(path.read_text())
        missing = [k for k in REQUIRED if k not in result]
        if missing:
            raise ValueError(f"{path}: no {', '.join(missing)} (bench/report.py's write_result writes them)")
        found.append((path.stem, result))
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found, key=lambda item: (rank.get(item[0], len(ORDER)), item[0]))


def section(name: str, result: dict) -> str:
    bench = result["benchmark"]
    title = TITLES.get(bench, bench)
    if name != bench:
        title += f" ({name.removeprefix(bench).strip('_-').replace('_', ' ')})"
    lines = [f"## {title}: `bench/{bench}.py`", "",
             f"{result['date']} · commit `{result['commit']}` · `{result['command']}`", ""]
    if bench in ABOUT:
        lines += [ABOUT[bench], ""]
    columns = result["columns"]
    lines += ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in result["rows"]:
        if len(row) != len(columns):
            raise ValueError(f"{name}: a row of {len(row)} cells under {len(columns)} columns")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    lines.append("")
    if result.get("note"):
        lines += [result["note"], ""]
    plots = result.get("plot") or []
    for plot in [plots] if isinstance(plots, str) else plots:
        target = Path(plot)
        lines += [f"![{title}]({target.relative_to('docs') if target.parts[0] == 'docs' else '../' + plot})", ""]
    return "\n".join(lines)


def render(results: Path = RESULTS) -> str:
    """docs/benchmarks.md as the result files make it."""
    return HEADER + "".join("\n" + section(name, result) for name, result in load(results)).rstrip("\n") + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} differs from what bench/results renders: run python bench/report.py")
            return 1
        return 0
    DOC.write_text(text)
    print(f"written: {DOC.relative_to(ROOT)} ({len(load())} results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
