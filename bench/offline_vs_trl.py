"""Tiller's offline stages against TRL's trainers: `tiller sft` / `rm` / `dpo` beside TRL 1.16's `SFTTrainer`,
`RewardTrainer` and `DPOTrainer`, on the same model, data, batches and hyper-parameters, in one run.

    pip install -e '.[bench]'                    # TRL 1.16 is a bench-only dependency
    python bench/offline_vs_trl.py                 # all three stages, ~5 minutes on a quiet 2-core machine
    python bench/offline_vs_trl.py --repeats 2     # each trainer twice, alternating; the median run is kept
    python bench/offline_vs_trl.py --vocab 32768 --steps 4 --out bench/results/offline_vs_trl_vocab32k.json

The model is a random-init tiny Qwen2 of our making (`ensure_tiny_policy`, hidden 256, 4 layers, 4 heads of
64, 2 KV heads, MLP 1024, char tokenizer: 3.95M parameters, so the transformer's compute dominates a step); the
data is written on the spot (random-letter prompts and responses, 80-180 tokens a sequence). Every
trainer runs in its own process (so each has its own RSS high-water mark), one after another, with
`torch.set_num_threads(THREADS)` and OMP_NUM_THREADS=THREADS. Both see the same batches: TRL's dataset is written
in the order Tiller's loop draws (epoch 0 of `offline.loop.batches` under `seed`) and read with
`train_sampling_strategy="sequential"`; the bench checks that every step's token count agrees.

Hyper-parameters, both sides: batch 8 (examples or pairs) in one micro-batch, AdamW at a constant lr with no
warmup, no weight decay, gradient clipping at 1.0, fp32, seed 0, gradient checkpointing off, evaluation off,
no checkpoints. TRL keeps its own optimizer implementation (transformers' default `adamw_torch_fused`;
Tiller's DeepSpeed engine runs torch's `AdamW`); `--trl-optim adamw_torch` gives TRL Tiller's.

Conventions matched, per stage (so that the first-step losses agree):
  sft  {prompt, completion} strings; EOS appended to the completion; no BOS (the char tokenizer adds none);
       loss = summed NLL of the completion tokens (EOS included) / the batch's completion tokens
       (TRL: completion_only_loss=True, loss_type="nll", packing=False, padding_free=False).
  rm   Bradley-Terry -log sigmoid(r_chosen - r_rejected), mean over pairs, no margin, no centering
       (TRL: center_rewards_coefficient=None); EOS appended to both responses; the score read at the last
       non-padding token (TRL's model head finds it by pad id; pad != EOS here, so the same token). The
       score head starts from the same saved checkpoint (an `AutoModelForSequenceClassification` built once
       from the policy with seed 0), not from each side's own random init.
  dpo  sigmoid loss, beta 0.1, no label smoothing, log-probs summed over the response (EOS included),
       reference log-probs precomputed before training (TRL: precompute_ref_log_probs=True; Tiller's
       default). Step 1's loss is ln 2 on both sides whatever the code does (the policy is the reference),
       so the bench also compares step 1's policy log-probs (logps/chosen, logps/rejected) and the loss of
       every later step (same batches, same updates: they should stay close).

Reported per stage: first-step loss of each (and |difference|, which should be < 1e-4), the largest loss
difference over all steps, tokens/s (non-padding tokens of the step's sequences, prompt and response, both
sequences of a pair, per second of step time, over the steps after the first: the interval from one step's
end to the next, loop overhead included), and peak RSS (VmHWM of the training process, read at the end of the
last step: model load, data, DPO's reference pass and training; setup and training phases apart as well, the
high-water mark being reset through /proc/self/clear_refs in between). Ratios are Tiller / TRL: tokens/s
above 1 is Tiller faster, memory below 1 is Tiller lighter. Writes bench/results/offline_vs_trl.json and a
bar chart of the ratios, docs/offline_vs_trl.png (with --out, the PNG is named after the JSON).

`--vocab N` pads the embedding and the tied LM head to N rows that no token uses: the same text and the same
losses, but logits as wide as a real model's (32768: 12.3M parameters, 8.4M of them in the embedding), which
is where the two LM-head implementations differ (TRL 1.16 projects through a tiled "fused LM head"; Tiller builds
the logits and takes the chosen tokens' log-probs with its own chunked autograd function).

Noise: on a shared 2-core machine, another busy process makes a 2-thread step up to ten times slower (OpenMP
threads wait for each other at every op), so a run that overlapped one is useless; compare the per-CPU-second
and median-step ratios beside the mean, and use --repeats on a machine that is not quiet.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _runs import ROOT, save, save_figure

STAGES = ("sft", "rm", "dpo")
SHAPE = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 1024,
         "max_positions": 512}
HYPER = {"batch_size": 8, "lr": 1e-4, "max_grad_norm": 1.0, "weight_decay": 0.0, "seed": 0, "beta": 0.1}
THREADS = 2
LOSS_TOLERANCE = 1e-4
LETTERS = "abcdefghijklmnopqrstuvwxyz"

CONVENTIONS = {
    "sft": "prompt/completion strings, EOS appended to the completion, no BOS; mean NLL over all completion "
           "tokens of the batch (TRL completion_only_loss=True, loss_type=nll, packing and padding_free off)",
    "rm": "Bradley-Terry -log sigmoid(r_c - r_r), mean over pairs, no margin or centering; EOS appended; score "
          "at the last non-padding token; score head from one saved checkpoint",
    "dpo": "sigmoid, beta 0.1, no label smoothing, summed log-probs, EOS appended, reference log-probs "
           "precomputed on both sides; step-1 loss is ln 2 by construction, so step-1 policy log-probs and "
           "every step's loss are compared too",
}


# ------------------------------------------------------------------------------------------------- memory
def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_high_water_mark() -> bool:
    """VmHWM back to the current RSS (Linux >= 4.0), so that the training phase's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Probe:
    """What a worker measures: RSS after imports, the setup phase's peak, then per step the time at its end,
    its tokens and its loss (plus stage metrics); the training peak at the last step."""

    def __init__(self, steps: int):
        self.steps = steps
        self.out: dict = {"rss_imports_kb": status_kb("VmRSS"), "records": []}

    def training_starts(self) -> None:
        self.out["hwm_setup_kb"] = status_kb("VmHWM")
        self.out["rss_train_start_kb"] = status_kb("VmRSS")
        self.out["hwm_reset"] = reset_high_water_mark()

    def step_ends(self, record: dict) -> None:
        record["end_s"] = time.perf_counter()
        record["end_cpu_s"] = time.process_time()  # user + system time of every thread of the process
        self.out["records"].append(record)
        if len(self.out["records"]) == self.steps:
            self.out["hwm_train_kb"] = status_kb("VmHWM")

    def finish(self, path: str) -> None:
        import torch

        self.out["torch_threads"] = torch.get_num_threads()
        self.out["ru_maxrss_kb_at_exit"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        Path(path).write_text(json.dumps(self.out))


def pin_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- Tiller side
def tiller_worker(spec: dict) -> None:
    pin_threads(spec["threads"])
    import deepspeed  # noqa: F401 - imported by the engine anyway: counted with the imports
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from tiller.config import load_config
    from tiller.offline import dpo, loop, rm, sft
    from tiller.records import RunRecord

    stage = spec["stage"]
    module = {"sft": sft, "rm": rm, "dpo": dpo}[stage]
    probe = Probe(spec["steps"])
    pending: dict = {}

    def tokens(row) -> int:
        row = getattr(row, "example", row)  # DPO's Pair holds its PreferenceExample
        if hasattr(row, "input_ids"):
            return len(row.input_ids)
        return 2 * len(row.prompt_ids) + len(row.chosen_ids) + len(row.rejected_ids)

    original_step, original_fit, original_log = loop._step, module.fit, RunRecord.log

    def step(recipe, engine, batch, micro):
        pending["tokens"] = sum(tokens(r) for r in batch)
        return original_step(recipe, engine, batch, micro)

    def fit(*args, **kwargs):
        probe.training_starts()
        return original_fit(*args, **kwargs)

    def log(self, metrics):
        original_log(self, metrics)  # as the loop does it: the file (and the console line) included
        probe.step_ends({**{k.split("/", 1)[1]: v for k, v in metrics.items()
                            if k.startswith("train/") and isinstance(v, float)},
                         "seq_tokens": pending.pop("tokens"), "loss": metrics["train/loss"]})

    loop._step, module.fit, RunRecord.log = step, fit, log
    h = spec["hyper"]
    overrides = [f"name={stage}", f"output_dir={spec['out_dir']}", f"model.path={spec['model']}",
                 "model.build_tiny=false", "metrics.wandb=disabled", f"seed={h['seed']}",
                 f"{stage}.data=[{{path: {spec['data']}}}]", f"train.max_steps={spec['steps']}",
                 f"train.batch_size={h['batch_size']}", "train.micro_batch_size=0", f"train.lr={h['lr']}",
                 "train.schedule=constant", "train.warmup_steps=0", f"train.weight_decay={h['weight_decay']}",
                 f"train.max_grad_norm={h['max_grad_norm']}", "train.precision=fp32", "train.zero_stage=0",
                 "train.gradient_checkpointing=false", "train.eval_fraction=0", "train.checkpoint_every=0"]
    overrides += {"sft": ["sft.packing=false"],
                  "rm": ["rm.margin=0", "rm.center_coef=0", "rm.unfrozen_layers=null"],
                  "dpo": ["dpo.loss.variant=sigmoid", f"dpo.loss.beta={h['beta']}", "dpo.loss.label_smoothing=0",
                          "dpo.loss.logprob=sum", "dpo.nll_coef=0", "dpo.precompute_reference=true"]}[stage]
    module.run(load_config(None, overrides + spec["extra"]))
    probe.finish(spec["out"])


# ------------------------------------------------------------------------------------------------- TRL side
def trl_worker(spec: dict) -> None:
    pin_threads(spec["threads"])
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    import datasets
    import torch
    import transformers
    import trl  # noqa: F401

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        TrainerCallback,
    )

    from tiller.models import load_tokenizer

    stage, h = spec["stage"], spec["hyper"]
    probe = Probe(spec["steps"])
    tokenizer = load_tokenizer(spec["model"])
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    dataset = datasets.Dataset.from_list(rows)
    common = {"output_dir": spec["out_dir"], "per_device_train_batch_size": h["batch_size"],
              "gradient_accumulation_steps": 1, "max_steps": spec["steps"], "learning_rate": h["lr"],
              "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": h["weight_decay"],
              "max_grad_norm": h["max_grad_norm"], "bf16": False, "fp16": False, "use_cpu": True,
              "seed": h["seed"], "data_seed": h["seed"], "gradient_checkpointing": False, "logging_steps": 1,
              "save_strategy": "no", "eval_strategy": "no", "report_to": [], "disable_tqdm": True,
              "dataloader_num_workers": 0, "train_sampling_strategy": "sequential", "max_length": 1024,
              "optim": spec["optim"]}
    if stage == "sft":
        from trl import SFTConfig as Config
        from trl import SFTTrainer as Base

        args = Config(**common, completion_only_loss=True, packing=False, padding_free=False, loss_type="nll")
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    elif stage == "rm":
        from trl import RewardConfig as Config
        from trl import RewardTrainer as Base

        args = Config(**common, center_rewards_coefficient=None, disable_dropout=True)
        model = AutoModelForSequenceClassification.from_pretrained(spec["model"], dtype=torch.float32)
    else:
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Base

        args = Config(**common, loss_type=["sigmoid"], beta=h["beta"], label_smoothing=0.0,
                      precompute_ref_log_probs=True, padding_free=False, disable_dropout=True)
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    pending: dict = {}

    class Trainer(Base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            tokens = int(inputs["attention_mask"].sum())
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.model.training:
                value = loss[0] if isinstance(loss, tuple) else loss
                metrics = {k: v[-1] for k, v in self._metrics["train"].items()
                           if k.startswith(("logps/", "rewards/", "accuracy", "margin")) and v}
                pending.update(**metrics, seq_tokens=tokens, loss=float(value.detach()))
            return loss

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            probe.step_ends(dict(pending))
            pending.clear()
            optimizer = kwargs.get("optimizer")
            inner = getattr(optimizer, "optimizer", optimizer)
            probe.out["optimizer"] = f"{type(inner).__module__}.{type(inner).__name__} ({args.optim}, " \
                                     f"fused={inner.defaults.get('fused')}, foreach={inner.defaults.get('foreach')})"

    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=[Record()])
    probe.training_starts()
    trainer.train()
    probe.finish(spec["out"])


