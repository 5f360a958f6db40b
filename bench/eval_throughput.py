"""Evaluation throughput: `tiller eval`'s generation path against a plain vLLM generate loop, one run.

    python bench/eval_throughput.py [--model DIR] [--prompts N] [--max-new-tokens T] [--workers N] [--no-record]

Both answer the same prompts greedily with the same engine settings, in this process, one after the other:
  baseline  what any evaluation loop does: chat-template and tokenize the prompts, vLLM's own `LLM.generate`
            on all of them at once (no chunks, no progress), decode the answers
  tiller    `tiller.eval.generate.Generator.answer` as `tiller eval` calls it (chunks for the progress bar)
  workers   with `--workers N` (N > 1): the same call on a `GeneratorPool` of N engine processes, each pinned
            to its own cores (`generation.workers: N`), against `tiller` (one engine in this process)
Prints prompts/s for each and the ratios (target: at least 0.9x against the plain loop). The default model is a
tiny random-init chat model built on the spot; `--model runs/models/smollm2-135m-instruct` measures the real one.
`--no-record` prints only (bench/results/eval_throughput.json, which docs/benchmarks.md renders, is left as is).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1, help="also time a pool of this many engine processes")
    parser.add_argument("--no-record", action="store_true", help="print only; do not write bench/results")
    args = parser.parse_args()

    from tiller.eval.generate import Generator
    from tiller.models import JUDGE_ALPHABET, TINY_CHAT_TEMPLATE, TinyShape, ensure_tiny_policy

    model = args.model or str(ensure_tiny_policy(Path(tempfile.mkdtemp()) / "chat", alphabet=JUDGE_ALPHABET,
                                                 chat_template=TINY_CHAT_TEMPLATE, shape=TinyShape(max_positions=1024)))
    rows = []
    root = Path(__file__).resolve().parent.parent / "configs/data/eval"
    for name in ("benign.jsonl", "helpful.jsonl", "honest.jsonl", "harmful.jsonl"):
        rows += [json.loads(line)["prompt"] for line in (root / name).read_text().splitlines() if line.strip()]
    texts = (rows * (args.prompts // len(rows) + 1))[:args.prompts]
    started = time.monotonic()
    generator = Generator(model, max_model_len=1024)
    start_s = {"tiller": time.monotonic() - started}
    pool = None
    if args.workers > 1:  # started while this engine is idle; its own start is timed, not counted in prompts/s
        from tiller.eval.shards import GeneratorPool

        started = time.monotonic()
        pool = GeneratorPool(model, args.workers, max_model_len=1024)
        start_s["workers"] = time.monotonic() - started
        pool.answer(texts[:8], args.max_new_tokens)  # warm up, as below
    ids = generator.encode(texts, args.max_new_tokens)
    from vllm import SamplingParams

    params = SamplingParams(n=1, max_tokens=args.max_new_tokens, temperature=0.0, detokenize=False,
                            stop_token_ids=generator.engine.eos_ids)
    llm = generator.engine.llm
    llm.generate([{"prompt_token_ids": [int(t) for t in p]} for p in ids[:8]], params, use_tqdm=False)  # warm up
    results = {}
    names = ("baseline", "tiller") + (("workers",) if pool else ())
    for name in names * 2:  # interleaved: drift hits them alike
        start = time.monotonic()
        if name == "baseline":
            prompt_ids = generator.encode(texts, args.max_new_tokens)
            out = llm.generate([{"prompt_token_ids": [int(t) for t in p]} for p in prompt_ids], params, use_tqdm=False)
            [generator.tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in out]
            tokens = sum(len(o.outputs[0].token_ids) for o in out)
        else:
            which = pool if name == "workers" else generator
            tokens = which.answer(texts, args.max_new_tokens, chunk=args.chunk).tokens
        seconds = time.monotonic() - start
        results.setdefault(name, []).append((len(texts) / seconds, tokens / seconds))
    generator.close()
    if pool:
        pool.close()
    best = {k: max(v) for k, v in results.items()}
    label = {"baseline": "plain vLLM generate loop", "tiller": "tiller eval",
             "workers": f"tiller eval, {args.workers} pinned engine processes"}
    print(f"model {model}; {len(texts)} prompts, greedy, at most {args.max_new_tokens} new tokens, chunk {args.chunk}")
    for name, (pps, tps) in best.items():
        print(f"  {name:8s} {pps:7.2f} prompts/s  {tps:8.1f} tokens/s  ({label[name]})")
    print(f"ratio (tiller / plain vLLM): {best['tiller'][0] / best['baseline'][0]:.2f}x prompts/s")
    scaling = ""
    if pool:
        ratio = best["workers"][0] / best["tiller"][0]
        print(f"ratio ({args.workers} engine processes / 1 engine in-process): {ratio:.2f}x prompts/s; start "
              f"{start_s['workers']:.1f} s / {start_s['tiller']:.1f} s ({os.cpu_count()} CPUs here)")
        scaling = f" {args.workers} pinned engine processes / 1 in-process: {ratio:.2f}× prompts/s."
    if args.no_record:
        return
    from report import write_result
    write_result("eval_throughput", ["generation", "prompts/s", "tokens/s"],
                 [[label[name], pps, tps] for name, (pps, tps) in best.items()],
                 note=f"tiller eval / plain loop: {best['tiller'][0] / best['baseline'][0]:.2f}× prompts/s (target ≥ 0.9×);"
                      f"{scaling} {len(texts)} prompts, at most {args.max_new_tokens} new tokens, best of two runs each.",
                 data={"model": model, "prompts": len(texts), "max_new_tokens": args.max_new_tokens,
                       "chunk": args.chunk, "workers": args.workers, "start_s": start_s, "runs": results})


if __name__ == "__main__":
    main()
