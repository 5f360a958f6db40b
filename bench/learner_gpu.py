"""Tiller's online-DPO learner step and weight publishing against their plain-PyTorch baselines, measured
side by side in one run. Made for a CUDA GPU (bf16, a Qwen2-0.5B-shaped model); runs on a CPU too,
with a small model, to check the script itself.

    python bench/learner_gpu.py                      # GPU: 0.5B, 16 pairs x (128 + 384) tokens
    python bench/learner_gpu.py --model small --pairs 4 --prompt 16 --response 48   # CPU smoke run

Prints a table and writes bench/results/learner_gpu-<device>.json. Goals (issue #11): Tiller's step
>= 0.8x the plain step's tokens/s and <= its peak memory; publishing >= 0.5x a pinned copy of the same bytes.

The plain step is what a careful user writes by hand: bf16 weights, SDPA attention, policy and
reference forward, full-vocabulary float32 log-softmax, DPO loss, backward, clip, AdamW
(fused on CUDA). Tiller's step is `dpo_step` on a `PolicyTrainer` (DeepSpeed, ZeRO stage as given).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tiller.models import TinyShape, random_causal_lm

SHAPES = {  # name -> (vocabulary, shape)
    # Qwen2-0.5B's shape: 494M parameters with its 151,936-token vocabulary
    "0.5b": (151936, TinyShape(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864)),
    "small": (32000, TinyShape(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=1024)),
}


def build_model_dir(shape: str, max_len: int) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"tiller-bench-{shape}-"))
    vocab, dims = SHAPES[shape]
    dims = dataclasses.replace(dims, max_positions=max(max_len, 512))
    random_causal_lm(vocab, dims, dtype=torch.bfloat16).save_pretrained(str(path))
    return path


def make_items(pairs: int, prompt: int, response: int, vocab: int, seed: int = 0):
    from tiller.learner.coordinator import ScoredPrompt

    rng = np.random.default_rng(seed)
    items = []
    for i in range(pairs):
        responses = [rng.integers(2, vocab, response).astype(np.int32) for _ in range(2)]
        items.append(ScoredPrompt(i, 1, 0, rng.integers(2, vocab, prompt).astype(np.int32), responses,
                                  [np.full(response, -1.0, np.float32)] * 2, np.array([1.0, 0.0], np.float32),
                                  np.zeros(2, bool), pairs=((0, 1),)))
    return items


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(step, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    sync(device)
    return (time.perf_counter() - started) / repeats


def plain_dpo(model_dir: Path, items, device: torch.device, dtype: torch.dtype, beta: float = 0.1):
    """The hand-written baseline: returns a zero-argument step function."""
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa").to(device)
    reference = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
    reference.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=device.type == "cuda")
    rows = [np.concatenate([p.prompt, p.responses[c]]) for p in items for c in (0, 1)]
    ids = torch.as_tensor(np.stack(rows), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids, dtype=torch.float32)
    mask[:, len(items[0].prompt):] = 1

    def logps(model):
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
        return (logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * mask[:, 1:]).sum(-1)

    def step():
        with torch.no_grad():
            ref = logps(reference)
        pol = logps(policy)
        margin = (pol[0::2] - ref[0::2]) - (pol[1::2] - ref[1::2])
        loss = -F.logsigmoid(beta * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, (policy, reference, optimizer)


def tiller_trainer(model_dir: Path, args, precision: str):
    from tiller.config import Config, LearnerConfig, ModelConfig
    from tiller.learner.trainer import PolicyTrainer

    cfg = Config(model=ModelConfig(path=str(model_dir)),
                 learner=LearnerConfig(batch_size=args.pairs, lr=1e-6, zero_stage=args.zero_stage, precision=precision,
                                       micro_batch_size=args.micro_batch_size,
                                       gradient_checkpointing=args.gradient_checkpointing))
    return cfg, PolicyTrainer(cfg, model_dir)


def publish_vs_pinned(trainer, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """Publishing every weight (WeightPublisher) against copying the same bytes into pre-allocated
    host buffers (pinned on CUDA) with one synchronisation: the ceiling of a device-to-host move."""
    from tiller.learner.publish import WeightPublisher

    publisher = WeightPublisher(trainer, dtype, bucket_bytes=256 << 20)
    rates = []
    for version in range(1, repeats + 2):
        snap, metrics = publisher.snapshot(version)
        snap.retired = True  # nobody serves it here: the next version may reuse its buffers
        rates.append(metrics["weights/publish_gbps"])
    params = [p.detach() for p in trainer.module.parameters()]
    buffers = [torch.empty(p.shape, dtype=p.dtype, pin_memory=device.type == "cuda") for p in params]
    total = sum(p.numel() * p.element_size() for p in params)

    def copy():
        for buffer, p in zip(buffers, params):
            buffer.copy_(p, non_blocking=device.type == "cuda")
        sync(device)

    seconds = timed(copy, device, 1, repeats)
    publish = float(np.median(rates[1:]))  # the first publish allocates its buffers
    ceiling = total / seconds / 1e9
    return {"publish_gbps": publish, "pinned_copy_gbps": ceiling, "ratio": publish / ceiling,
            "first_publish_gbps": rates[0], "bytes": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default=None, help="default: 0.5b on CUDA, small on CPU")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--response", type=int, default=384)
    parser.add_argument("--zero-stage", type=int, default=1)
    parser.add_argument("--micro-batch-size", type=int, default=0, help="sequences per pass (0: the whole batch)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = args.model or ("0.5b" if cuda else "small")
    model_dir = build_model_dir(shape, args.prompt + args.response)
    items = make_items(args.pairs, args.prompt, args.response, SHAPES[shape][0])
    tokens = 2 * args.pairs * (args.prompt + args.response)  # per step, policy side
    print(f"{shape} model on {device} in {dtype}; {args.pairs} pairs x ({args.prompt} + {args.response}) tokens",
          flush=True)

    reset_peak(device)
    plain_step, plain_state = plain_dpo(model_dir, items, device, dtype)
    plain_s = timed(plain_step, device, 1, args.repeats)
    plain_peak = peak_gib(device)
    del plain_step, plain_state
    print(f"plain PyTorch step: {plain_s:.3f} s", flush=True)

    from tiller.learner.dpo import dpo_step

    reset_peak(device)
    cfg, trainer = tiller_trainer(model_dir, args, "bf16" if cuda else "fp32")
    tiller_s = timed(lambda: dpo_step(trainer, items, cfg, pad_id=0), device, 1, args.repeats)
    tiller_peak = peak_gib(device)
    print(f"Tiller step: {tiller_s:.3f} s", flush=True)
    publish = publish_vs_pinned(trainer, device, dtype, args.repeats)

    result = {
        "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0) if cuda else platform.processor(),
        "model": shape, "dtype": str(dtype), "zero_stage": args.zero_stage, "micro_batch_size": args.micro_batch_size,
        "gradient_checkpointing": args.gradient_checkpointing, "pairs": args.pairs, "prompt": args.prompt,
        "response": args.response,
        "plain": {"step_s": plain_s, "tokens_per_s": tokens / plain_s, "peak_gib": plain_peak},
        "tiller": {"step_s": tiller_s, "tokens_per_s": tokens / tiller_s, "peak_gib": tiller_peak},
        "throughput_ratio": plain_s / tiller_s,
        "memory_ratio": tiller_peak / plain_peak if plain_peak else None,
        "publish": publish,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"learner_gpu-{device.type}.json"
    path.write_text(json.dumps(result, indent=2))
    mem = lambda g: f"{g:.1f} GiB" if g is not None else "n/a (CPU)"  # noqa: E731
    print(f"\n{'':24}{'plain PyTorch':>16}{'Tiller':>16}{'ratio':>10}  goal")
    print(f"{'tokens/s':24}{tokens / plain_s:>16,.0f}{tokens / tiller_s:>16,.0f}{plain_s / tiller_s:>9.2f}x  >= 0.8x")
    ratio = f"{result['memory_ratio']:.2f}x" if result["memory_ratio"] else "n/a"
    print(f"{'peak memory':24}{mem(plain_peak):>16}{mem(tiller_peak):>16}{ratio:>10}  <= 1.0x")
    print(f"{'weights, GB/s':24}{publish['pinned_copy_gbps']:>16.2f}{publish['publish_gbps']:>16.2f}"
          f"{publish['ratio']:>9.2f}x  >= 0.5x (baseline: {'pinned' if cuda else 'host'} copy of the same bytes)")
    print(f"\nwritten: {path}")
    from report import write_result
    write_result(f"learner_gpu-{device.type}", ["", "plain PyTorch", "Tiller", "ratio", "goal"],
                 [["tokens/s", tokens / plain_s, tokens / tiller_s, f"{plain_s / tiller_s:.2f}×", "≥ 0.8×"],
                  ["peak memory (GiB)", plain_peak, tiller_peak, ratio, "≤ 1.0×"],
                  ["weights (GB/s)", publish["pinned_copy_gbps"], publish["publish_gbps"], f"{publish['ratio']:.2f}×",
                   "≥ 0.5×"]],
                 note=f"{shape} model on {result['device']} in {dtype}, {args.pairs} pairs × ({args.prompt} + "
                      f"{args.response}) tokens, ZeRO {args.zero_stage}; the weights baseline is a "
                      f"{'pinned' if cuda else 'host'} copy of the same bytes.", data=result)


if __name__ == "__main__":
    main()