# ------------------------------------------------------------------------------------------------- the data
def text(rng: random.Random, low: int, high: int) -> str:
    words, n = [], rng.randint(low, high)
    while sum(len(w) + 1 for w in words) < n:
        words.append("".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 9))))
    return " ".join(words)[:n]


def write_data(work: Path, rows_per_stage: int, seed: int) -> dict[str, Path]:
    rng = random.Random(seed)
    sft = [{"prompt": text(rng, 30, 70) + "? ", "completion": text(rng, 50, 110) + "."}
           for _ in range(rows_per_stage)]
    prefs = [{"prompt": text(rng, 30, 70) + "? ", "chosen": text(rng, 30, 90) + ".",
              "rejected": text(rng, 30, 90) + "!"} for _ in range(rows_per_stage)]
    paths = {"sft": work / "sft.jsonl", "prefs": work / "prefs.jsonl"}
    for key, rows in (("sft", sft), ("prefs", prefs)):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def in_tiller_order(path: Path, out: Path, batch_size: int, seed: int) -> Path:
    """The rows in the order Tiller's loop draws them in epoch 0 (eval_fraction 0, weight 1: file order in)."""
    from tiller.offline.loop import batches

    rows = path.read_text().splitlines()
    order = [i for batch in batches(list(range(len(rows))), batch_size, 0, seed) for i in batch]
    out.write_text("".join(rows[i] + "\n" for i in order))
    return out


