"""KL divergence of a model from a reference, on the model's own samples.

    KL(pi || ref) = E_{y ~ pi}[ log pi(y|x) - log ref(y|x) ]

estimated on sampled responses two ways. The headline figure is k3 summed over each response's tokens:
with d = log pi(y_t|...) - log ref(y_t|...) at each sampled token, r - 1 - log r = expm1(-d) + d for
r = ref/pi has expectation KL(pi(.|prefix) || ref(.|prefix)) under pi, so its sum over tokens is an
unbiased estimate of the response-level KL (chain rule) that is never negative and has far less variance
than k1 = sum of d, which is also reported: k1 can come out negative on a few samples of two nearly equal
models, k3 cannot. The per-token figures divide the totals by all response tokens. Both models score the same token ids in float32 through
transformers, so the estimate carries no vLLM-versus-training numerics; the two models must share a
tokenizer (a model and its own earlier checkpoint do).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tiller.training.engine import load_frozen
from tiller.training.logprobs import taken_logprobs


@dataclass(frozen=True)
class KLEstimate:
    per_response: float  # k3: mean over responses of its sum over tokens
    per_token: float  # k3: the same total divided by all response tokens
    per_response_stderr: float  # standard error of per_response over the responses
    per_token_k1: float  # the plain log-ratio estimate, for comparison
    responses: int
    tokens: int
    log_ratios: list[float]  # each response's summed log-ratio (k1)

    def as_dict(self) -> dict:
        return {"per_response": self.per_response, "per_token": self.per_token, "estimator": "k3",
                "per_response_stderr": self.per_response_stderr, "per_token_k1": self.per_token_k1,
                "responses": self.responses, "tokens": self.tokens}


def sequence_logprobs(model, prompts: list[np.ndarray], responses: list[np.ndarray], batch_size: int = 8,
                      pad_id: int = 0) -> list[np.ndarray]:
    """Per-token log-probs of each response given its prompt, float32 arrays."""
    out = []
    for lo in range(0, len(prompts), batch_size):
        rows = [np.concatenate([p, r]).astype(np.int64) for p, r in zip(prompts[lo:lo + batch_size],
                                                                        responses[lo:lo + batch_size])]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
        for i, (row, prompt) in enumerate(zip(rows, prompts[lo:lo + batch_size])):
            ids[i, :len(row)] = torch.from_numpy(row)
            attention[i, :len(row)] = 1
            mask[i, len(prompt) - 1:len(row) - 1] = True  # positions predicting the response tokens
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits
            logp, _ = taken_logprobs(logits, ids, mask)
        for i, prompt in enumerate(prompts[lo:lo + batch_size]):
            n = len(rows[i]) - len(prompt)
            out.append(logp[i, len(prompt) - 1:len(prompt) - 1 + n].numpy().copy())
    return out


def kl_to_reference(model_dir: str | Path, reference_dir: str | Path, prompts: list[np.ndarray],
                    responses: list[np.ndarray]) -> KLEstimate:
    """KL(model || reference) over `responses`, which the model sampled (at temperature 1) for `prompts`."""
    keep = [i for i, r in enumerate(responses) if len(r)]
    prompts, responses = [prompts[i] for i in keep], [responses[i] for i in keep]
    scored = []
    for path in (model_dir, reference_dir):
        model = load_frozen(path, torch.float32, "cpu")
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        scored.append(sequence_logprobs(model, prompts, responses, pad_id=pad))
        del model
    return estimate_kl(*scored)


def estimate_kl(logps: list[np.ndarray], ref_logps: list[np.ndarray]) -> KLEstimate:
    """k3 and k1 KL estimates from the sampling model's and the reference's log-probs of each sampled token."""
    diffs = [mine.astype(np.float64) - ref.astype(np.float64) for mine, ref in zip(logps, ref_logps)]
    k1 = np.array([d.sum() for d in diffs])
    k3 = np.array([(np.expm1(-d) + d).sum() for d in diffs])
    tokens = int(sum(len(d) for d in diffs))
    if not tokens:
        return KLEstimate(float("nan"), float("nan"), float("nan"), float("nan"), 0, 0, [])
    stderr = float(k3.std(ddof=1) / np.sqrt(len(k3))) if len(k3) > 1 else float("nan")
    return KLEstimate(float(k3.mean()), float(k3.sum() / tokens), stderr, float(k1.sum() / tokens), len(k3), tokens,
                      [float(r) for r in k1])
