"""What `anchor_kl` costs an SFT step on SmolLM2-135M-Instruct, with the starting model run whole against
run as its top blocks on the policy's frozen trunk (training/shared_reference.py), in one run.

    python bench/anchor_reference.py                       # after scripts/align-smollm2.sh's self-data stage
    python bench/anchor_reference.py --steps 4 --unfrozen 15

The batches are those of configs/safety/sft.yaml (the shipped refusals and the base model's own answers,
16 rows, the self-data rows anchored), in the precision that stage trains in. Each step is the stage's
loss, forward and backward, without the optimizer; the three ways (no anchor, the full reference, the
shared trunk) take turns on the same batches, after one warm-up each.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from report import write_result  # noqa: E402

from tiller.config import load_config  # noqa: E402
from tiller.models import load_tokenizer  # noqa: E402
from tiller.offline import sft  # noqa: E402
from tiller.offline.data import Source, read_sft  # noqa: E402
from tiller.training.engine import load_model  # noqa: E402
from tiller.training.freezing import freeze_below  # noqa: E402
from tiller.training.precision import resolve_precision  # noqa: E402
from tiller.training.shared_reference import FullReference, SharedTrunkReference, disagreement  # noqa: E402


class Policy:
    """What `sft.nll` calls: the model and its device."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.device = model, torch.device("cpu")

    def __call__(self, **inputs):
        return self.model(**inputs)


def step_s(policy: Policy, batch: list, pad_id: int, decision, reference) -> float:
    started = time.perf_counter()
    total, units, _, anchored, _, _ = sft.nll(policy, batch, pad_id, decision=decision, reference=reference)
    ((total + anchored) / units).backward()
    policy.model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/safety/sft.yaml")
    parser.add_argument("--model", default="runs/models/smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--unfrozen", type=int, default=None, help="default: the config's sft.unfrozen_layers")
    args = parser.parse_args()

    cfg = load_config(ROOT / args.config, [f"model.path={ROOT / args.model}"])
    unfrozen = args.unfrozen if args.unfrozen is not None else cfg.sft.unfrozen_layers
    sources = [Source(s.path, s.weight, s.anchor_kl) for s in cfg.sft.data]
    if not any(s.anchor_kl for s in sources):
        raise SystemExit(f"{args.config}: no sft.data file has an anchor_kl")
    tokenizer = load_tokenizer(cfg.model.path)
    examples = read_sft(sources, tokenizer, cfg.train.max_length)
    random.Random(0).shuffle(examples)
    size = cfg.train.batch_size
    batches = [examples[k * size:(k + 1) * size] for k in range(args.steps + 1)]
    precision = resolve_precision(cfg.train.precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    decision = (cfg.sft.decision_tokens, cfg.sft.decision_weight)

    model = load_model(AutoModelForCausalLM, str(cfg.model.path), dtype)
    freeze_below(unfrozen, "sft.unfrozen_layers")(model)
    policy = Policy(model.train())
    full = FullReference(load_model(AutoModelForCausalLM, str(cfg.model.path), dtype).eval().requires_grad_(False))
    shared = SharedTrunkReference(model, full.model, unfrozen, "sft.unfrozen_layers")
    probe = sft.pad(batches[0][:4], pad_id)
    gap = disagreement(lambda ids, attention: policy(input_ids=ids, attention_mask=attention), model, full, shared,
                       *probe)
    ways = {"no anchor": None, "full reference": full, "shared trunk": shared}
    times: dict[str, list[float]] = {name: [] for name in ways}
    anchored_rows = sum(e.anchor_kl > 0 for b in batches[1:] for e in b) / args.steps
    print(f"{args.model}, {precision}, top {unfrozen} of {model.config.num_hidden_layers} blocks trained; "
          f"{args.steps} batches of {size} rows, {anchored_rows:.1f} anchored; probe KL gap {gap:.1e} nats")
    for name, reference in ways.items():  # warm-up
        step_s(policy, batches[0], pad_id, decision, reference)
    for k, batch in enumerate(batches[1:], 1):
        for name, reference in ways.items():
            times[name].append(step_s(policy, batch, pad_id, decision, reference))
        print(f"  step {k}/{args.steps}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    cost_full = median["full reference"] - median["no anchor"]
    cost_shared = median["shared trunk"] - median["no anchor"]
    for name, seconds in median.items():
        print(f"{name:16}{seconds:8.2f} s per step")
    print(f"the anchor's cost: {cost_full:.2f} s per step whole, {cost_shared:.2f} s on the shared trunk "
          f"({cost_full / max(cost_shared, 1e-9):.2f}x less); a step {median['full reference'] / median['shared trunk']:.2f}x faster")
    write_result(
        "anchor_reference",
        ["reference", "step (s)", "anchor's cost (s)", "step vs no anchor"],
        [["none (no anchor_kl)", median["no anchor"], 0.0, "1.00×"],
         ["the full starting model", median["full reference"], cost_full,
          f"{median['full reference'] / median['no anchor']:.2f}×"],
         [f"its top {unfrozen} blocks on the shared trunk", median["shared trunk"], cost_shared,
          f"{median['shared trunk'] / median['no anchor']:.2f}×"]],
        note=(f"SmolLM2-135M-Instruct SFT steps of {size} rows ({anchored_rows:.1f} anchored) in {precision}, top "
              f"{unfrozen} of {model.config.num_hidden_layers} blocks trained: the anchor costs "
              f"{cost_full / max(cost_shared, 1e-9):.2f}x less on the shared trunk, whose logits match the full "
              f"model's " + ("exactly on the probe batch." if gap == 0 else f"to {gap:.1e} nats per token.")),
        data={"median_s": median, "steps_s": times, "probe_gap_nats": gap, "precision": precision,
              "unfrozen": unfrozen, "anchored_rows_per_batch": anchored_rows})


if __name__ == "__main__":
    main()