def copy_tokenizer(source: Path, target: Path) -> None:
    for file in source.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(file, target / file.name)


def build_models(work: Path, vocab: int = 0) -> tuple[Path, Path]:
    """The policy (also DPO's reference) and the reward model's base: the policy with a one-score head,
    initialised once here (seed 0) and saved, so that both sides start from the same head. `vocab` > the
    tokenizer's 34 pads the embedding (and tied LM head) with rows no token uses, so that the logits are as
    wide as a real model's while the text stays the same."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tiller.models import TinyShape, ensure_tiny_policy, load_tokenizer

    policy = ensure_tiny_policy(work / "policy", seed=0, shape=TinyShape(**SHAPE))
    if vocab:
        torch.manual_seed(0)
        wide = AutoModelForCausalLM.from_pretrained(str(policy), dtype=torch.float32)
        wide.resize_token_embeddings(vocab, mean_resizing=False)
        policy = work / f"policy-vocab{vocab}"
        wide.save_pretrained(str(policy))
        copy_tokenizer(work / "policy", policy)
    rm_dir = work / "rm-base"
    pad = load_tokenizer(policy).pad_token_id
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(policy), num_labels=1, pad_token_id=pad,
                                                               dtype=torch.float32)
    model.save_pretrained(str(rm_dir))
    copy_tokenizer(policy, rm_dir)
    return policy, rm_dir


def parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
            total += math.prod(f.get_slice(key).get_shape())
    return total


# ------------------------------------------------------------------------------------------------ the runs
def run_worker(kind: str, spec: dict, log: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run([sys.executable, __file__, f"--{kind}-worker", json.dumps(spec)], stdout=out,
                              stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {spec['stage']} failed (exit {done.returncode}); its output:\n"
                         f"{log.read_text()[-4000:]}")
    result = json.loads(Path(spec["out"]).read_text())
    result["process_s"] = time.monotonic() - started
    return result


def summarise(raw: dict) -> dict:
    recs = raw["records"]
    timed = list(itertools.pairwise(recs))  # step k's interval: from step k-1's end to step k's end (k >= 2)
    seconds = sum(b["end_s"] - a["end_s"] for a, b in timed)
    cpu_seconds = sum(b["end_cpu_s"] - a["end_cpu_s"] for a, b in timed)
    tokens = sum(b["seq_tokens"] for _, b in timed)
    peak_setup, peak_train = raw.get("hwm_setup_kb", 0), raw.get("hwm_train_kb", 0)
    rates = sorted(b["seq_tokens"] / (b["end_s"] - a["end_s"]) for a, b in timed)
    return {"tokens_per_s": tokens / seconds, "median_step_tokens_per_s": statistics.median(rates),
            "tokens_per_cpu_s": tokens / cpu_seconds, "step_s": seconds / len(timed),
            "cpu_s_per_step": cpu_seconds / len(timed), "tokens_per_step": tokens / len(timed),
            "first_loss": recs[0]["loss"], "losses": [r["loss"] for r in recs],
            "step_tokens": [r["seq_tokens"] for r in recs],
            "first_step": {k: v for k, v in recs[0].items() if k not in ("end_s", "end_cpu_s")},
            "peak_rss_mb": max(peak_setup, peak_train) / 1024, "rss_imports_mb": raw["rss_imports_kb"] / 1024,
            "peak_setup_mb": peak_setup / 1024, "rss_train_start_mb": raw.get("rss_train_start_kb", 0) / 1024,
            "peak_train_mb": peak_train / 1024,
            "train_peak_above_start_mb": (peak_train - raw.get("rss_train_start_kb", 0)) / 1024,
            "hwm_reset": raw.get("hwm_reset"), "ru_maxrss_at_exit_mb": raw["ru_maxrss_kb_at_exit"] / 1024,
            "torch_threads": raw["torch_threads"], "process_s": raw["process_s"],
            **({"optimizer": raw["optimizer"]} if "optimizer" in raw else {})}


def compare(stage: str, tiller: dict, trl: dict) -> dict:
    out = {"first_loss_diff": abs(tiller["first_loss"] - trl["first_loss"]),
           "max_loss_diff": max(abs(a - b) for a, b in zip(tiller["losses"], trl["losses"])),
           "same_batches": tiller["step_tokens"] == trl["step_tokens"],
           "tokens_per_s_ratio": tiller["tokens_per_s"] / trl["tokens_per_s"],
           "tokens_per_cpu_s_ratio": tiller["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"],
           "median_step_tokens_per_s_ratio": tiller["median_step_tokens_per_s"] / trl["median_step_tokens_per_s"],
           "peak_rss_ratio": tiller["peak_rss_mb"] / trl["peak_rss_mb"],
           "train_peak_above_start_ratio": (tiller["train_peak_above_start_mb"] / trl["train_peak_above_start_mb"]
                                            if trl["train_peak_above_start_mb"] > 0 else None)}
    if stage == "dpo":  # step 1's loss is ln 2 on both sides: the policy's log-probs are the real check
        for key in ("logps/chosen", "logps/rejected"):
            out[f"first_{key}_diff"] = abs(tiller["first_step"][key] - trl["first_step"][key])
    out["first_loss_equal"] = out["first_loss_diff"] < LOSS_TOLERANCE and all(
        v < LOSS_TOLERANCE for k, v in out.items() if k.startswith("first_logps"))
    return out


def plot(result: dict, path: Path) -> None:
    from tiller.plots import pyplot

    plt = pyplot()
    stages = list(result["stages"])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.38
    series = (("tokens_per_s_ratio", "tokens/s, Tiller / TRL (higher: Tiller faster)", "C0"),
              ("peak_rss_ratio", "peak RSS, Tiller / TRL (lower: Tiller lighter)", "C1"))
    for i, (key, label, colour) in enumerate(series):
        values = [result["stages"][s]["compare"][key] for s in stages]
        bars = ax.bar([x + (i - 0.5) * width for x in range(len(stages))], values, width, label=label, color=colour)
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=9)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(stages)))
    ax.set_xticklabels([f"{s.upper()}\n{result['stages'][s]['tiller']['tokens_per_step']:.0f} tokens/step"
                        for s in stages])
    ax.set_ylabel("ratio")
    ax.set_title(f"Tiller vs TRL {result['trl_version']}: offline stages, {result['parameters'] / 1e6:.1f}M-param "
                 f"model, vocab {result['vocab']}, {result['threads']} threads\n({result['date']}, "
                 f"{result['steps']} steps each, median of {result['repeats']} run(s))", fontsize=10)
    top = max(result["stages"][s]["compare"][k] for s in stages for k, _, _ in series)
    ax.set_ylim(0, max(1.45, top * 1.3))  # room above the 1.0 line for the legend
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (memory and losses of that same run)."""
    return sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each trainer (alternating); median kept")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--vocab", type=int, default=0,
                        help="pad the model's vocabulary to this many rows (default: the char tokenizer's 34)")
    parser.add_argument("--trl-optim", default=None, help="TRL's `optim` (default: transformers' default)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (models, data, run logs)")
    parser.add_argument("--out", help="result JSON (default bench/results/offline_vs_trl.json)")
    parser.add_argument("--tiller-worker", help=argparse.SUPPRESS)
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for the Tiller runs")
    args = parser.parse_args()
    if args.tiller_worker:
        return tiller_worker(json.loads(args.tiller_worker))
    if args.trl_worker:
        return trl_worker(json.loads(args.trl_worker))

    import torch
    import transformers
    import trl
    from transformers import TrainingArguments

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="tiller-offline-vs-trl-"))
    policy, rm_base = build_models(work, args.vocab)
    h = HYPER
    data = write_data(work, h["batch_size"] * args.steps, h["seed"])  # exactly one epoch: every row once
    ordered = {"sft": in_tiller_order(data["sft"], work / "sft-ordered.jsonl", h["batch_size"], h["seed"]),
               "prefs": in_tiller_order(data["prefs"], work / "prefs-ordered.jsonl", h["batch_size"], h["seed"])}
    trl_optim = args.trl_optim or TrainingArguments.__dataclass_fields__["optim"].default
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
              "torch": torch.__version__, "transformers": transformers.__version__, "trl_version": trl.__version__,
              "model": SHAPE, "parameters": parameters(policy),
              "vocab": args.vocab or 34, "hyper": h, "steps": args.steps,
              "timed_steps": args.steps - 1, "repeats": args.repeats, "threads": args.threads,
              "trl_optim": trl_optim, "tiller_optim": "torch.optim.AdamW through DeepSpeed (torch_adam)",
              "loss_tolerance": LOSS_TOLERANCE, "stages": {}}
    for stage in (STAGES if args.stage == "all" else (args.stage,)):
        model = rm_base if stage == "rm" else policy
        runs: dict[str, list] = {"tiller": [], "trl": []}
        for repeat in range(args.repeats):
            for kind in ("tiller", "trl"):
                tag = f"{kind}-{stage}-{repeat}"
                spec = {"stage": stage, "model": str(model), "steps": args.steps, "hyper": h,
                        "threads": args.threads, "out": str(work / f"{tag}.json"), "out_dir": str(work / tag),
                        "data": str(data["sft" if stage == "sft" else "prefs"] if kind == "tiller"
                                    else ordered["sft" if stage == "sft" else "prefs"]),
                        "optim": trl_optim, "extra": args.overrides}
                print(f"{stage}: {kind} (run {repeat + 1}/{args.repeats}) ...", flush=True)
                runs[kind].append(summarise(run_worker(kind, spec, work / f"{tag}.log")))
                r = runs[kind][-1]
                print(f"  {r['tokens_per_s']:.0f} tokens/s, {r['step_s'] * 1000:.0f} ms/step, peak RSS "
                      f"{r['peak_rss_mb']:.0f} MB, first loss {r['first_loss']:.6f}", flush=True)
        tiller, trl_run = median_run(runs["tiller"]), median_run(runs["trl"])
        result["stages"][stage] = {"tiller": tiller, "trl": trl_run, "compare": compare(stage, tiller, trl_run),
                                   "conventions": CONVENTIONS[stage],
                                   "all_tokens_per_s": {k: [r["tokens_per_s"] for r in v] for k, v in runs.items()}}
    result["wall_s"] = time.monotonic() - started
    out = save(result, "offline_vs_trl", args.out)
    chart = ROOT / "docs" / (Path(args.out).with_suffix(".png").name if args.out else "offline_vs_trl.png")
    plot(result, chart)
    print_table(result)
    print(f"written: {out}, {chart} ({result['wall_s']:.0f} s)")
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    from report import write_result
    write_result(out.stem, ["stage", "first-step loss Tiller / TRL (abs. difference)", "tokens/s Tiller / TRL",
                            "ratio", "peak RSS MB Tiller / TRL", "ratio"],
                 [[stage.upper(), f"{s['tiller']['first_loss']:.6f} / {s['trl']['first_loss']:.6f} "
                                  f"({s['compare']['first_loss_diff']:.1e})",
                   f"{s['tiller']['tokens_per_s']:,.0f} / {s['trl']['tokens_per_s']:,.0f}",
                   f"{s['compare']['tokens_per_s_ratio']:.2f}×",
                   f"{s['tiller']['peak_rss_mb']:,.0f} / {s['trl']['peak_rss_mb']:,.0f}",
                   f"{s['compare']['peak_rss_ratio']:.2f}×"] for stage, s in result["stages"].items()],
                 note=f"{result['parameters'] / 1e6:.2f}M parameters, vocabulary {result['vocab']}, "
                      f"{result['timed_steps']} timed steps, median of {result['repeats']} run(s) of each trainer.",
                 plot=chart, data=result)


def print_table(result: dict) -> None:
    print(f"\nTiller vs TRL {result['trl_version']} (torch {result['torch']}, transformers {result['transformers']}), "
          f"{result['parameters'] / 1e6:.2f}M parameters, vocab {result['vocab']}, "
          f"batch {result['hyper']['batch_size']}, "
          f"{result['timed_steps']} timed steps, {result['threads']} threads; TRL optimizer {result['trl_optim']}")
    print(f"{'stage':6}{'1st loss Tiller':>16}{'1st loss TRL':>14}{'|diff|':>9}{'max|diff|':>10}"
          f"{'tok/s Tiller':>13}{'tok/s TRL':>10}{'ratio':>7}{'(median step)':>14}{'(per CPU s)':>12}"
          f"{'peak MB Tiller':>15}{'peak MB TRL':>12}{'ratio':>7}{'training +MB':>14}")
    for stage, s in result["stages"].items():
        t, b, c = s["tiller"], s["trl"], s["compare"]
        print(f"{stage:6}{t['first_loss']:>16.6f}{b['first_loss']:>14.6f}{c['first_loss_diff']:>9.1e}"
              f"{c['max_loss_diff']:>10.1e}{t['tokens_per_s']:>13.0f}{b['tokens_per_s']:>10.0f}"
              f"{c['tokens_per_s_ratio']:>7.2f}{c['median_step_tokens_per_s_ratio']:>14.2f}"
              f"{c['tokens_per_cpu_s_ratio']:>12.2f}{t['peak_rss_mb']:>15.0f}{b['peak_rss_mb']:>12.0f}"
              f"{c['peak_rss_ratio']:>7.2f}"
              f"{t['train_peak_above_start_mb']:>8.0f} /{b['train_peak_above_start_mb']:>4.0f}")
    print("(ratios Tiller / TRL; 'training +MB': the peak during training above the RSS at its start, Tiller / TRL)")
    for stage, s in result["stages"].items():
        c = s["compare"]
        extra = "".join(f", {k[6:-5]} |diff| {v:.1e}" for k, v in c.items() if k.startswith("first_logps"))
        verdict = "equal" if c["first_loss_equal"] else f"NOT equal within {result['loss_tolerance']:g}"
        print(f"  {stage}: first step {verdict}{extra}; same batches every step: {c['same_batches']}; RSS after "
              f"imports Tiller {s['tiller']['rss_imports_mb']:.0f} MB, TRL {s['trl']['rss_imports_mb']:.0f} MB; "
              f"conventions: {s['conventions']}")


if __name__ == "__main__":
    main()
